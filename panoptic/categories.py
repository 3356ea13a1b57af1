"""The category table: one object that owns category metadata and the semantic channel layout.

Datasets name categories with arbitrary ids (COCO: 1..200 with gaps; Cityscapes: label ids 7..33).
Models work with *contiguous* ids. :class:`CategoryTable` is the single mapping between the two, and it
fixes the semantic channel order used everywhere in this library: **stuff first, then things**, as in
UPSNet. Contiguous id ``k`` is semantic channel ``k``; thing ``t`` (the ``labels`` of
:class:`~panoptic.structures.Instances`) is contiguous id ``num_stuff + t``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import PanopticError

__all__ = ["Category", "CategoryError", "CategoryTable"]


class CategoryError(PanopticError, ValueError):
    """An invalid category table; the message names the category and the fix."""


@dataclass(frozen=True)
class Category:
    """One category.

    Attributes:
        id: Dataset category id (the id written in COCO-panoptic JSON).
        name: Human-readable name.
        isthing: ``True`` for countable objects (instances), ``False`` for amorphous stuff.
        color: RGB colour used for visualization and stuff segment colours.
    """

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]


def _default_color(index: int) -> tuple[int, int, int]:
    # Deterministic, well-spread colours for tables that do not give one (golden-ratio hue walk).
    h = (index * 0.618033988749895) % 1.0
    s, v = 0.65, 0.95
    i = int(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]
    return (round(r * 255), round(g * 255), round(b * 255))


class CategoryTable:
    """Dataset ids <-> contiguous ids, ``isthing``, names and colours; stuff channels first.

    The given order is kept *within* stuff and *within* things; stuff categories are then placed
    before all things.

    Args:
        categories: The categories, in any order.

    Raises:
        CategoryError: If the table is empty or ids are duplicated.

    Example:
        >>> table = CategoryTable.from_coco([
        ...     {"id": 1, "name": "person", "isthing": 1},
        ...     {"id": 7, "name": "road", "isthing": 0},
        ... ])
        >>> table.num_stuff, table.num_things, table.names
        (1, 1, ('road', 'person'))
        >>> table.to_contiguous(1), table.to_dataset(0)
        (1, 7)
    """

    def __init__(self, categories: Sequence[Category]) -> None:
        cats = list(categories)
        if not cats:
            raise CategoryError("CategoryTable needs at least one category; pass a non-empty categories list.")
        ids = [c.id for c in cats]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise CategoryError(f"duplicate category ids {dupes}; every category needs a unique 'id'.")
        self._cats: tuple[Category, ...] = tuple([c for c in cats if not c.isthing] + [c for c in cats if c.isthing])
        self._given: tuple[Category, ...] = tuple(cats)  # dataset order, for class_index_map("dataset")
        self._to_contiguous = {c.id: k for k, c in enumerate(self._cats)}

    # ----------------------------------------------------------------------------------- builders
    @classmethod
    def from_coco(cls, categories: Iterable[Mapping[str, Any]]) -> CategoryTable:
        """Build from a COCO-panoptic ``categories`` list (``id``, ``isthing``; ``name``/``color`` optional).

        Args:
            categories: Dicts as found under ``"categories"`` in a COCO-panoptic JSON.

        Raises:
            CategoryError: On a missing or non-integer ``id``, a missing ``isthing``, a bad colour, duplicates, an
                empty list, or a dict instead of a list.
        """
        if isinstance(categories, Mapping) or isinstance(categories, str | bytes):
            keys = f" with keys {sorted(map(str, categories))[:5]}" if isinstance(categories, Mapping) else ""
            raise CategoryError(f"the categories must be a list of dicts like {{\"id\": 1, \"name\": \"person\", "
                                f"\"isthing\": 1}}, got a {type(categories).__name__}{keys}; pass the JSON's "
                                "'categories' list (a single category goes in a list of one).")
        out = []
        for n, c in enumerate(categories):
            if not isinstance(c, Mapping):
                raise CategoryError(f"category #{n} is {type(c).__name__}, expected a dict with 'id' and 'isthing'.")
            if "id" not in c:
                raise CategoryError(f"category #{n} ({c!r}) has no 'id'; add the dataset category id.")
            if not isinstance(c["id"], int) or isinstance(c["id"], bool):
                named = f" ({c['name']!r})" if "name" in c else ""
                raise CategoryError(f"category #{n}{named}: 'id' must be an integer, got "
                                    f"{c['id']!r}; write the dataset category id as a whole number.")
            if "isthing" not in c:
                raise CategoryError(
                    f"category id {c['id']} has no 'isthing'; add \"isthing\": 1 for countable objects "
                    "or 0 for stuff (COCO-panoptic categories need it)."
                )
            if c["isthing"] not in (0, 1, True, False):
                raise CategoryError(f"category id {c['id']}: 'isthing' must be 0/1 or a bool, got {c['isthing']!r}.")
            color = c.get("color")
            if color is None:
                color = _default_color(n)
            elif not isinstance(color, list | tuple) or len(color) != 3 or not all(
                    isinstance(v, int) and 0 <= v <= 255 for v in color):
                raise CategoryError(f"category id {c['id']}: 'color' must be 3 ints in 0..255, got {color!r}.")
            out.append(Category(int(c["id"]), str(c.get("name", f"category_{c['id']}")), bool(c["isthing"]),
                                tuple(int(v) for v in color)))  # type: ignore[arg-type]
        return cls(out)

    @classmethod
    def from_json(cls, path: str | Path) -> CategoryTable:
        """Load from a JSON file holding a ``categories`` list, or a COCO-panoptic JSON with that key."""
        path = Path(path)
        try:
            data = json.loads(path.read_bytes())  # bytes: UTF-8/16/32 detected as JSON allows
        except UnicodeDecodeError as e:
            raise CategoryError(f"cannot read categories from {path}: it is not UTF-8 text ({e.reason} at byte "
                                f"{e.start}); save the file as UTF-8 JSON.") from None
        except (OSError, json.JSONDecodeError) as e:
            raise CategoryError(f"cannot read categories from {path}: {e}. Pass a JSON list of categories "
                                "or a COCO-panoptic JSON with a 'categories' key.") from e
        if isinstance(data, dict):
            if "categories" not in data:
                raise CategoryError(f"{path} has no 'categories' key; pass a COCO-panoptic JSON or a list of "
                                    "categories.")
            data = data["categories"]
        return cls.from_coco(data)

    @classmethod
    def cityscapes(cls) -> CategoryTable:
        """The 19 Cityscapes training categories (11 stuff, 8 things) with their label ids and colours."""
        rows = [
            (7, "road", 0, (128, 64, 128)), (8, "sidewalk", 0, (244, 35, 232)), (11, "building", 0, (70, 70, 70)),
            (12, "wall", 0, (102, 102, 156)), (13, "fence", 0, (190, 153, 153)), (17, "pole", 0, (153, 153, 153)),
            (19, "traffic light", 0, (250, 170, 30)), (20, "traffic sign", 0, (220, 220, 0)),
            (21, "vegetation", 0, (107, 142, 35)), (22, "terrain", 0, (152, 251, 152)), (23, "sky", 0, (70, 130, 180)),
            (24, "person", 1, (220, 20, 60)), (25, "rider", 1, (255, 0, 0)), (26, "car", 1, (0, 0, 142)),
            (27, "truck", 1, (0, 0, 70)), (28, "bus", 1, (0, 60, 100)), (31, "train", 1, (0, 80, 100)),
            (32, "motorcycle", 1, (0, 0, 230)), (33, "bicycle", 1, (119, 11, 32)),
        ]
        return cls([Category(i, n, bool(t), c) for i, n, t, c in rows])

    def to_coco(self) -> list[dict[str, Any]]:
        """The table as a COCO-panoptic ``categories`` list (in channel order)."""
        return [{"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color), "supercategory": ""}
                for c in self._cats]

    # --------------------------------------------------------------------------------- queries
    @property
    def categories(self) -> tuple[Category, ...]:
        """Categories in channel order (stuff first, then things)."""
        return self._cats

    @property
    def num_classes(self) -> int:
        """Number of categories, i.e. semantic channels ``C``."""
        return len(self._cats)

    @property
    def num_stuff(self) -> int:
        """Number of stuff categories (channels ``0 .. num_stuff - 1``)."""
        return sum(not c.isthing for c in self._cats)

    @property
    def num_things(self) -> int:
        """Number of thing categories (channels ``num_stuff .. C - 1``)."""
        return sum(c.isthing for c in self._cats)

    @property
    def names(self) -> tuple[str, ...]:
        """Names in channel order."""
        return tuple(c.name for c in self._cats)

    @property
    def dataset_ids(self) -> tuple[int, ...]:
        """Dataset ids in channel order."""
        return tuple(c.id for c in self._cats)

    def isthing(self, contiguous_id: int) -> bool:
        """Whether a contiguous id is a thing."""
        return self._cats[contiguous_id].isthing

    def to_contiguous(self, dataset_id: int) -> int:
        """Dataset id -> contiguous id (channel index).

        Raises:
            CategoryError: If the id is not in the table.
        """
        try:
            return self._to_contiguous[int(dataset_id)]
        except KeyError:
            raise CategoryError(f"unknown category id {dataset_id}; the table has ids {sorted(self._to_contiguous)}. "
                             "Add the category to the categories list or fix the annotation.") from None

    def to_dataset(self, contiguous_id: int) -> int:
        """Contiguous id -> dataset id."""
        if not 0 <= contiguous_id < len(self._cats):
            raise ValueError(f"contiguous id {contiguous_id} out of range 0..{len(self._cats) - 1}.")
        return self._cats[contiguous_id].id

    def thing_to_contiguous(self, thing_index: int) -> int:
        """Thing index (an ``Instances.labels`` value) -> contiguous id."""
        return self.num_stuff + thing_index

    def isthing_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(C,)`` bool, ``True`` for thing channels."""
        return torch.tensor([c.isthing for c in self._cats], dtype=torch.bool, device=device)

    def dataset_id_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(C,)`` int64 dataset ids in channel order."""
        return torch.tensor(self.dataset_ids, dtype=torch.int64, device=device)

    def color_tensor(self) -> torch.Tensor:
        """``(C, 3)`` uint8 colours in channel order."""
        return torch.tensor([c.color for c in self._cats], dtype=torch.uint8)

    def class_index_map(self, order: str | Sequence[int] = "dataset",
                        device: torch.device | str | None = None) -> torch.Tensor:
        """``(K,)`` int64 contiguous id of each class index of a model whose classes are not stuff-first.

        Query models (MaskFormer, Mask2Former, OneFormer, kMaX) number their ``K`` classes in dataset order or
        things first; class index ``k`` of such a model is contiguous id ``map[k]`` here. The stuff-first
        semantic layout stays the default everywhere else.

        Args:
            order: ``"dataset"`` (the order the categories were given in, e.g. a COCO-panoptic JSON's list,
                which is detectron2's contiguous order), ``"things_first"`` (things, then stuff, each in given
                order), ``"stuff_first"`` (the identity) or an explicit sequence of the dataset ids of class
                ``0, 1, ...``.
            device: Device of the returned tensor.

        Raises:
            CategoryError: For an unknown order name, or ids that are unknown or repeated.

        Example:
            >>> table = CategoryTable.from_coco([{"id": 1, "name": "person", "isthing": 1},
            ...                                  {"id": 7, "name": "road", "isthing": 0}])
            >>> table.class_index_map("dataset").tolist(), table.class_index_map([7, 1]).tolist()
            ([1, 0], [0, 1])
        """
        if isinstance(order, str):
            given = {"dataset": self._given, "stuff_first": self._cats,
                     "things_first": tuple(c for c in self._given if c.isthing)
                     + tuple(c for c in self._given if not c.isthing)}
            if order not in given:
                raise CategoryError(f"unknown class order {order!r}; use 'dataset', 'things_first', 'stuff_first' "
                                    "or a list of the dataset ids of classes 0, 1, ...")
            ids = [c.id for c in given[order]]
        else:
            ids = [int(i) for i in order]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise CategoryError(f"class order repeats dataset ids {dupes}; list each category once.")
        return torch.tensor([self.to_contiguous(i) for i in ids], dtype=torch.int64, device=device)

    def __len__(self) -> int:
        return len(self._cats)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CategoryTable) and self._cats == other._cats

    def __hash__(self) -> int:
        return hash(self._cats)

    def __repr__(self) -> str:
        return f"CategoryTable(num_stuff={self.num_stuff}, num_things={self.num_things}, names={list(self.names)})"
