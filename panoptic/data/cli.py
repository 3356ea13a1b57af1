"""The ``panoptic synth`` command: write a synthetic COCO-panoptic dataset.

``panoptic synth OUT --n 200 --size 256 [--seed 0] [--val-fraction 0.2] [--image-format png]``

The main CLI wires it in with :func:`register`; ``python -m panoptic.data.cli synth ...`` works too.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand (``func=run``) to a subparsers object."""
    p = subparsers.add_parser(
        "synth", help="write a synthetic COCO-panoptic dataset",
        description="Write N deterministic synthetic scenes (4 stuff + 4 thing categories, crowd and void "
                    "regions) as COCO-panoptic: OUT/images, OUT/panoptic and OUT/panoptic_<split>.json.")
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--n", type=int, default=200, help="number of scenes (default: 200)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; the same seed writes the same bytes (default: 0)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of scenes in the 'val' split; 0 writes only 'train' (default: 0.2)")
    p.add_argument("--image-format", choices=("png", "jpg"), default="png",
                   help="image encoding (default: png)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``synth``; returns the exit status (2 on bad arguments)."""
    from .synthetic import write_synthetic_dataset

    if args.n < 1:
        print(f"panoptic synth: --n must be >= 1, got {args.n}.", file=sys.stderr)
        return 2
    if args.size < 16:
        print(f"panoptic synth: --size must be >= 16, got {args.size}.", file=sys.stderr)
        return 2
    if not 0.0 <= args.val_fraction < 1.0:
        print(f"panoptic synth: --val-fraction must be in [0, 1), got {args.val_fraction}.", file=sys.stderr)
        return 2
    f = args.val_fraction
    splits = {"train": 1.0 - f, "val": f} if f > 0 else {"train": 1.0}
    start = time.perf_counter()
    paths = write_synthetic_dataset(args.out, args.n, args.size, args.seed, splits,
                                    image_format=args.image_format)
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n} scenes of {args.size}x{args.size} to {args.out} in {elapsed:.1f} s "
          f"({1000 * elapsed / args.n:.0f} ms/scene)")
    for split, path in paths.items():
        print(f"  {split}: {path}")
    first = next(iter(paths.values()))
    print(f"load with: CocoPanopticDataset('{args.out / 'images'}', '{first}', '{args.out / 'panoptic'}')")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point with only the ``synth`` subcommand."""
    parser = argparse.ArgumentParser(prog="panoptic")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
