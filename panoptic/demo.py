"""`panoptic demo`: every fusion family on one synthetic scene, with simulated head outputs.

The "model" here is a simulation of imperfect heads derived from the ground truth, one per family: semantic logits
and detections (spatially coherent semantic noise, jittered boxes, noisy ROI mask logits, missed detections, a
class confusion and a false positive) for the heuristic combiner and UPSNet's head, query class and mask logits
for ``MaskFormerFusion`` and a centre heatmap with offsets for ``CentreOffsetFusion``
(:mod:`panoptic.simulate`). The demo runs in about a second with no training and still shows how the strategies
differ (for example UPSNet's *unknown* where a detection is missing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import roi_align

from .atomic import atomic_write_text
from .categories import CategoryTable
from .centre_offsets import CentreOffsets
from .data.synthetic import SyntheticScene, generate_scene
from .evaluation import PanopticQuality
from .formats import to_coco
from .fusion import CentreOffsetFusion, build_fusion
from .fusion.maskformer import MaskFormerFusion
from .queries import Queries
from .simulate import simulate_centre_offsets, simulate_queries, simulate_semantic
from .structures import Instances, PanopticResult
from .visualize import colorize, save_png, side_by_side, with_legend

__all__ = [
    "run_demo",
    "simulate_predictions",
]


# Over 60 lines: one simulation recipe (semantic noise, then detections from each segment), read top to bottom.
def simulate_predictions(scene: SyntheticScene, rng: np.random.Generator, *, margin: float = 4.0,
                         semantic_noise: float = 2.5, miss_prob: float = 0.15, confuse_prob: float = 0.1,
                         false_positives: int = 1, mask_size: int = 28) -> tuple[torch.Tensor, Instances]:
    """Imperfect head outputs for a scene.

    Args:
        scene: A synthetic scene (its ground truth drives the simulation).
        rng: Random generator.
        margin: Logit of the true class in the semantic logits (others ``-margin``).
        semantic_noise: Std of the spatially smooth noise added to the semantic logits.
        miss_prob: Chance a ground-truth thing is not detected.
        confuse_prob: Chance a detection carries a wrong thing class (with a lower score).
        false_positives: Number of spurious detections.
        mask_size: ROI mask resolution ``M``.

    Returns:
        ``(C, H, W)`` semantic logits and the detections (``(N, M, M)`` ROI mask logits).
    """
    table = scene.table
    h, w = scene.image.shape[:2]
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    sem = simulate_semantic(scene, g, margin=margin, noise=semantic_noise)

    boxes, labels, scores, masks = [], [], [], []
    amodal = scene.amodal_masks.float()
    for i in range(len(scene.labels)):
        if rng.random() < miss_prob:
            continue
        x1, y1, x2, y2 = scene.boxes[i].tolist()
        bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        jitter = rng.normal(0, 0.05, 4) * np.array([bw, bh, bw, bh])
        bx1, by1 = x1 + jitter[0], y1 + jitter[1]
        box = [bx1, by1, max(x2 + jitter[2], bx1 + 1), max(y2 + jitter[3], by1 + 1)]
        label = int(scene.labels[i])
        score = float(rng.uniform(0.7, 1.0))
        if rng.random() < confuse_prob and table.num_things > 1:
            label = int((label + rng.integers(1, table.num_things)) % table.num_things)
            score = float(rng.uniform(0.55, 0.75))
        roi = torch.tensor([[0.0, *box]], dtype=torch.float32)
        p = roi_align(amodal[i][None, None], roi, output_size=mask_size, aligned=True)[0, 0]
        masks.append((2 * p - 1) * margin + torch.randn(mask_size, mask_size, generator=g))
        boxes.append(box)
        labels.append(label)
        scores.append(score)
    for _ in range(false_positives):
        bw, bh = rng.uniform(0.1, 0.25) * w, rng.uniform(0.1, 0.25) * h
        x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, mask_size), torch.linspace(-1, 1, mask_size), indexing="ij")
        masks.append(margin * (1 - 2 * (xx**2 + yy**2)))
        boxes.append([x1, y1, x1 + bw, y1 + bh])
        labels.append(int(rng.integers(table.num_things)))
        scores.append(float(rng.uniform(0.6, 0.85)))
    n = len(boxes)
    inst = Instances(torch.tensor(boxes, dtype=torch.float32).reshape(n, 4), torch.tensor(scores, dtype=torch.float32),
                     torch.tensor(labels, dtype=torch.int64),
                     torch.stack(masks) if n else torch.zeros(0, mask_size, mask_size))
    return sem, inst


@dataclass(frozen=True)
class _Family:
    """One fusion of the demo: its family, its panel title, and how it runs on its simulated inputs."""

    family: str
    title: str
    run: Callable[[], PanopticResult]


def _families(scene: SyntheticScene, rng: np.random.Generator,
              stuff_area_limit: int) -> tuple[dict[str, _Family], int]:
    """Every fusion family with its inputs simulated from ``scene``, and the number of simulated detections.

    ``rng`` is drawn in a fixed order, detections first, so the first two strategies see what they saw before
    the other families joined the demo.
    """
    table = scene.table
    sem, inst = simulate_predictions(scene, rng)
    cls, masks = simulate_queries(scene, rng)
    centre_sem, heatmap, offsets = simulate_centre_offsets(scene, rng)
    size = scene.panoptic.image_size
    heuristic = build_fusion("heuristic", table, flavor="panopticapi", stuff_area_limit=stuff_area_limit)
    upsnet = build_fusion("upsnet", table, stuff_area_limit=stuff_area_limit)
    maskformer = MaskFormerFusion(table)
    centre = CentreOffsetFusion(table, stuff_area=stuff_area_limit)
    families = {
        "heuristic": _Family("semantic + instances", "heuristic (panopticapi)",
                             lambda: heuristic(sem[None], [inst])[0]),
        "upsnet": _Family("semantic + instances", "UPSNet (white = unknown)",
                          lambda: upsnet(sem[None], [inst])[0]),
        "maskformer": _Family("queries", "Mask2Former",
                              lambda: maskformer(Queries(cls, masks), output_size=size)[0]),
        "centre": _Family("centre offsets", "Panoptic-DeepLab",
                          lambda: centre([CentreOffsets(centre_sem, heatmap, offsets)])[0]),
    }
    return families, len(inst)


@dataclass
class DemoReport:
    """What :func:`run_demo` produced.

    Attributes:
        out_dir: Output folder.
        results: Fusion name -> result.
        files: Paths written.
        timings_ms: Fusion name -> milliseconds.
        summary: What ``summary.json`` holds (PQ per strategy, segment counts, timings).
    """

    out_dir: Path
    results: dict[str, PanopticResult]
    files: list[Path]
    timings_ms: dict[str, float]
    summary: dict[str, object]


def run_demo(out_dir: str | Path = "panoptic-demo", seed: int = 0, size: int = 256,
             stuff_area_limit: int = 256) -> DemoReport:
    """Build a synthetic scene, run every fusion family on simulated head outputs and write their outputs.

    The families: ``heuristic`` (Kirillov's combiner, panopticapi flavour) and ``upsnet`` (UPSNet's head) on
    semantic logits + detections, ``maskformer`` (:class:`~panoptic.MaskFormerFusion`, Mask2Former's rule) on
    query class and mask logits, ``centre`` (:class:`~panoptic.CentreOffsetFusion`, Panoptic-DeepLab) on a
    centre heatmap and offsets. Each is scored against the ground truth with the same
    :class:`~panoptic.evaluation.PanopticQuality`. Writes ``image.png``, per strategy a coloured ``<name>.png``
    plus its COCO-panoptic ``<name>_panoptic.png`` + ``<name>_segments.json``, the ground truth likewise,
    ``side_by_side.png`` (image | ground truth | one panel per strategy, titled, with a colour legend) and
    ``summary.json``.

    Args:
        out_dir: Output folder (created).
        seed: Scene and simulation seed.
        size: Image side in pixels.
        stuff_area_limit: Stuff area threshold of the fusions that have one (scaled to the small image).
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    scene = generate_scene(rng, size)
    table: CategoryTable = scene.table
    families, detections = _families(scene, rng, stuff_area_limit)
    results, timings = {}, {}
    for name, family in families.items():
        t0 = time.perf_counter()
        results[name] = family.run()
        timings[name] = (time.perf_counter() - t0) * 1000
    files = [save_png(scene.image, out / "image.png")]
    summary: dict[str, object] = {"seed": seed, "size": size, "detections": detections,
                                  "ground_truth_segments": scene.panoptic.num_segments}
    for name, res in {"ground_truth": scene.panoptic, **results}.items():
        files.append(save_png(colorize(res, table), out / f"{name}.png"))
        png, info = to_coco(res, table)
        files.append(save_png(png, out / f"{name}_panoptic.png"))
        seg_json = out / f"{name}_segments.json"
        atomic_write_text(seg_json, json.dumps({"segments_info": info, "categories": table.to_coco()}, indent=1))
        files.append(seg_json)
        if name != "ground_truth":
            pq = PanopticQuality(table)
            pq.update(scene.panoptic, res)
            rows = pq.compute()
            summary[name] = {"family": families[name].family, "PQ": round(100 * rows["All"]["pq"], 2),
                             "PQ_th": round(100 * rows["Things"]["pq"], 2),
                             "PQ_st": round(100 * rows["Stuff"]["pq"], 2),
                             "segments": res.num_segments, "things": int(res.isthing.sum()),
                             "unknown_pixels": int(res.unknown_mask.sum()),
                             "void_pixels": int((res.segment_map == 0).sum()), "ms": round(timings[name], 2)}
    pictures = [scene.image, colorize(scene.panoptic, table), *(colorize(r, table) for r in results.values())]
    panel = side_by_side(pictures, ["image", "ground truth", *(families[name].title for name in results)])
    panel = with_legend(panel, table, [scene.panoptic, *results.values()])
    files.append(save_png(panel, out / "side_by_side.png"))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    files.append(out / "summary.json")
    return DemoReport(out, results, files, timings, summary)
