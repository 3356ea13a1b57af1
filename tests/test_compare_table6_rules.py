"""End to end without training: on the ``"table6"`` scenes, a scripted detector that errs the way a trained one does
on each scene feature makes every predicted ablation row of Table 6 change something, counted by
:class:`~panoptic.compare.rule_counts.RuleCounter`; on the plain scenes the ICA row has nothing to fix.

The scripted detector: ground-truth semantics; each non-thin thing detected with its full (amodal) shape, as
mask heads predict behind occluders; thin things missed; one detection of a thing class on every stuff patch,
where the semantic head is fooled halfway (the detected class gets half the stuff's logit: the argmax still says
stuff, but detection plus semantics outweigh the stuff channel, so without ICA the patch becomes a thing).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from panoptic.compare.rows import ablation_rows, predicted
from panoptic.compare.rule_counts import RuleCounter, RuleCounts
from panoptic.data.synthetic import SCENE_PRESETS, SyntheticScene, generate_scene, synthetic_categories
from panoptic.fusion import UPSNetFusion
from panoptic.fusion.oracle import oracle_inputs
from panoptic.structures import Instances

MARGIN = 10.0


def _box(mask: torch.Tensor) -> torch.Tensor:
    """Pixel-edge ``x1, y1, x2, y2`` of a non-empty ``(H, W)`` mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def scripted_inputs(scene: SyntheticScene) -> tuple[torch.Tensor, Instances]:
    """``(C, H, W)`` semantic logits and the scripted detections of ``scene`` (see the module docs)."""
    sem, _ = oracle_inputs(scene.panoptic, scene.table, margin=MARGIN)
    masks = [m for m, thin in zip(scene.amodal_masks, scene.thin.tolist(), strict=True) if not thin]
    labels = [int(c) for c, thin in zip(scene.labels, scene.thin.tolist(), strict=True) if not thin]
    for k, patch in enumerate(scene.stuff_patch_masks):
        if patch.sum() >= 16:  # a detector fires on a patch big enough to look like a thing
            masks.append(patch)
            labels.append(k % scene.table.num_things)
            sem[scene.table.num_stuff + labels[-1]][patch] = MARGIN / 2
    h, w = scene.panoptic.image_size
    if not masks:
        return sem, Instances(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                              torch.zeros(0, h, w), mask_space="image")
    stack = torch.stack(masks)
    scores = torch.linspace(0.99, 0.9, len(masks))
    logits = torch.where(stack, MARGIN, -MARGIN)
    return sem, Instances(torch.stack([_box(m) for m in masks]), scores, torch.tensor(labels), logits,
                          mask_space="image")


@functools.cache
def count_rows(preset: str, seeds: range, size: int = 96) -> dict[str, RuleCounts]:
    """Per-row counts of the predicted ablation rows over the scenes of ``seeds``."""
    head = UPSNetFusion(synthetic_categories(), stuff_area_limit=0)
    rows = [r for r in ablation_rows(head, have_upsnet_c=False) if r.inputs is predicted]
    counter = RuleCounter(rows)
    for i in seeds:
        scene = generate_scene(np.random.default_rng([7, i]), size, config=SCENE_PRESETS[preset])
        sem, inst = scripted_inputs(scene)
        for row in rows:
            counter(i, row, row.fusion.fuse_image(sem, inst), len(inst))
    return {r.label: counter.counts[r.key] for r in rows}


def test_every_predicted_table6_row_changes_something_on_table6_scenes():
    counts = count_rows("table6", range(8))
    assert counts["+ panoptic loss"].dropped > 0  # pruning: occluded same-class partners
    assert counts["+ ICA"].changed_px > 0  # ICA: stuff patches go back to their stuff
    assert counts["+ unknown"].changed_px > 0 and counts["+ unknown"].unknown_px > 0  # missed thin things
    assert counts["+ ICA"].unknown_px == 0  # no unknown channel before its row


def test_on_plain_scenes_ica_has_nothing_to_fix():
    plain, table6 = count_rows("plain", range(8)), count_rows("table6", range(8))
    assert plain["+ ICA"].changed_px < table6["+ ICA"].changed_px
    assert plain["+ ICA"].changed_px == 0
