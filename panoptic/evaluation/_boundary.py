"""Boundary bands of segments for Boundary PQ (Cheng et al., CVPR 2021), every segment of an id map at once.

The rule (boundary-iou-api's ``mask_to_boundary``, applied to each segment's binary mask): pad the mask
with one pixel of background, erode it ``d`` times with a 3x3 square and keep the mask pixels that the
erosion removed, with ``d = max(1, round(ratio * sqrt(H^2 + W^2)))``. Equivalently, a pixel is in its
segment's band iff the ``(2d+1) x (2d+1)`` window centred on it is not all of its own id, pixels outside
the image counting as another id. Because segments partition the image, one id map gives every band.

:func:`boundary_mask_numpy` is the specification; :func:`add_boundary` runs the C pass of
``panoptic.evaluation._native`` when it is built and the specification otherwise (same results).
"""

from __future__ import annotations

import numpy as np

try:
    from . import _native
except ImportError:  # no C compiler at install time: the numpy specification runs instead
    _native = None

__all__ = ["add_boundary", "band_width", "boundary_mask", "boundary_mask_numpy"]


def band_width(height: int, width: int, ratio: float = 0.02) -> int:
    """Boundary band width ``d`` in pixels: ``max(1, round(ratio * diagonal))`` (boundary-iou-api's rule).

    Example:
        >>> band_width(1024, 2048)
        46
    """
    if not ratio > 0:
        raise ValueError(f"the boundary ratio must be > 0, got {ratio}; the paper uses 0.02 (2% of the diagonal).")
    return max(1, round(float(np.sqrt(height**2 + width**2)) * ratio))


def boundary_mask_numpy(ids: np.ndarray, d: int) -> np.ndarray:
    """``(H, W)`` bool: pixel is in its segment's boundary band of width ``d`` (the specification).

    Args:
        ids: ``(H, W)`` integer id map; every distinct value is one segment (void included).
        d: Band width in pixels, ``>= 1``.
    """
    h, w = ids.shape
    out = np.ones((h, w), dtype=bool)
    if 2 * d >= h or 2 * d >= w:
        return out
    # Changes along rows / columns, as prefix counts: a window is constant iff no change lies inside it.
    ch = np.zeros((h, w), dtype=np.int32)
    np.cumsum(ids[:, 1:] != ids[:, :-1], axis=1, out=ch[:, 1:])
    row_ok = ch[:, 2 * d:] == ch[:, : w - 2 * d]            # (H, W-2d): row constant over c-d..c+d
    cv = np.zeros((h, w - 2 * d), dtype=np.int32)
    np.cumsum(ids[1:, d:w - d] != ids[:-1, d:w - d], axis=0, out=cv[1:])
    col_ok = cv[2 * d:] == cv[: h - 2 * d]                  # (H-2d, W-2d): column constant over r-d..r+d
    bad = np.zeros((h + 1, w - 2 * d), dtype=np.int32)
    np.cumsum(~row_ok, axis=0, out=bad[1:])
    rows_ok = bad[2 * d + 1:] == bad[: h - 2 * d]           # every row of the window constant
    out[d:h - d, d:w - d] = ~(rows_ok & col_ok)
    return out


def boundary_mask(ids: np.ndarray, d: int) -> np.ndarray:
    """:func:`boundary_mask_numpy` through the C pass when it is built."""
    if _native is None:
        return boundary_mask_numpy(ids, d)
    out = np.empty(ids.shape, dtype=np.uint8)
    _native.band_mask(np.ascontiguousarray(ids, dtype=np.uint32), out, ids.shape[0], ids.shape[1], int(d))
    return out.view(bool)


def add_boundary(ids: np.ndarray, key: np.ndarray, d: int, value: int, void_too: bool = False) -> None:
    """``key[band] += value`` in place; ``band`` is :func:`boundary_mask_numpy` (``| ids == 0`` with ``void_too``).

    Args:
        ids: ``(H, W)`` ids below ``2**32``.
        key: Writable C-contiguous int16/int32/int64 array of ``H * W`` items (any shape).
        d: Band width, ``>= 1``.
        value: Added to ``key`` on the band.
        void_too: Also add on every pixel of id 0.
    """
    h, w = ids.shape
    if _native is not None and key.flags.c_contiguous and key.dtype in (np.int16, np.int32, np.int64):
        src = np.ascontiguousarray(ids, dtype=np.uint32) if ids.dtype != np.uint32 else np.ascontiguousarray(ids)
        _native.boundary_add(src, key.reshape(-1).view(np.uint8), key.dtype.itemsize, h, w, int(d), int(value),
                             bool(void_too))
        return
    band = boundary_mask_numpy(ids.reshape(h, w), d).reshape(-1)
    if void_too:
        band |= ids.reshape(-1) == 0
    flat = key.reshape(-1)
    flat[band] += value
