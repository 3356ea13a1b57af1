"""Parity of ``HeuristicFusion`` (panopticapi flavor) with panopticapi's own combiner on random scenes.

The oracle is ``panopticapi-lite`` (module ``panopticapi``; ``pip install --no-deps panopticapi-lite``,
it pins numpy<2). Each scene is written as the JSON files its ``combine_predictions`` reads (RLE
instance masks with scores, one RLE per semantic category), run through its driver (score filter,
stable sort, thing-category semantic entries skipped) and its per-image core, and the PNG it writes is
compared with our result: the same pixel partition and the same category per segment.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from panoptic import CategoryTable, Instances, PanopticResult
from panoptic.fusion.heuristic import HeuristicFusion

ORACLE = "panopticapi.combine_semantic_and_instance_predictions"
HINT = "pip install --no-deps panopticapi-lite"


def import_oracle(require: bool) -> ModuleType:
    """The oracle module; a skip without it, or an error when ``require`` (CI: PANOPTIC_REQUIRE_ORACLE=1)."""
    if not require:
        return pytest.importorskip(ORACLE, reason=f"parity oracle missing ({HINT})")
    try:
        return importlib.import_module(ORACLE)
    except ImportError as e:
        raise ImportError(f"PANOPTIC_REQUIRE_ORACLE=1 but the parity oracle {ORACLE} cannot be imported "
                          f"({e}); {HINT}.") from e


oracle = import_oracle(os.environ.get("PANOPTIC_REQUIRE_ORACLE") == "1")
mask_api = pytest.importorskip("pycocotools.mask")

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

H, W = 64, 96
# Colours far apart (> 60 in some channel) and far from black: panopticapi derives segment ids from colours,
# jittering thing colours by up to 30, so ids can neither collide across categories nor be 0 (void).
TABLE = CategoryTable.from_coco([
    {"id": 1, "name": "person", "isthing": 1, "color": [120, 120, 220]},
    {"id": 101, "name": "sky", "isthing": 0, "color": [200, 50, 50]},
    {"id": 2, "name": "car", "isthing": 1, "color": [220, 120, 220]},
    {"id": 102, "name": "road", "isthing": 0, "color": [50, 200, 50]},
    {"id": 103, "name": "grass", "isthing": 0, "color": [50, 50, 200]},
    {"id": 3, "name": "dog", "isthing": 1, "color": [120, 220, 220]},
    {"id": 104, "name": "wall", "isthing": 0, "color": [200, 200, 50]},
])
SCORES = np.array([0.3, 0.45, 0.5, 0.55, 0.6, 0.75, 0.9, 0.95], dtype=np.float32)  # ties and the 0.5 edge


def random_scene(seed: int) -> tuple[torch.Tensor, list[np.ndarray], np.ndarray, np.ndarray]:
    """Semantic logits ``(1, C, H, W)`` with smooth blobs and overlapping ellipse/rectangle instance masks."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.normal(size=(1, TABLE.num_classes, 4, 6)).astype(np.float32))
    if rng.random() < 0.7:  # one dominant stuff class, so that 4096-pixel stuff segments exist
        low[0, rng.integers(TABLE.num_stuff)] += rng.uniform(1.0, 4.0)
    sem = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    yy, xx = np.mgrid[:H, :W]
    masks = []
    for _ in range(rng.integers(0, 13)):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(2, 24, size=2)
        if rng.random() < 0.05:
            m = np.zeros((H, W), dtype=bool)  # empty mask: skipped by the area == 0 rule
        elif rng.random() < 0.5:
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            m = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        masks.append(m)
    n = len(masks)
    return sem, masks, rng.choice(SCORES, size=n), rng.integers(0, TABLE.num_things, size=n)


def rle(mask: np.ndarray) -> dict:
    enc = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": enc["size"], "counts": enc["counts"].decode("ascii")}


def run_oracle(tmp: Path, sem_labels: np.ndarray, masks: list[np.ndarray], scores: np.ndarray,
               labels: np.ndarray, conf: float, overlap: float, limit: float,
               monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, list[dict]]:
    """panopticapi's ``combine_predictions`` on one image: ``(H, W)`` segment ids and ``segments_info``."""
    ds = TABLE.dataset_ids
    things = [TABLE.thing_to_contiguous(int(t)) for t in labels]
    inst = [{"image_id": 1, "category_id": ds[c], "segmentation": rle(m), "score": float(s)}
            for m, s, c in zip(masks, scores, things, strict=True)]
    sem = [{"image_id": 1, "category_id": ds[c], "segmentation": rle(sem_labels == c)}
           for c in np.unique(sem_labels).tolist()]  # thing categories included: the driver skips them
    files = {"sem": sem, "inst": inst, "images": {"images": [{"id": 1, "file_name": "scene.jpg", "height": H,
                                                               "width": W}]}, "cats": TABLE.to_coco()}
    for name, data in files.items():
        (tmp / f"{name}.json").write_text(json.dumps(data))

    def one_process(img_id2img, *rest):  # the per-image core, without the multiprocessing pool
        return oracle.combine_to_panoptic_single_core(0, list(img_id2img), img_id2img, *rest)

    monkeypatch.setattr(oracle, "combine_to_panoptic_multi_core", one_process)
    oracle.combine_predictions(str(tmp / "sem.json"), str(tmp / "inst.json"), str(tmp / "images.json"),
                               str(tmp / "cats.json"), str(tmp / "pan"), str(tmp / "pan.json"),
                               conf, overlap, limit)
    rgb = np.asarray(Image.open(tmp / "pan" / "scene.png").convert("RGB")).astype(np.uint32)
    ann = json.loads((tmp / "pan.json").read_text())["annotations"][0]
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], ann["segments_info"]


def ours(fusion: HeuristicFusion, sem: torch.Tensor, masks: list[np.ndarray], scores: np.ndarray,
         labels: np.ndarray) -> PanopticResult:
    """Our fusion on the same binary masks: image-space logits +5 inside, -5 outside."""
    n = len(masks)
    logits = torch.from_numpy(np.stack(masks).astype(np.float32) * 10 - 5) if n else torch.zeros(0, H, W)
    inst = Instances(torch.tensor([[0.0, 0.0, W - 1.0, H - 1.0]] * n).reshape(n, 4), torch.from_numpy(scores),
                     torch.from_numpy(labels).long(), logits, "image")
    res = fusion(sem, [inst])[0]
    res.validate(TABLE)
    return res


def assert_same_segmentation(res: PanopticResult, ids: np.ndarray, info: list[dict]) -> None:
    mine = res.segment_map.numpy().astype(np.int64)
    assert np.array_equal(mine == 0, ids == 0), "void pixels differ"
    pairs = np.unique(np.stack([mine.ravel(), ids.ravel().astype(np.int64)]), axis=1)
    assert pairs.shape[1] == np.unique(mine).size == np.unique(ids).size, "pixel partitions differ"
    # Same category per segment (dataset ids); panopticapi can list zero-area segments, PNG ids only count.
    cat_of = {s["id"]: s["category_id"] for s in info}
    ds = TABLE.dataset_id_tensor()
    for m, t in pairs.T.tolist():
        if m:
            assert int(ds[res.category[m - 1]]) == cat_of[t], f"segment {m}: category differs"


def check_scene(seed: int, tmp: Path, monkeypatch: pytest.MonkeyPatch, conf: float, overlap: float,
                limit: float, fusion: HeuristicFusion) -> PanopticResult:
    sem, masks, scores, labels = random_scene(seed)
    res = ours(fusion, sem, masks, scores, labels)
    ids, info = run_oracle(tmp, sem[0].argmax(0).numpy(), masks, scores, labels, conf, overlap, limit,
                           monkeypatch)
    assert_same_segmentation(res, ids, info)
    return res


@pytest.mark.parametrize("seed", range(60))
def test_parity_default_thresholds(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   ops_backend: str) -> None:
    # panopticapi's CLI defaults: --confidence_thr 0.5 --overlap_thr 0.5 --stuff_area_limit 64*64
    check_scene(seed, tmp_path, monkeypatch, 0.5, 0.5, 64 * 64, HeuristicFusion(TABLE))


@pytest.mark.parametrize("seed", range(1000, 1060))
def test_parity_other_thresholds(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    conf = float(rng.choice([0.0, 0.45, 0.55, 0.9]))
    overlap = float(rng.choice([0.0, 0.1, 0.3, 0.5, 0.8]))
    limit = float(rng.choice([0, 1, 64, 500, 1500]))
    fusion = HeuristicFusion(TABLE, score_threshold=conf, overlap_threshold=overlap, stuff_area_limit=limit)
    check_scene(seed, tmp_path, monkeypatch, conf, overlap, limit, fusion)


def first_overlap_ratio(masks: list[np.ndarray], scores: np.ndarray, conf: float) -> float | None:
    """``|m ∧ used| / |m|`` of the first instance, in visit order, that overlaps the ones before it.

    Every instance before it overlaps nothing and is kept whatever the threshold, so with this ratio as
    ``overlap_thr`` both implementations meet the ``ratio == threshold`` edge exactly.
    """
    used = np.zeros((H, W), dtype=bool)
    for i in sorted(range(len(masks)), key=lambda j: -float(scores[j])):
        area = int(masks[i].sum())
        if float(scores[i]) < conf or area == 0:
            continue
        inter = int((masks[i] & used).sum())
        if inter:
            return inter / area
        used |= masks[i]
    return None


@pytest.mark.parametrize("seed", range(2000, 2030))
def test_parity_at_threshold_edges(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # score == confidence_thr, overlap ratio == overlap_thr and stuff remainder == stuff_area_limit.
    sem, masks, scores, labels = random_scene(seed)
    conf = float(np.median(scores)) if len(scores) else 0.5
    overlap = first_overlap_ratio(masks, scores, conf) or 0.5
    painted = ours(HeuristicFusion(TABLE, score_threshold=conf, overlap_threshold=overlap,
                                   stuff_area_limit=H * W + 1), sem, masks, scores, labels).segment_map > 0
    left = torch.bincount(sem[0].argmax(0)[~painted], minlength=TABLE.num_classes)[:TABLE.num_stuff]
    limit = float(left.max()) if left.numel() and int(left.max()) else 64.0
    fusion = HeuristicFusion(TABLE, score_threshold=conf, overlap_threshold=overlap, stuff_area_limit=limit)
    check_scene(seed, tmp_path, monkeypatch, conf, overlap, limit, fusion)


def test_missing_oracle_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, ORACLE, None)  # makes the import raise ImportError
    with pytest.raises(pytest.skip.Exception):
        import_oracle(require=False)
    with pytest.raises(ImportError, match="PANOPTIC_REQUIRE_ORACLE"):
        import_oracle(require=True)
