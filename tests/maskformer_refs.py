"""Shared by the MaskFormerFusion tests: a category table in dataset order, random query scenes, the reference
rules re-expressed as plain loops (written from reading each reference's code) and map comparisons."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from panoptic import CategoryTable, PanopticResult

# Dataset order interleaves things and stuff, as query models number their classes (class_index_map "dataset").
TABLE = CategoryTable.from_coco([
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 101, "name": "sky", "isthing": 0},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 102, "name": "road", "isthing": 0},
    {"id": 3, "name": "dog", "isthing": 1},
    {"id": 103, "name": "grass", "isthing": 0},
])
CLASS_MAP = TABLE.class_index_map("dataset")
K = int(CLASS_MAP.numel())
THING_OF_CLASS = TABLE.isthing_tensor()[CLASS_MAP]


def random_scene(g: torch.Generator, max_queries: int = 12) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """``(Q, K + 1)`` class logits, ``(Q, m, m)`` mask logits and an output size (32x32 or the mask size)."""
    q = int(torch.randint(1, max_queries + 1, (), generator=g))
    cls = torch.randn(q, K + 1, generator=g) * 2
    confident = torch.rand(q, generator=g) < 0.7  # most queries pass the score threshold
    best = torch.randint(0, K + 1, (q,), generator=g)
    cls[torch.arange(q), best] += torch.where(confident, 6.0, 1.0)
    m = int(torch.randint(4, 17, (), generator=g))
    # blobs (centre, radius) with noise: queries overlap partly, so the overlap test decides both ways
    yy, xx = torch.meshgrid(torch.arange(m).float(), torch.arange(m).float(), indexing="ij")
    centre = torch.rand(q, 2, 1, 1, generator=g) * m
    radius = (0.15 + 0.5 * torch.rand(q, 1, 1, generator=g)) * m
    dist = ((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2).sqrt()
    masks = (radius - dist) * (0.5 + 2 * torch.rand(q, 1, 1, generator=g)) + torch.randn(q, m, m, generator=g)
    size = (32, 32) if bool(torch.rand((), generator=g) < 0.6) else (m, m)
    return cls, masks, size


def reference_rule(cls: torch.Tensor, masks: torch.Tensor, size: tuple[int, int], paint_foreground_only: bool,
                   object_mask_threshold: float = 0.8,
                   overlap_threshold: float = 0.8) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Mask2Former's (``paint_foreground_only``) or MaskFormer's ``panoptic_inference``, one query at a time.

    Returns:
        The ``(H, W)`` id map and ``(id, model class, query index)`` per segment.
    """
    masks = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    scores, labels = F.softmax(cls.float(), dim=-1).max(-1)
    mask_pred = masks.sigmoid()
    keep = labels.ne(K) & (scores > object_mask_threshold)
    queries = torch.nonzero(keep)[:, 0].tolist()
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
    seg = torch.zeros(size, dtype=torch.int32)
    info: list[tuple[int, int, int]] = []
    if cur_masks.shape[0] == 0:
        return seg, info
    cur_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    stuff_ids: dict[int, int] = {}
    current = 0
    for k in range(cur_classes.shape[0]):
        c = int(cur_classes[k])
        region = cur_ids == k
        fg = cur_masks[k] >= 0.5
        mask = region & fg if paint_foreground_only else region
        mask_area, original_area = int(region.sum()), int(fg.sum())
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not bool(THING_OF_CLASS[c]):
                if c in stuff_ids:
                    seg[mask] = stuff_ids[c]
                    continue
                stuff_ids[c] = current + 1
            current += 1
            seg[mask] = current
            info.append((current, c, queries[k]))
    return seg, info


def assert_same_partition(ours: torch.Tensor, theirs: torch.Tensor) -> dict[int, int]:
    """The two id maps are equal up to a bijective relabelling with 0 (void) fixed; returns ours -> theirs."""
    assert torch.equal(ours == 0, theirs == 0), "void pixels differ"
    pairs = torch.unique(torch.stack([ours.reshape(-1).long(), theirs.reshape(-1).long()], 1), dim=0)
    assert pairs[:, 0].unique().numel() == pairs.shape[0], "one of our segments spans several reference segments"
    assert pairs[:, 1].unique().numel() == pairs.shape[0], "one reference segment spans several of ours"
    return {int(a): int(b) for a, b in pairs.tolist()}


def assert_matches_reference(result: PanopticResult, seg: torch.Tensor, info: list[tuple[int, int, int]]) -> None:
    """Same partition, and each segment has the reference's category and first query."""
    result.validate(TABLE)
    relabel = assert_same_partition(result.segment_map, seg)
    by_id = {i: (c, q) for i, c, q in info}
    for ours, theirs in relabel.items():
        if ours == 0:
            continue
        c, q = by_id[theirs]
        assert int(result.category[ours - 1]) == int(CLASS_MAP[c])
        assert int(result.source[ours - 1]) == q


def reference_kmax(cls: torch.Tensor, masks: torch.Tensor, size: tuple[int, int], class_threshold: float = 0.7,
                   pixel_threshold: float = 0.4, thing_limit: int = 0, stuff_limit: int = 0,
                   label_divisor: int = 1000) -> torch.Tensor:
    """deeplab2 ``max_deeplab.py`` pixelwise post-processing (one frame, one piece), in its arithmetic: float
    keep/confidence masks multiplied in, counts compared with ``limit - 0.5``, ``semantic * divisor + slot + 1``
    for things; void is negative. Classes are the model's (thing-ness from ``THING_OF_CLASS``)."""
    probs = F.softmax(cls.float(), -1)[:, :-1]
    pred = probs.argmax(-1)
    confidence = probs.amax(-1)
    keep = (confidence >= class_threshold).float()
    if keep.sum() < 0.5:
        return torch.full(size, -1, dtype=torch.int64)
    logits = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=True)[0]
    detected = logits * keep.view(-1, 1, 1) + (-99999.0) * (1 - keep.view(-1, 1, 1))
    confident = (F.softmax(detected, 0).amax(0) > pixel_threshold).float()
    confident = confident * (logits.amax(0) == detected.amax(0)).float()
    mask_id = detected.argmax(0)
    return deeplab2_merge(mask_id, pred[mask_id], confident, thing_limit, stuff_limit, label_divisor)


def deeplab2_merge(mask_id: torch.Tensor, semantic: torch.Tensor, confident: torch.Tensor, thing_limit: int,
                   stuff_limit: int, label_divisor: int) -> torch.Tensor:
    """deeplab2's ``_merge_mask_id_and_semantic_maps`` (with the thing / stuff masks of
    ``_get_mask_id_and_semantic_maps``): ``(H, W)`` slot, model class and 0/1 confident maps -> panoptic codes."""
    is_thing = THING_OF_CLASS[semantic].float()
    thing_mask, stuff_mask = is_thing * confident, (1 - is_thing) * confident
    thing_ids = (mask_id + 1).float() * thing_mask
    thing_sem = (semantic + 1).float() * thing_mask
    stuff_sem = (semantic + 1).float() * stuff_mask

    def filter_by_count(index_map: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = index_map.round().long()
        counts = torch.bincount(idx.reshape(-1))[idx]
        keep_px = (counts.float() > limit - 0.5).float()
        return index_map * keep_px, keep_px

    if stuff_limit > 0:
        stuff_sem, _ = filter_by_count(stuff_sem, stuff_limit)
    if thing_limit > 0:
        thing_ids, kept = filter_by_count(thing_ids, thing_limit)
        thing_sem = thing_sem * kept
    sem = thing_sem + stuff_sem - 1.0
    sem = (sem < -0.5).float() * 0.0 + sem  # void_label -1: (void + 1) = 0 is added where void
    return (sem * label_divisor + thing_ids).round().long()


def reference_kmax_maskwise(cls: torch.Tensor, masks: torch.Tensor, size: tuple[int, int],
                            thing_threshold: float = 0.7, stuff_threshold: float = 0.5,
                            pixel_threshold: float = 0.4, overlapping_threshold: float = 0.8,
                            reorder: tuple[float, float] = (1.0, 1.0), thing_limit: int = 0, stuff_limit: int = 0,
                            label_divisor: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """deeplab2 ``max_deeplab.py`` maskwise post-processing (one frame, one piece), in its op order: slot scores
    from the un-resized logits, a stable descending argsort, then a canvas pasted slot by slot with float masks.

    Returns:
        The panoptic codes (as :func:`reference_kmax`) and the ``(Q,)`` paste order (code ``% divisor - 1`` is a
        position in it).
    """
    probs = F.softmax(cls.float(), -1)[:, :-1]
    pred = probs.argmax(-1)
    confidence = probs.amax(-1)
    thresholded_thing = (confidence >= thing_threshold).float()
    thresholded_stuff = (confidence >= stuff_threshold).float()
    num_detections = int(((thresholded_thing + thresholded_stuff) > 0.5).sum())
    q = int(masks.shape[0])
    # the mask confidence: mean probability over the slot's detected pixels, before resizing
    mask_probs = F.softmax(masks.float(), 0)
    detected_flat = (mask_probs > pixel_threshold).float().reshape(q, -1)
    score_sum = (mask_probs.reshape(q, -1) * detected_flat).sum(1)
    pixel_count = detected_flat.sum(1)
    mask_scores = torch.where(pixel_count > 0, score_sum / pixel_count, torch.zeros(()))  # divide_no_nan
    reorder_score = confidence ** reorder[0] * mask_scores ** reorder[1]
    order = torch.argsort(reorder_score, descending=True, stable=True)
    pred, confidence = pred[order], confidence[order]
    if num_detections == 0:
        return torch.full(size, -1, dtype=torch.int64), order
    logits = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=True)[0]
    detected = (F.softmax(logits, 0) > pixel_threshold).float()[order]
    canvas = torch.zeros(size)
    confident = torch.zeros(size)
    for idx in range(q):
        current = detected[idx]
        is_thing = float(THING_OF_CLASS[pred[idx]])
        is_confident = (float(confidence[idx] >= thing_threshold) * is_thing
                        + float(confidence[idx] >= stuff_threshold) * (1 - is_thing))
        original = current.sum()
        new = current * (canvas == 0).float()
        not_overlap_too_much = float(new.sum() > original * overlapping_threshold)
        new = new * is_confident * not_overlap_too_much
        canvas = canvas + new * float(idx + 1)
        confident = confident + new
    mask_id = (canvas - 1).clamp(min=0).long()
    return deeplab2_merge(mask_id, pred[mask_id], confident, thing_limit, stuff_limit, label_divisor), order


def paste_loop(claims: torch.Tensor, allowed: torch.Tensor,
                        overlap_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``panoptic._ops.queries.paste_in_order`` as deeplab2 computes it: one mask at a time onto a canvas."""
    n, h, w = (int(v) for v in claims.shape)
    owner = torch.full((h, w), n, dtype=torch.int64, device=claims.device)
    pasted = torch.zeros(n, dtype=torch.bool, device=claims.device)
    t = torch.tensor(overlap_threshold, dtype=torch.float32)
    for k in range(n):
        free = claims[k] & (owner == n)
        if bool(allowed[k]) and float(free.sum()) > float(claims[k].sum().float() * t):
            owner[free] = k
            pasted[k] = True
    return owner, pasted
