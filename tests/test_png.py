"""PNG id decoding (:mod:`panoptic.png`): every decoder gives Pillow's pixels, on every PNG filter type."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import require_native
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from panoptic import png
from panoptic.formats import id2rgb

native = require_native("panoptic._png")


# ------------------------------------------------------------------------------ a PNG writer with chosen filters
def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_rows(img: np.ndarray, filters: list[int]) -> bytes:
    """Scanlines of ``img`` ``(H, W, bpp)`` uint8, row ``y`` filtered with ``filters[y]`` (PNG spec §9).

    Filtering only reads the original image, so it vectorizes; decoding is the sequential direction."""
    h, w, bpp = img.shape
    x = img.reshape(h, w * bpp).astype(np.int64)
    up = np.vstack([np.zeros((1, w * bpp), np.int64), x[:-1]])
    left = np.hstack([np.zeros((h, bpp), np.int64), x[:, :-bpp]])
    upleft = np.hstack([np.zeros((h, bpp), np.int64), up[:, :-bpp]])
    pred = {0: 0 * x, 1: left, 2: up, 3: (left + up) // 2, 4: _paeth(left, up, upleft)}
    rows = [bytes([f]) + ((x[y] - pred[f][y]) % 256).astype(np.uint8).tobytes() for y, f in enumerate(filters)]
    return b"".join(rows)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_png(path: Path, img: np.ndarray, filters: list[int], idat_parts: int = 1, interlace: int = 0) -> Path:
    h, w, bpp = img.shape
    colour = {3: 2, 4: 6}[bpp]
    stream = zlib.compress(_filter_rows(img, filters), 6)
    step = max(1, -(-len(stream) // idat_parts))
    idats = b"".join(_chunk(b"IDAT", stream[i:i + step]) for i in range(0, len(stream), step))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, interlace)
    path.write_bytes(png.PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + idats + _chunk(b"IEND", b""))
    return path


def _expected(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.int64)
    return (x[..., 0] + 256 * x[..., 1] + 65536 * x[..., 2]).reshape(-1)


def _blocks(rng: np.random.Generator, h: int, w: int, bpp: int, block: int) -> np.ndarray:
    """Piecewise-constant image (what panoptic PNGs look like): exercises the constant-run shortcuts."""
    colours = rng.integers(0, 256, (6, bpp), dtype=np.uint8)
    labels = rng.integers(0, 6, (-(-h // block), -(-w // block))).repeat(block, 0).repeat(block, 1)[:h, :w]
    return colours[labels]


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("bpp", [3, 4])
@pytest.mark.parametrize("kind", ["noise", "blocks"])
def test_every_filter_type_matches_pillow(tmp_path, bpp, kind):
    rng = np.random.default_rng(bpp)
    h, w = 40, 37  # odd width: the 8-pixel shortcuts end in a partial run
    img = rng.integers(0, 256, (h, w, bpp), dtype=np.uint8) if kind == "noise" else _blocks(rng, h, w, bpp, 9)
    filters = [y % 5 for y in range(h)]  # every type after every type
    path = _write_png(tmp_path / "f.png", img, filters)
    got = png._decode_native(path, None)
    assert got is not None and got[1] == (h, w)
    assert np.array_equal(got[0], _expected(img))
    assert np.array_equal(got[0], png._decode_public(path)[0])


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 40), bpp=st.sampled_from([3, 4]), block=st.integers(1, 20),
       seed=st.integers(0, 2**16), data=st.data())
def test_native_decode_property(tmp_path_factory, h, w, bpp, block, seed, data):
    rng = np.random.default_rng(seed)
    img = _blocks(rng, h, w, bpp, block)
    if data.draw(st.booleans()):  # sprinkle noise so runs break at arbitrary places
        noise = rng.random((h, w)) < 0.05
        img[noise] = rng.integers(0, 256, (int(noise.sum()), bpp), dtype=np.uint8)
    filters = data.draw(st.lists(st.integers(0, 4), min_size=h, max_size=h))
    path = _write_png(tmp_path_factory.mktemp("p") / "p.png", img, filters, idat_parts=data.draw(st.integers(1, 3)))
    got = png._decode_native(path, None)
    assert got is not None and got[1] == (h, w)
    assert np.array_equal(got[0], _expected(img))


def test_pillow_written_pngs_and_output_buffer(tmp_path):
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 1 << 24, 6)[rng.integers(0, 6, (9, 13))].repeat(8, 0).repeat(8, 1)  # 72x104 blocks
    noisy = rng.integers(0, 1 << 24, (300, 400))  # compresses badly: several IDAT chunks
    for name, ids in (("flat.png", flat), ("noisy.png", noisy)):
        Image.fromarray(id2rgb(ids)).save(tmp_path / name)
        buf = np.zeros(ids.size, dtype=np.uint32)
        got, size = png._decode_native(tmp_path / name, buf)
        assert got is buf and size == ids.shape and np.array_equal(got, ids.reshape(-1))
        direct = png._decode_direct(tmp_path / name, None)
        assert direct is not None and np.array_equal(direct[0], ids.reshape(-1))


def test_other_png_kinds_fall_back_to_pillow(tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 1 << 24, 5)[rng.integers(0, 5, (20, 30))]
    rgb = Image.fromarray(id2rgb(ids))
    rgb.quantize(8).save(tmp_path / "palette.png")
    rgb.convert("L").save(tmp_path / "gray.png")
    rgb.save(tmp_path / "image.tif")
    for name in ("palette.png", "gray.png", "image.tif"):
        assert png._decode_native(tmp_path / name, None) is None
        got, size = png.read_png_ids(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert np.array_equal(got, _expected(np.asarray(im.convert("RGB")))) and size == (20, 30)
    ihdr_interlaced = _write_png(tmp_path / "adam7.png", np.zeros((4, 4, 3), np.uint8), [0] * 4, interlace=1)
    assert png._decode_native(ihdr_interlaced, None) is None


def test_corrupt_data_raises_pillows_error_and_keeps_the_native_path(tmp_path, monkeypatch):
    monkeypatch.setattr(png, "_CHECKED", {})
    img = _blocks(np.random.default_rng(2), 16, 16, 3, 4)
    good = _write_png(tmp_path / "good.png", img, [1] * 16)
    # Filter type 7 does not exist: the C pass rejects it, Pillow then raises its own error.
    raw = bytearray(_filter_rows(img, [1] * 16))
    raw[0] = 7
    bad = tmp_path / "bad.png"
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    bad.write_bytes(png.PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(raw)))
                    + _chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="filter type in row 0"):
        native.unfilter_ids(bytes(raw), np.zeros(256, np.uint32), 16, 16, 3)
    with pytest.raises((OSError, SyntaxError, ValueError)):
        png.read_png_ids(bad)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(OSError):
        png.read_png_ids(truncated)
    with pytest.raises(OSError):
        png.read_png_ids(tmp_path / "missing.png")
    got, _ = png.read_png_ids(good)  # bad files never switched the native decoder off
    assert np.array_equal(got, _expected(img)) and png._CHECKED == {"native": True}
    assert png.decoder_name().startswith("native")


def test_unfilter_ids_checks_sizes():
    with pytest.raises(ValueError, match="expected 14"):
        native.unfilter_ids(b"\x00" * 13, np.zeros(4, np.uint32), 2, 2, 3)
    with pytest.raises(ValueError, match="too small"):
        native.unfilter_ids(b"\x00" * 14, np.zeros(3, np.uint32), 2, 2, 3)
    with pytest.raises(ValueError, match="bpp"):
        native.unfilter_ids(b"\x00" * 10, np.zeros(4, np.uint32), 2, 2, 2)
    with pytest.raises(TypeError):
        native.unfilter_ids(b"\x00" * 14, b"\x00" * 16, 2, 2, 3)  # read-only output


def test_a_disagreeing_shortcut_is_dropped_after_one_check(tmp_path, monkeypatch):
    img = _blocks(np.random.default_rng(3), 8, 8, 3, 3)
    path = _write_png(tmp_path / "p.png", img, [4] * 8)

    def wrong(p, out):
        ids, size = png._decode_public(p)
        return ids + 1, size

    monkeypatch.setattr(png, "_CHECKED", {})
    monkeypatch.setattr(png, "_DECODERS", (("native", wrong), ("direct", png._decode_direct)))
    got, _ = png.read_png_ids(path)
    assert np.array_equal(got, _expected(img))
    assert png._CHECKED == {"native": False, "direct": True} and png.decoder_name() == "direct"


def test_zlib_inflate_when_libdeflate_is_missing(tmp_path, monkeypatch):
    img = _blocks(np.random.default_rng(4), 30, 50, 3, 7)
    path = _write_png(tmp_path / "p.png", img, [y % 5 for y in range(30)], idat_parts=3)
    monkeypatch.setattr(png, "_deflate", None)
    monkeypatch.setattr(png, "_CHECKED", {})
    got = png._decode_native(path, None)
    assert got is not None and np.array_equal(got[0], _expected(img))
    assert png.decoder_name() == "native+zlib"


def test_without_the_extension_pillow_decodes(tmp_path, monkeypatch):
    img = _blocks(np.random.default_rng(5), 10, 12, 3, 4)
    path = _write_png(tmp_path / "p.png", img, [2] * 10)
    monkeypatch.setattr(png, "_native", None)
    monkeypatch.setattr(png, "_CHECKED", {})
    assert png.decoder_name() == "direct"
    got, _ = png.read_png_ids(path)
    assert np.array_equal(got, _expected(img)) and png._CHECKED == {"direct": True}
