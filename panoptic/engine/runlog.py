"""Run logging: a JSONL metrics file (one line per logged iteration and per evaluation), optional TensorBoard
events, and a progress bar with the loss and ETA. Everything is a no-op on ranks other than 0."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from ..atomic import append_line

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []


def progress_enabled(requested: bool | None) -> bool:
    """Whether to draw progress bars, tqdm's convention: ``None`` (not asked) means only when stderr is a
    terminal, so pipes (``panoptic evaluate | cat``) and log files get none; ``True``/``False`` as asked."""
    if requested is not None:
        return bool(requested)
    return sys.stderr.isatty()


def add_progress_argument(parser: Any) -> None:
    """Add ``--progress`` / ``--no-progress`` (``dest="progress"``, default ``None``: bars on a terminal only)."""
    import argparse

    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: only when stderr is a terminal)")


def format_eta(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class MetricsLogger:
    """Append records to ``out_dir/metrics.jsonl`` and, when installed, TensorBoard.

    Args:
        out_dir: Run folder.
        enabled: Write anything at all (rank 0 only).
        tensorboard: Also write TensorBoard events (skipped when ``tensorboard`` is not installed).
    """

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line; numeric top-level and ``losses`` / ``lr`` values also go to TensorBoard."""
        if not self.enabled:
            return
        append_line(self.path, json.dumps(record, separators=(",", ":")))  # whole lines only, even on a full disk
        if self.tb is not None:
            step = int(record.get("iteration", 0))
            kind = record.get("type", "train")
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "iteration":
                    self.tb.add_scalar(f"{kind}/{key}", value, step)
                elif isinstance(value, dict) and key in ("losses", "lr"):
                    for k, v in value.items():
                        self.tb.add_scalar(f"{kind}/{key}/{k}", v, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.tb is not None:
            self.tb.close()


class ProgressBar:
    """tqdm bar with the loss and ETA (when installed and :func:`progress_enabled`); ``write`` prints lines
    either way.

    Args:
        total: Total iterations.
        initial: Iterations already done (resume).
        enabled: Print anything at all (rank 0 only).
        bar: Show a bar (else :meth:`write` lines are the only output); ``None``: when stderr is a terminal.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, bar: bool | None = None) -> None:
        self.bar = None
        self.enabled = enabled
        if enabled and progress_enabled(bar):
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, unit="it")

    @property
    def active(self) -> bool:
        """Whether a bar is shown."""
        return self.bar is not None

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance; ``postfix`` (e.g. ``loss=1.23``) is shown beside the ETA."""
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, line: str) -> None:
        """Print a line without breaking the bar (nothing when disabled)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
