"""User-facing errors: the one base class the command line turns into a one-line message and exit code 2.

Library code raises a subclass of `PanopticError` (or an `OSError` from the file system) for anything a user
can fix: a bad argument, a bad file, a checkpoint that does not fit. `panoptic.cli.main` prints
``panoptic COMMAND: error: MESSAGE`` and returns 2 instead of a traceback. Each subclass also derives from
`ValueError`, so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

__all__ = [
    "CheckpointError",
    "PanopticError",
]

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT = 130


class PanopticError(Exception):
    """A problem the user can fix; the message names it and the fix."""


class CheckpointError(PanopticError, ValueError):
    """A checkpoint that cannot be used; the message names the file, the problem and the fix."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C ended a command after it saved what it had; the message says what was kept and how to continue."""


_OS_FIXES = {
    errno.ENOSPC: "free some disk space or write somewhere else",
    errno.EDQUOT: "free some of your disk quota or write somewhere else",
    errno.EFBIG: "the file exceeds the file-size limit (ulimit -f); raise it or write somewhere else",
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOENT: "check the path",
    errno.EISDIR: "pass a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
}


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError``: the path, the cause and what to do about it.

    Example:
        >>> describe_os_error(OSError(28, "No space left on device", "out/x.png"))
        'out/x.png: No space left on device (free some disk space or write somewhere else)'
    """
    cause = e.strerror or str(e) or type(e).__name__
    where = os.fsdecode(e.filename) if e.filename is not None else None
    fix = _OS_FIXES.get(e.errno) if e.errno is not None else None
    text = f"{where}: {cause}" if where else cause
    return f"{text} ({fix})" if fix else text


def run_command(command: str, func: Callable[[], int | None]) -> int:
    """Run one subcommand the way every entry point does: its exit status, or one line on stderr.

    ``PanopticError`` and ``OSError`` print ``panoptic COMMAND: error: MESSAGE`` and return 2; Ctrl-C prints
    ``panoptic COMMAND: MESSAGE`` (:class:`Interrupted`) or ``panoptic COMMAND: interrupted`` and returns 130.
    Anything else is a bug and propagates with its traceback.

    Args:
        command: The subcommand's name, for the message.
        func: Runs it; returns the exit status (``None`` means 0).
    """
    try:
        return int(func() or 0)
    except PanopticError as e:
        print(f"panoptic {command}: error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"panoptic {command}: error: {describe_os_error(e)}", file=sys.stderr)
    except KeyboardInterrupt as e:
        text = str(e) if isinstance(e, Interrupted) and str(e) else "interrupted"
        print(f"\npanoptic {command}: {text}", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 2
