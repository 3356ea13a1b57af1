"""What each ablation row changes (`panoptic.compare.rule_counts`), on hand-made results."""

from __future__ import annotations

import dataclasses

import torch
from conftest import result_from_labels, tiny_table

from panoptic.compare.rows import ABLATION_FLAGS, Row
from panoptic.compare.rule_counts import RuleCounter, class_map
from panoptic.fusion import HeuristicFusion

TABLE = tiny_table(2, 2)  # contiguous 0, 1 stuff; 2, 3 things


def _row(key: str, network: str, ablation: bool = True) -> Row:
    flags = dict.fromkeys(ABLATION_FLAGS, False) if ablation else {}
    return Row(key, key, network, HeuristicFusion(TABLE), flags=flags)


def _result(labels: list[list[int]], categories: list[int], sources: list[int] | None = None,
            unknown: list[list[bool]] | None = None):
    res = result_from_labels(torch.tensor(labels), TABLE, categories)
    if sources is not None:
        res = dataclasses.replace(res, source=torch.tensor(sources))
    if unknown is not None:
        res = dataclasses.replace(res, unknown_mask=torch.tensor(unknown))
    return res


def test_class_map_marks_void_and_unknown():
    res = _result([[0, 0, -1], [1, 1, -1]], [0, 2], unknown=[[False, False, True], [False, False, False]])
    assert class_map(res).tolist() == [[0, 0, -2], [2, 2, -1]]


def test_counts_compare_each_row_with_the_row_above_on_the_same_image():
    rows = [_row("main", "upsnet", ablation=False), _row("a", "upsnet_c"), _row("b", "upsnet"), _row("c", "upsnet")]
    counter = RuleCounter(rows)
    everything_stuff = _result([[0, 0], [0, 0]], [0])
    # "c" relabels the right column as a thing (ICA-like: 2 pixels change class), predicts one unknown pixel,
    # and keeps 1 of the 3 detections it was given.
    relabelled = _result([[0, 1], [0, -1]], [0, 2], sources=[-1, 0], unknown=[[False, False], [False, True]])
    counter(0, rows[0], relabelled, 3)  # a main row: counted, never compared
    counter(0, rows[2], everything_stuff, 3)
    counter(0, rows[3], relabelled, 3)
    counter(1, rows[2], relabelled, 1)  # next image: its own comparison only
    counter(1, rows[3], relabelled, 1)
    counter(0, rows[1], everything_stuff, 2)  # another network's pass: nothing above it
    c = counter.counts
    assert (c["c"].changed_px, c["c"].unknown_px, c["c"].dropped) == (2, 2, 2 + 0)
    assert (c["b"].changed_px, c["b"].unknown_px, c["b"].dropped) == (0, 1, 3 + 0)  # first upsnet ablation row
    assert (c["a"].changed_px, c["a"].dropped) == (0, 2)
    assert c["main"].changed_px == 0 and c["main"].dropped == 2
