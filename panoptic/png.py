"""Decode COCO-panoptic PNGs straight into flat uint32 segment ids, fast.

A 1024x2048 panoptic PNG inflates to 6 MB of nearly constant scanlines; zlib (Pillow, libpng and libspng
all use it) spends ~13 ms on that, libdeflate ~0.3 ms. Decoders, tried in order:

* ``native``: chunks parsed here, IDAT inflated by libdeflate (the ``deflate`` package; zlib if it is
  missing), scanlines reconstructed and packed into ids by the C extension :mod:`panoptic._png`
  (~2 ms). Only 8-bit RGB/RGBA non-interlaced PNGs (every COCO-panoptic PNG) take it, and not inside
  ``panoptic.ops.backend("torch")``, the switch that turns the C kernels off.
* ``direct``: Pillow decodes straight into the output buffer (no extra copy of the pixels).
* ``public``: Pillow's documented API; every other kind of PNG and every error message comes from here.

Each shortcut is checked once per process against the public path on its first image and is never used
again if the two disagree, so a shortcut can make decoding slower but never different.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
from PIL import Image

try:
    from . import _png as _native
except ImportError:  # pragma: no cover - the extension is optional (no C compiler at install time)
    _native = None
try:
    import deflate as _deflate  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _deflate = None

__all__ = [
    "read_png_ids",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHECKED: dict[str, bool] = {}


def _decode_public(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int]]:
    with Image.open(path) as im:
        w, h = im.size
        if im.mode != "RGB":
            im = im.convert("RGB")  # RGBA: alpha dropped, as panopticapi's rgb2id does.
        raw = im.tobytes("raw", "RGBX")
    return np.frombuffer(raw, dtype=np.uint32) & np.uint32(0xFFFFFF), (h, w)


def _buffer(out: np.ndarray | None, n: int) -> np.ndarray:
    ok = out is not None and out.size == n and out.dtype == np.uint32 and out.flags.c_contiguous
    return out if ok else np.empty(n, dtype=np.uint32)


def _decode_direct(path: str | os.PathLike, out: np.ndarray | None) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Pillow's decoder writing into ``out`` (RGB is stored as 4 bytes a pixel: R, G, B, 255); None if not RGB."""
    with Image.open(path) as im:
        if im.mode != "RGB":
            return None
        w, h = im.size
        ids = _buffer(out, h * w)
        im.im = Image.core.map_buffer(ids, (w, h), "raw", 0, ("RGB", 0, 1))
        im.load()
    return np.bitwise_and(ids, np.uint32(0xFFFFFF), out=ids), (h, w)


def _inflate(stream: bytes, size: int) -> bytes | None:
    """The zlib ``stream`` inflated to exactly ``size`` bytes, or None if it does not inflate to that."""
    if _deflate is not None:
        try:
            return _deflate.zlib_decompress(stream, size)
        except Exception:  # corrupt, or another length: the public path gives the real error
            return None
    try:
        raw = zlib.decompress(stream)
    except zlib.error:
        return None
    return raw if len(raw) == size else None


def _decode_native(path: str | os.PathLike, out: np.ndarray | None) -> tuple[np.ndarray, tuple[int, int]] | None:
    """libdeflate + :mod:`panoptic._png`; None for PNGs it does not handle (the next decoder does)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != PNG_SIGNATURE:
        return None
    pos, idat, size, bpp = 8, [], None, 0
    view = memoryview(data)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IHDR":
            w, h = int.from_bytes(data[pos + 8:pos + 12], "big"), int.from_bytes(data[pos + 12:pos + 16], "big")
            # bit depth 8, colour type 2 (RGB) or 6 (RGBA), deflate, filter method 0, no interlace
            depth, colour, rest = data[pos + 16], data[pos + 17], data[pos + 18:pos + 21]
            if depth != 8 or colour not in (2, 6) or rest != b"\x00\x00\x00":
                return None
            size, bpp = (h, w), 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(view[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    if size is None or not idat:
        return None
    h, w = size
    raw = _inflate(idat[0] if len(idat) == 1 else b"".join(idat), h * (1 + bpp * w))
    if raw is None:
        return None
    ids = _buffer(out, h * w)
    _native.unfilter_ids(raw, ids, h, w, bpp)
    return ids, (h, w)


_DECODERS = (("native", _decode_native), ("direct", _decode_direct))


def _available(name: str) -> bool:
    """Whether decoder ``name`` may run: ``native`` needs the C extension, and not ``panoptic.ops.backend("torch")``
    (the switch that turns every C kernel off)."""
    from ._ops.switch import current_backend  # here: panoptic._ops imports the fusions, which import this package

    return name != "native" or (_native is not None and current_backend() != "torch")


def decoder_name() -> str:
    """The decoder :func:`read_png_ids` uses in this process: ``native``, ``direct`` or ``public``.

    ``native`` needs the compiled extension; ``native`` without libdeflate inflates with zlib
    (``native+zlib``), about 5x slower.
    """
    for name, _ in _DECODERS:
        if _available(name) and _CHECKED.get(name) is not False:
            return name + ("+zlib" if name == "native" and _deflate is None else "")
    return "public"


def read_png_ids(path: str | os.PathLike, out: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a COCO-panoptic PNG once into flat ``(H * W,)`` uint32 ids ``R + 256 G + 65536 B``.

    Args:
        path: The PNG (RGB; RGBA loses its alpha, as in panopticapi).
        out: Optional ``(H * W,)`` uint32 buffer to decode into (used if its size fits).

    Returns:
        The flat ids (``out`` itself when it was used) and ``(H, W)``.

    Raises:
        OSError: If the file is missing, unreadable or not an image (Pillow's message).
    """
    for name, fn in _DECODERS:
        ok = _CHECKED.get(name)
        if ok is False or not _available(name):
            continue
        try:
            got = fn(path, out)
        except (OSError, ValueError):  # missing or corrupt file: the public path raises the real error
            got = None
        except Exception:  # a Pillow without the internals we rely on: never try this shortcut again
            got = None
            _CHECKED[name] = False
        if got is None:
            continue  # not a file this path handles
        if ok is None:  # first use in this process: compare with the public path once
            ok = _CHECKED[name] = bool(np.array_equal(got[0], _decode_public(path)[0]))
            if not ok:
                continue
        return got
    return _decode_public(path)
