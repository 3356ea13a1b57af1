"""Checks that a checkpoint's category table fits the data's (ids, names, thing/stuff, channel order)."""

from __future__ import annotations

from typing import Any

from ..categories import CategoryTable
from ..errors import CheckpointError


def _describe(c: dict[str, Any]) -> str:
    return f"{c['id']}:{c['name']}({'thing' if c['isthing'] else 'stuff'})"


def table_differences(checkpoint: CategoryTable, data: CategoryTable) -> list[str]:
    """Human-readable differences between two tables (ids, names, thing/stuff, channel order; colours ignored)."""
    a = {c.id: c for c in checkpoint.categories}
    b = {c.id: c for c in data.categories}
    out = []
    only_a = [_describe(c.__dict__) for i, c in a.items() if i not in b]
    only_b = [_describe(c.__dict__) for i, c in b.items() if i not in a]
    if only_a:
        out.append(f"only in the checkpoint: {', '.join(only_a)}")
    if only_b:
        out.append(f"only in the data: {', '.join(only_b)}")
    for i in a.keys() & b.keys():
        ca, cb = a[i], b[i]
        if (ca.name, ca.isthing) != (cb.name, cb.isthing):
            out.append(f"id {i} is {_describe(ca.__dict__)} in the checkpoint but {_describe(cb.__dict__)} in the data")
    if not out and checkpoint.dataset_ids != data.dataset_ids:
        out.append(f"channel order differs: checkpoint {list(checkpoint.dataset_ids)}, data {list(data.dataset_ids)}")
    return out


def check_table(checkpoint: CategoryTable, data: CategoryTable, where: str = "the checkpoint") -> None:
    """Raise a :class:`CheckpointError` naming the differences when the tables disagree (colours aside)."""
    diffs = table_differences(checkpoint, data)
    if diffs:
        raise CheckpointError(
            f"the category table of {where} differs from the data's: " + "; ".join(diffs) + ". The model's class "
            "channels follow the checkpoint's table, so it cannot be used with this data: train a new model on this "
            "data (without --resume), or use data whose 'categories' match the checkpoint's.")
