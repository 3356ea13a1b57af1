"""Parity of ``MaskFormerFusion`` with each reference rule on hundreds of random scenes (32x32 and smaller).

* ``"mask2former"`` / ``"maskformer"``: the rules of Mask2Former's and MaskFormer's ``panoptic_inference``,
  re-expressed as loops in ``tests/maskformer_refs.py``.
* ``"transformers"``: Hugging Face transformers' ``post_process_panoptic_segmentation`` itself (Mask2Former's
  processor, which resizes masks to 384x384 first, and MaskFormer's), run on random tensors without weights.
  Skipped without transformers, unless ``PANOPTIC_REQUIRE_ORACLE=1``, where a missing oracle is a failure.
  HF can give two segments one id when a fused class comes back after other segments (transformers #23461);
  there our segments must refine HF's (a documented difference), elsewhere the maps match up to relabelling.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType, SimpleNamespace

import pytest
import torch
from maskformer_refs import (
    CLASS_MAP,
    TABLE,
    THING_OF_CLASS,
    assert_matches_reference,
    assert_same_partition,
    random_scene,
    reference_kmax,
    reference_kmax_maskwise,
    reference_rule,
)

from panoptic import MaskFormerFusion, Queries

CASES = 200


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
@pytest.mark.parametrize("flavor", ["mask2former", "maskformer"])
def test_matches_reference_rule(flavor: str, large: bool) -> None:
    """``large``: outputs with ``H + W > 128``, resized on the CPU by the C kernel in row chunks (the sigmoid
    stays torch's)."""
    fusion = MaskFormerFusion(TABLE, flavor=flavor, class_map=CLASS_MAP)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed((13 if flavor == "mask2former" else 14) + 10 * large)
    segments, cases = 0, CASES if not large else CASES // 2
    for _ in range(cases):
        cls, masks, size = random_scene(g)
        if large:
            size = (int(torch.randint(60, 170, (), generator=g)), int(torch.randint(70, 210, (), generator=g)))
        seg, info = reference_rule(cls, masks, size, paint_foreground_only=flavor == "mask2former")
        result = fusion(Queries(cls, masks), output_size=size)[0]
        assert_matches_reference(result, seg, info)
        segments += result.num_segments
    assert segments > cases  # the scenes are not trivially empty


@pytest.mark.parametrize("flavor", ["mask2former", "maskformer"])
def test_thresholds_other_than_default(flavor: str) -> None:
    g = torch.Generator().manual_seed(3)
    for i in range(24):
        obj, ovl = [(0.3, 0.5), (0.6, 0.25), (0.9, 0.95), (0.5, 0.0)][i % 4]
        fusion = MaskFormerFusion(TABLE, flavor=flavor, class_map=CLASS_MAP,  # type: ignore[arg-type]
                                  object_mask_threshold=obj, overlap_threshold=ovl)
        cls, masks, size = random_scene(g)
        seg, info = reference_rule(cls, masks, size, flavor == "mask2former", obj, ovl)
        assert_matches_reference(fusion(Queries(cls, masks), output_size=size)[0], seg, info)


@pytest.mark.parametrize("limits", [(0, 0), (3, 20)])
def test_kmax_matches_deeplab2_pixelwise(limits: tuple[int, int]) -> None:
    fusion = MaskFormerFusion(TABLE, flavor="kmax", class_map=CLASS_MAP, thing_area_limit=limits[0],
                              stuff_area_limit=limits[1])
    g = torch.Generator().manual_seed(31 + limits[0])
    segments = 0
    for _ in range(CASES if limits == (0, 0) else CASES // 4):
        cls, masks, size = random_scene(g)
        masks = masks / 4  # slot logits compete through a softmax: keep some pixels unconfident
        ref = reference_kmax(cls, masks, size, thing_limit=limits[0], stuff_limit=limits[1])
        result = fusion(Queries(cls, masks), output_size=size)[0]
        result.validate(TABLE)
        relabel = assert_same_partition(result.segment_map, torch.where(ref < 0, 0, ref + 1))  # void -> 0
        for ours, theirs in relabel.items():
            if ours:
                assert int(result.category[ours - 1]) == int(CLASS_MAP[(theirs - 1) // 1000])
        segments += result.num_segments
    assert segments > CASES // 4


# (thing, stuff, pixel, overlapping thresholds, reorder weights, thing / stuff area limits), deeplab2's defaults first
MASKWISE_SETTINGS = [(0.7, 0.5, 0.4, 0.8, (1.0, 1.0), 0, 0), (0.7, 0.7, 0.4, 0.5, (1.0, 0.0), 0, 0),
                     (0.5, 0.3, 0.2, 0.6, (2.0, 1.0), 2, 10), (0.6, 0.6, 0.3, 0.0, (0.0, 1.0), 0, 0)]


@pytest.mark.parametrize("setting", range(len(MASKWISE_SETTINGS)))
def test_kmax_maskwise_matches_deeplab2(setting: int) -> None:
    thing_t, stuff_t, pixel_t, overlap_t, weights, thing_limit, stuff_limit = MASKWISE_SETTINGS[setting]
    fusion = MaskFormerFusion(TABLE, flavor="kmax_maskwise", class_map=CLASS_MAP, object_mask_threshold=thing_t,
                              stuff_object_mask_threshold=stuff_t, mask_threshold=pixel_t,
                              overlap_threshold=overlap_t, reorder_weights=weights, thing_area_limit=thing_limit,
                              stuff_area_limit=stuff_limit)
    g = torch.Generator().manual_seed(41 + setting)
    segments = partial = 0
    for _ in range(CASES if setting == 0 else CASES // 4):
        cls, masks, size = random_scene(g)
        masks = masks / 4  # slot logits compete through a softmax: masks overlap where two slots pass the threshold
        ref, order = reference_kmax_maskwise(cls, masks, size, thing_t, stuff_t, pixel_t, overlap_t, weights,
                                             thing_limit, stuff_limit)
        result = fusion(Queries(cls, masks), output_size=size)[0]
        result.validate(TABLE)
        relabel = assert_same_partition(result.segment_map, torch.where(ref < 0, 0, ref + 1))  # void -> 0
        for ours, theirs in relabel.items():
            if ours == 0:
                continue
            code = theirs - 1
            assert int(result.category[ours - 1]) == int(CLASS_MAP[code // 1000])
            if code % 1000:  # a thing: the slot deeplab2 pasted
                assert int(result.source[ours - 1]) == int(order[code % 1000 - 1])
        segments += result.num_segments
        slots = torch.softmax(cls, -1)[:, :-1].amax(-1) >= min(thing_t, stuff_t)
        partial += int(slots.sum()) > result.num_segments  # some slot lost to the overlap or the limits
    assert segments > CASES // 4 and partial > 0


def import_oracle(require: bool) -> ModuleType:
    """transformers; a skip without it, or an error when ``require`` (CI: PANOPTIC_REQUIRE_ORACLE=1)."""
    hint = "pip install transformers (the test extra lists it)"
    if not require:
        return pytest.importorskip("transformers", reason=f"HF oracle missing ({hint})")
    try:
        return importlib.import_module("transformers")
    except ImportError as e:
        raise ImportError(f"PANOPTIC_REQUIRE_ORACLE=1 but transformers cannot be imported ({e}); {hint}.") from e


@pytest.fixture(scope="module")
def transformers() -> ModuleType:
    return import_oracle(os.environ.get("PANOPTIC_REQUIRE_ORACLE") == "1")


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
@pytest.mark.parametrize("processor", ["Mask2FormerImageProcessor", "MaskFormerImageProcessor"])
def test_matches_transformers(transformers: ModuleType, processor: str, large: bool) -> None:
    """``large``: outputs with ``H + W > 128``, where the CPU path resizes with its own C kernel (fused with the
    per-pixel pass), which must reproduce torch's resize bit for bit."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    proc = getattr(transformers, processor)()
    resize = (384, 384) if processor.startswith("Mask2Former") else None
    g = torch.Generator().manual_seed(23 + large)
    collisions = segments = 0
    for i in range(CASES):
        cls, masks, size = random_scene(g)
        if large:
            size = (int(torch.randint(60, 170, (), generator=g)), int(torch.randint(70, 210, (), generator=g)))
        thr, ovl = [(0.5, 0.8), (0.8, 0.75), (0.3, 0.5), (0.9, 0.0)][i % 4]
        fuse = (set(torch.nonzero(~THING_OF_CLASS)[:, 0].tolist()) if i % 3
                else set(torch.nonzero(torch.rand(len(CLASS_MAP), generator=g) < 0.5)[:, 0].tolist()))
        out = SimpleNamespace(class_queries_logits=cls[None], masks_queries_logits=masks[None])
        ref = proc.post_process_panoptic_segmentation(out, threshold=thr, overlap_mask_area_threshold=ovl,
                                                      label_ids_to_fuse=fuse, target_sizes=[size])[0]
        fusion = MaskFormerFusion(TABLE, flavor="transformers", class_map=CLASS_MAP, object_mask_threshold=thr,
                                  overlap_threshold=ovl, label_ids_to_fuse=sorted(fuse), resize_masks_to=resize)
        result = fusion(Queries(cls, masks), output_size=size)[0]
        result.validate(TABLE, one_stuff_segment=False)
        seg = ref["segmentation"]
        if not ref["segments_info"]:  # HF: a float map of -1 when no query passes; ours: all void
            assert result.num_segments == 0
            continue
        segments += result.num_segments
        label_of = {s["id"]: s["label_id"] for s in ref["segments_info"]}
        ids = [s["id"] for s in ref["segments_info"]]
        if len(set(ids)) < len(ids) and any(
                not (a["was_fused"] and a["label_id"] == b["label_id"])
                for a in ref["segments_info"] for b in ref["segments_info"] if a is not b and a["id"] == b["id"]):
            collisions += 1  # HF's shared ids: ours must refine its map, with the same void pixels
            assert torch.equal(result.segment_map == 0, seg == 0)
            pairs = torch.unique(torch.stack([result.segment_map.reshape(-1).long(), seg.reshape(-1).long()], 1), dim=0)
            assert pairs[:, 0].unique().numel() == pairs.shape[0]
            continue
        relabel = assert_same_partition(result.segment_map, seg)
        for ours, theirs in relabel.items():
            if ours:
                assert int(result.category[ours - 1]) == int(CLASS_MAP[label_of[theirs]])
    print(f'{processor}: {segments} segments, {collisions} scenes with HF id collisions')
    assert segments > CASES
    assert collisions < CASES // 4


def test_required_oracle_missing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    with pytest.raises(ImportError, match="PANOPTIC_REQUIRE_ORACLE"):
        import_oracle(True)
    with pytest.raises(pytest.skip.Exception):
        import_oracle(False)
