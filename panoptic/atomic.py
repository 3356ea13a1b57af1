"""Atomic file output: the one way the library writes a file.

Every output (predictions, JSON, CSV, Markdown, figures, checkpoints, caches) goes through
:func:`atomic_write`: the data goes to a temporary file in the destination's folder, is flushed to disk
(``fsync``), renamed onto the destination, and the folder is fsynced so the rename survives a power cut.
Readers see the old file or the new one, never a mix; a failure (disk full, file too large, read-only
folder, Ctrl-C) leaves the old file untouched and no temporary file behind, and is raised as an
``OSError`` that names the destination (see :func:`panoptic.errors.describe_os_error`).

Outputs made of several files use :class:`AtomicFiles`: every file is written to its temporary name first,
and only when all of them exist are they renamed into place, the *index* files (e.g. ``panoptic.json``,
which names the PNGs) last. :func:`append_line` appends to a log and cuts a failed append back off.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = atomic_write_bytes(f"{d}/a.json", b"{}")
    ...     with AtomicFiles() as files:
    ...         _ = files.write_bytes(f"{d}/pngs/1.png", b"png")
    ...         _ = files.write_bytes(f"{d}/index.json", b"[1]", index=True)
    ...     sorted(p.name for p in Path(d).rglob("*"))
    ['1.png', 'a.json', 'index.json', 'pngs']
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []

Writer = Callable[[BinaryIO], None]


def _write_all(f: BinaryIO, data: bytes) -> None:
    """``f.write(data)``: the one low-level write of the module (the fault-injection tests patch it)."""
    f.write(data)


def _temporary_name(path: Path) -> Path:
    # Hidden, unique per process and call, in the destination's folder so that the rename stays on one file system.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _named(e: OSError, path: Path) -> OSError:
    """The same error, naming ``path`` (the destination, not the temporary file) for the one-line message."""
    return type(e)(e.errno, e.strerror or str(e), str(path)) if e.errno is not None else e


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on folders
        pass
    finally:
        os.close(fd)


class _BufferedWriter:
    """A file object that passes every write through :func:`_write_all` (so every byte has one choke point)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: OSError | None = None  # kept: torch.save reports a failed write as a RuntimeError

    def write(self, data: bytes) -> int:
        try:
            _write_all(self._f, bytes(data))
        except OSError as e:
            self.error = e
            raise
        return len(data)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True


def _write_temporary(path: Path, write: Writer) -> Path:
    """Write ``path``'s temporary file completely (fsynced) and return its name; nothing is left on failure."""
    tmp = _temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:  # plain open: the file gets the usual umask permissions
            out = _BufferedWriter(f)
            try:
                write(out)  # type: ignore[arg-type]
            except Exception as e:
                if out.error is not None and out.error is not e:
                    raise out.error from e  # the disk-full / file-too-large cause, not a serializer's wrapper
                raise
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _named(e, path) from e
        raise
    return tmp


def atomic_write(path: str | Path, write: Writer) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file beside ``path``, which is then renamed onto it.

    Args:
        path: Destination (its folder is created).
        write: Called once with a binary file object to write the content to.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: If the file cannot be written (the message names ``path``); ``path`` is then unchanged.
    """
    path = Path(path)
    tmp = _write_temporary(path, write)
    try:
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _named(e, path) from e
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a newline is added) to a log such as ``metrics.jsonl``, all or nothing.

    A log is appended to, not rewritten, so it cannot be replaced atomically; instead a failed append is cut
    back to the file's previous length, so the file always holds whole lines.

    Raises:
        OSError: If the line cannot be written (the message names ``path``).
    """
    path = Path(path)
    data = (line + "\n").encode("utf-8")
    try:
        with open(path, "ab") as f:
            start = f.tell()
            try:
                _write_all(f, data)
                f.flush()
            except BaseException:
                f.truncate(start)
                raise
    except OSError as e:
        raise _named(e, path) from e


class AtomicFiles:
    """Several files that appear together: written to temporary names, renamed into place by :meth:`commit`.

    Until :meth:`commit`, the previous outputs are untouched; :meth:`discard` (or leaving the ``with`` block with
    an exception) deletes the temporary files. :meth:`commit` first removes the previous *index* files that it
    replaces, then renames the other files, then the index files, so an index never names a file that is
    missing or from another run.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     files = AtomicFiles()
        ...     _ = files.write_bytes(f"{d}/x.txt", b"x")
        ...     before = sorted(p.name for p in Path(d).iterdir() if not p.name.startswith("."))
        ...     _ = files.commit()
        ...     before, sorted(p.name for p in Path(d).iterdir())
        ([], ['x.txt'])
    """

    def __init__(self) -> None:
        self._staged: dict[Path, tuple[Path, bool]] = {}  # destination -> (temporary file, is an index)

    @property
    def paths(self) -> list[Path]:
        """The destinations written so far."""
        return list(self._staged)

    def write(self, path: str | Path, write: Writer, *, index: bool = False) -> Path:
        """Write ``path``'s content now, to a temporary name; it appears at ``path`` on :meth:`commit`.

        Args:
            path: Destination.
            write: Fills the file, as in :func:`atomic_write`.
            index: The file names others (it is renamed into place after them).

        Returns:
            ``path``.
        """
        path = Path(path)
        tmp = _write_temporary(path, write)
        old = self._staged.pop(path, None)
        if old is not None:
            old[0].unlink(missing_ok=True)
        self._staged[path] = (tmp, index)
        return path

    def write_bytes(self, path: str | Path, data: bytes, *, index: bool = False) -> Path:
        """:meth:`write` of ``data``."""
        return self.write(path, lambda f: f.write(data), index=index)

    def commit(self) -> list[Path]:
        """Rename every file into place, index files last; returns the destinations.

        Raises:
            OSError: If a rename fails (the message names the file; remaining temporary files are deleted).
        """
        staged = self._staged
        self._staged = {}
        order = [p for p, (_, idx) in staged.items() if not idx] + [p for p, (_, idx) in staged.items() if idx]
        try:
            for path, (_, idx) in staged.items():
                if idx:
                    path.unlink(missing_ok=True)  # no moment where an old index names new files
            for path in order:
                os.replace(staged[path][0], path)
        except OSError as e:
            for tmp, _ in staged.values():
                tmp.unlink(missing_ok=True)
            raise _named(e, path) from e
        for folder in {p.parent for p in order}:
            fsync_dir(folder)
        return order

    def discard(self) -> None:
        """Delete every temporary file; the destinations are untouched."""
        for tmp, _ in self._staged.values():
            tmp.unlink(missing_ok=True)
        self._staged = {}

    def __enter__(self) -> AtomicFiles:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
