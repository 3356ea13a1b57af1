"""``build_fusion``: the one place where the default fusions of models, commands and the demo are made.

Example:
    >>> from panoptic.data import synthetic_categories
    >>> fusion = build_fusion("heuristic", synthetic_categories(), stuff_area_limit=128)
    >>> type(fusion).__name__, fusion.flavor, fusion.stuff_area_limit
    ('HeuristicFusion', 'upsnet', 128.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..categories import CategoryTable
from .base import PanopticFusion
from .heuristic import HeuristicFusion
from .upsnet import UPSNetFusion

__all__ = ["FUSIONS", "build_fusion"]


def _heuristic(table: CategoryTable, **overrides: Any) -> HeuristicFusion:
    # The paper's baselines (MR-CNN-PSP, UPSNet-C/-CP) combine with UPSNet's own flavor of the heuristic.
    overrides.setdefault("flavor", "upsnet")
    return HeuristicFusion(table, **overrides)


FUSIONS: dict[str, Callable[..., PanopticFusion]] = {"upsnet": UPSNetFusion, "heuristic": _heuristic}
"""Default fusion by name: ``"upsnet"`` -> :class:`UPSNetFusion`, ``"heuristic"`` -> :class:`HeuristicFusion`
with ``flavor="upsnet"``."""


def build_fusion(name: str, table: CategoryTable, **overrides: Any) -> PanopticFusion:
    """The default fusion called ``name`` for ``table``, with keyword ``overrides`` of its constructor.

    Args:
        name: A key of :data:`FUSIONS` (``"upsnet"`` or ``"heuristic"``).
        table: Category table.
        **overrides: Constructor arguments, e.g. ``stuff_area_limit=4096`` or ``flavor="panopticapi"``.

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; use one of {sorted(FUSIONS)}.")
    return FUSIONS[name](table, **overrides)
