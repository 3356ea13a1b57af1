"""Ctrl-C as a request to stop at the next safe point (the end of a training iteration), not at once.

The training loop polls :attr:`StopRequest.requested` after every iteration; the first Ctrl-C only sets it and
says so on stderr, a second one raises ``KeyboardInterrupt`` at once (the user insists; nothing is saved then).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType


class StopRequest:
    """Context manager that turns the first SIGINT into a flag.

    Outside the main thread (where Python cannot install signal handlers) it does nothing and Ctrl-C keeps
    raising ``KeyboardInterrupt`` as usual.

    Args:
        what: Said on the first Ctrl-C, e.g. ``"stopping after this iteration"``.
    """

    def __init__(self, what: str = "stopping after this iteration") -> None:
        self.what = what
        self.requested = False
        self._previous: object = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{self.what} (Ctrl-C again to stop at once, without saving)", file=sys.stderr, flush=True)

    def install(self) -> StopRequest:
        """Catch SIGINT from now on (main thread only); returns ``self``."""
        if threading.current_thread() is threading.main_thread() and not self._installed:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def restore(self) -> None:
        """Put the previous SIGINT handler back."""
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._installed = False

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()
