"""``Queries``: the per-image output of a query-based model (MaskFormer, Mask2Former, OneFormer, kMaX)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Queries"]


@dataclass
class Queries:
    """Class and mask predictions of ``Q`` queries for one image. ``Q`` may be 0.

    Attributes:
        class_logits: ``(Q, K + 1)`` float class logits; the last column is "no object". ``K`` is the model's
            class count; class ``k`` is contiguous category ``class_map[k]`` of the fusion (see
            :meth:`~panoptic.categories.CategoryTable.class_index_map`).
        mask_logits: ``(Q, h, w)`` float mask logits (before the sigmoid), at any resolution: the fusion
            upsamples the ones it needs to the output size.

    Example:
        >>> q = Queries(torch.zeros(3, 5), torch.zeros(3, 8, 8))
        >>> len(q), q.num_classes
        (3, 4)
        >>> [len(x) for x in Queries.unbatch(torch.zeros(2, 3, 5), torch.zeros(2, 3, 8, 8))]
        [3, 3]
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor

    def __len__(self) -> int:
        return int(self.class_logits.shape[0])

    @property
    def num_classes(self) -> int:
        """``K``, the number of classes without "no object"."""
        return int(self.class_logits.shape[-1]) - 1

    @staticmethod
    def unbatch(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> list[Queries]:
        """Split batched ``(B, Q, K + 1)`` class logits and ``(B, Q, h, w)`` mask logits into ``B`` queries."""
        if not isinstance(class_logits, torch.Tensor) or class_logits.ndim != 3:
            raise ValueError(f"batched class logits must be (B, Q, K + 1), got {_shape(class_logits)}; for one "
                             "image build Queries(class_logits, mask_logits) directly.")
        if not isinstance(mask_logits, torch.Tensor) or mask_logits.ndim != 4:
            raise ValueError(f"batched mask logits must be (B, Q, h, w), got {_shape(mask_logits)}.")
        if class_logits.shape[0] != mask_logits.shape[0]:
            raise ValueError(f"class logits have batch size {class_logits.shape[0]} but mask logits "
                             f"{mask_logits.shape[0]}; pass the two outputs of the same forward pass.")
        return [Queries(c, m) for c, m in zip(class_logits, mask_logits, strict=True)]

    def to(self, device: torch.device | str) -> Queries:
        """Move both tensors to ``device``."""
        return Queries(self.class_logits.to(device), self.mask_logits.to(device))

    def validate(self, num_classes: int) -> None:
        """Check shapes, dtypes and finiteness; raise a ``ValueError`` that names the fix.

        Args:
            num_classes: ``K`` the fusion expects (the length of its class map).
        """
        c, m = self.class_logits, self.mask_logits
        if not isinstance(c, torch.Tensor) or c.ndim != 2:
            raise ValueError(f"Queries.class_logits must be (Q, K + 1), got {_shape(c)}; batched outputs: use "
                             "Queries.unbatch(class_logits, mask_logits).")
        if not isinstance(m, torch.Tensor) or m.ndim != 3:
            raise ValueError(f"Queries.mask_logits must be (Q, h, w), got {_shape(m)}; (Q, 1, h, w) masks: pass "
                             "mask_logits[:, 0].")
        if not (c.is_floating_point() and m.is_floating_point()):
            raise ValueError(f"Queries needs float logits, got {c.dtype} and {m.dtype}.")
        if c.shape[0] != m.shape[0]:
            raise ValueError(f"Queries has {c.shape[0]} class rows but {m.shape[0]} masks; both come from the same "
                             "queries, in the same order.")
        if c.shape[1] != num_classes + 1:
            raise ValueError(f"Queries.class_logits has {c.shape[1]} columns but the fusion expects K + 1 = "
                             f"{num_classes + 1} ({num_classes} classes, then 'no object'); pass a class_map of "
                             "the model's class count (CategoryTable.class_index_map) or include the no-object "
                             "column.")
        if m.shape[1] == 0 or m.shape[2] == 0:
            raise ValueError(f"Queries.mask_logits has an empty mask size {tuple(m.shape[1:])}.")
        if c.is_meta or m.is_meta:
            raise ValueError("Queries holds tensors on the 'meta' device, which have no values; run the model on "
                             "a real device before fusion.")
        from .fusion.base import _all_finite  # one reduction pass, not an isfinite map

        for name, t in (("class_logits", c), ("mask_logits", m)):
            if not _all_finite(t):
                raise ValueError(f"Queries.{name} contains NaN or inf; check the model output (e.g. clamp or "
                                 "torch.nan_to_num) before fusion.")


def _shape(t: object) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def as_query_list(queries: Queries | Sequence[Queries]) -> list[Queries]:
    """One :class:`Queries` or a sequence of them as a list; anything else is a ``ValueError``."""
    if isinstance(queries, Queries):
        return [queries]
    if isinstance(queries, Sequence) and all(isinstance(q, Queries) for q in queries):
        return list(queries)
    raise ValueError(f"expected panoptic.Queries or a list of them, got {type(queries).__name__}; batched tensors: "
                     "Queries.unbatch(class_logits, mask_logits).")
