"""`panoptic compare`'s checkpoint cache is keyed on content: changed bytes (even with the size and mtime kept),
another thread count or other code mean new weights; a rerun on unchanged data hashes nothing; a cached
checkpoint of another model, or one that does not load, is refused with the advice to rerun with --retrain."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from panoptic.cli import main
from panoptic.compare import CompareConfig
from panoptic.compare import fingerprint as fp
from panoptic.compare.fingerprint import FileHashes, code_fingerprint
from panoptic.compare.training import cache_key
from panoptic.data import CocoPanopticDataset, write_synthetic_dataset
from panoptic.engine.config import DataConfig


def _files(root):
    ds = CocoPanopticDataset(root / "images", root / "panoptic_train.json", root / "panoptic")
    return [ds.panoptic_json] + [p for item in ds.items for p in (item.image_path, item.png_path)]


def _rewrite_keeping_size_and_mtime(path, data: bytes) -> None:
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


@pytest.fixture
def data(tmp_path):
    write_synthetic_dataset(tmp_path / "data", 6, 32, seed=1, splits={"train": 4, "val": 2})
    return tmp_path / "data"


def test_key_follows_the_bytes_even_when_size_and_mtime_are_kept(data, tmp_path):
    cfg = CompareConfig(iterations=10, data=DataConfig(root=str(data))).train_config("upsnet", "x")
    hashes = FileHashes(tmp_path / "hashes.json")

    def key(threads=1):
        return cache_key(cfg, _files(data), hashes, threads=threads, device="cpu")

    first = key()
    assert key() == first and key(threads=2) != first
    image = sorted((data / "images").iterdir())[0]
    _rewrite_keeping_size_and_mtime(image, bytes(255 - b for b in image.read_bytes()))  # inverted bytes
    inverted = key()
    assert inverted != first
    js = data / "panoptic_train.json"
    text = js.read_text()
    assert '"seed":1' in text
    _rewrite_keeping_size_and_mtime(js, text.replace('"seed":1', '"seed":2').encode())
    assert key() != inverted
    hashes.save()
    assert set(json.loads((tmp_path / "hashes.json").read_text())) == {str(p.resolve()) for p in _files(data)}


def test_a_rerun_on_unchanged_data_only_stats_the_files(data, tmp_path, monkeypatch):
    files = _files(data)
    hashes = FileHashes(tmp_path / "hashes.json")
    digest = fp.data_fingerprint(files, hashes)
    hashes.save()
    read = []
    real = fp._sha256_file
    monkeypatch.setattr(fp, "_sha256_file", lambda p: read.append(p) or real(p))
    assert fp.data_fingerprint(files, FileHashes(tmp_path / "hashes.json")) == digest and read == []
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # a copy hashes again (new inodes) but has the same fingerprint
    assert fp.data_fingerprint(_files(moved), FileHashes(tmp_path / "hashes.json")) == digest
    assert len(read) == len(files)
    (tmp_path / "hashes.json").write_text("{not json")  # a corrupt hash cache is rebuilt, not an error
    assert fp.data_fingerprint(files, FileHashes(tmp_path / "hashes.json")) == digest


def test_code_fingerprint_names_the_version_and_the_sources():
    from panoptic import __version__

    version, _, digest = code_fingerprint().partition("+")
    assert version == __version__ and len(digest) == 16 and int(digest, 16) >= 0


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A tiny `panoptic compare` of UPSNet on user data, with its checkpoint cache."""
    tmp = tmp_path_factory.mktemp("cmp")
    write_synthetic_dataset(tmp / "data", 6, 48, seed=1, splits={"train": 4, "val": 2})
    args = ["compare", "--data", str(tmp / "data"), "--quick", "--models", "upsnet", "--iterations", "2",
            "--eval-images", "1", "--out", str(tmp / "out"), "--cache", str(tmp / "ckpt"), "--threads", "1",
            "--no-progress"]
    assert main(args) == 0
    return tmp, args


def _cached(tmp, network):
    (path,) = (tmp / "ckpt").glob(f"{network}-*/model_final.pt")
    return path


def _other_model_checkpoint(tmp):
    """An UPSNet-C checkpoint of the same data's categories (untrained: only its recorded model matters)."""
    from panoptic.engine.checkpoint import build_named_model, read_checkpoint, save_checkpoint

    meta = read_checkpoint(_cached(tmp, "upsnet"))["meta"]
    model = build_named_model("upsnet_c_cpu_small", meta.table, meta.model_kwargs)
    return save_checkpoint(tmp / "other.pt", model, model_name="upsnet_c_cpu_small", table=meta.table,
                           model_kwargs=meta.model_kwargs, config=meta.config, iteration=meta.iteration)


def test_a_checkpoint_of_another_model_in_the_cache_is_refused(compared, capsys):
    tmp, args = compared
    upsnet = _cached(tmp, "upsnet")
    saved = upsnet.read_bytes()
    try:
        shutil.copy(_other_model_checkpoint(tmp), upsnet)
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "cached checkpoint of UPSNet cannot be used" in err and "'upsnet_c_cpu_small' model, not UPSNet's" in err
        assert "--retrain" in err
    finally:
        upsnet.write_bytes(saved)


def test_a_cached_checkpoint_that_fails_to_load_says_to_retrain(compared, capsys):
    tmp, args = compared
    upsnet = _cached(tmp, "upsnet")
    saved = upsnet.read_bytes()
    upsnet.write_bytes(saved[:1000])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Rerun with --retrain" in err
    upsnet.write_bytes(saved)
    assert main(args) == 0 and "reused" in capsys.readouterr().out  # the intact cache is reused
