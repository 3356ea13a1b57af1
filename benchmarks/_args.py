"""Command-line argument types the benchmark scripts share."""

from __future__ import annotations

import argparse


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``"512x1024,1024x2048"`` -> ``((512, 1024), (1024, 2048))``.

    Raises:
        argparse.ArgumentTypeError: A part is not ``HxW`` or is smaller than 32x32 (argparse prints it as a usage
            error).
    """
    sizes = []
    for part in text.split(","):
        try:
            h, w = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad size {part!r}; use HxW, e.g. 512x1024") from None
        if h < 32 or w < 32:
            raise argparse.ArgumentTypeError(f"size {part!r} is too small; use at least 32x32")
        sizes.append((h, w))
    return tuple(sizes)
