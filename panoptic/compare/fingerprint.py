"""Content fingerprints for ``panoptic compare``'s checkpoint cache: the data's bytes and the code's.

A cached checkpoint may be reused only if nothing that determines its weights changed. The data part hashes the
bytes of every file training reads (the JSON, every image and every PNG); hashing is incremental (1 MiB blocks)
and each file's SHA-256 is remembered by its path and ``stat`` (size, mtime, and also ctime and inode, which no
edit can restore: an edit that keeps the size and resets the mtime is still seen) in ``<cache>/file-hashes.json``,
so a rerun on unchanged data only ``stat``s the files. The code part is the package version plus a SHA-256 of the
package's own source files (``*.py``, ``*.c``): an edited install (a development checkout, a patched fusion rule)
gets new weights even when its version string is unchanged.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = Path(d, "a.txt").write_bytes(b"abc")
    ...     hashes = FileHashes(Path(d, "hashes.json"))
    ...     hashes.digest(Path(d, "a.txt"))[:12]
    'ba7816bf8f01'
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_write_text

# Machinery of `panoptic compare` (the package exports the API: CompareConfig, run_compare, CompareResult).
__all__: list[str] = []

_BLOCK = 1 << 20


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


class FileHashes:
    """SHA-256 of files, remembered by ``(absolute path, size, mtime, ctime, inode)`` in a JSON file.

    Args:
        path: The JSON file (read if present; a corrupt one is ignored and rewritten).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: dict[str, list[Any]] = {}  # path -> [stamp, digest]
        self._dirty = False
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                self._known = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 2}
        except (OSError, ValueError):
            pass  # no cache yet, or unreadable: every file is hashed again

    def digest(self, path: Path) -> str:
        """The file's SHA-256 (hex), from the cache when its ``stat`` stamp is unchanged.

        Raises:
            OSError: If the file cannot be read.
        """
        key = str(Path(path).resolve())
        st = os.stat(key)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = self._known.get(key)
        if known is not None and known[0] == stamp:
            return str(known[1])
        digest = _sha256_file(Path(key))
        self._known[key] = [stamp, digest]
        self._dirty = True
        return digest

    def save(self) -> None:
        """Write the cache (atomically) if a file was hashed."""
        if self._dirty:
            atomic_write_text(self.path, json.dumps(self._known, separators=(",", ":")))
            self._dirty = False


def data_fingerprint(files: Iterable[Path], hashes: FileHashes) -> str:
    """SHA-256 over the file names and content digests of ``files``, in the given order (the dataset's); where
    the files live does not matter, so a moved data folder keeps its fingerprint."""
    h = hashlib.sha256()
    for path in files:
        h.update(Path(path).name.encode() + b"\0")
        h.update(hashes.digest(Path(path)).encode())
    return h.hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """``"<version>+<SHA-256 of the package's *.py and *.c files>"`` (16 hex digits), computed once per process."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".c") and p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return f"{__version__}+{h.hexdigest()[:16]}"
