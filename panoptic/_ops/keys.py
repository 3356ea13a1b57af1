"""Counting and relabelling the per-pixel keys every fusion writes (its areas and its segment map)."""

from __future__ import annotations

import torch

from .switch import native_kernels

__all__ = ["count_keys", "relabel_keys"]


def _native_int32(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.int32 and x.is_contiguous()


@torch.no_grad()
def count_keys(keys: torch.Tensor, num_keys: int) -> torch.Tensor:
    """Pixel count of every key: ``torch.bincount(keys.reshape(-1), minlength=num_keys)``.

    The C kernel (int32 CPU keys) is about 4x faster than ``torch.bincount`` at 1024x2048, whose CPU kernel
    widens every key to int64 first.

    Args:
        keys: ``(H, W)`` int32 or int64 keys in ``0 .. num_keys - 1``.
        num_keys: ``Q``, the number of possible keys (>= 1).

    Returns:
        ``(Q,)`` int64 counts.

    Raises:
        ValueError: A key outside ``0 .. Q - 1``.

    Example:
        >>> count_keys(torch.tensor([[0, 2], [2, 2]], dtype=torch.int32), 4).tolist()
        [1, 0, 3, 0]
    """
    kernels = native_kernels()
    if kernels is not None and _native_int32(keys) and num_keys >= 1:
        counts = torch.zeros(num_keys, dtype=torch.int64)
        if not kernels.count_keys(keys.numpy(), counts.numpy()):
            raise ValueError(f"keys must lie in 0..{num_keys - 1}.")
        return counts
    # The specification.
    try:
        counts = torch.bincount(keys.reshape(-1), minlength=num_keys)
    except RuntimeError as e:  # a negative key
        raise ValueError(f"keys must lie in 0..{num_keys - 1}.") from e
    if counts.numel() != num_keys:
        raise ValueError(f"keys must lie in 0..{num_keys - 1}.")
    return counts


@torch.no_grad()
def relabel_keys(lut: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``lut[keys]``: the segment id of every pixel from its key.

    Args:
        lut: ``(Q,)`` int32 table, key -> segment id.
        keys: ``(H, W)`` int32 or int64 keys in ``0 .. Q - 1``.

    Returns:
        ``(H, W)`` int32 map.

    Example:
        >>> lut = torch.tensor([0, 5, 7], dtype=torch.int32)
        >>> relabel_keys(lut, torch.tensor([[2, 0], [1, 1]], dtype=torch.int32)).tolist()
        [[7, 0], [5, 5]]
    """
    kernels = native_kernels()
    if kernels is not None and _native_int32(keys) and _native_int32(lut) and lut.numel() >= 1:
        out = torch.empty(keys.shape, dtype=torch.int32)
        if not kernels.relabel_keys(lut.numpy(), keys.numpy(), out.numpy()):
            raise ValueError(f"keys must lie in 0..{lut.numel() - 1}.")
        return out
    # The specification.
    return lut.index_select(0, keys.reshape(-1)).reshape(keys.shape)
