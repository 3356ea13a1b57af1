"""The ``panoptic synth`` command: write a synthetic COCO-panoptic dataset.

``panoptic synth OUT --n 200 --size 256 [--seed 1] [--val-fraction 0.2] [--image-format png]``

The default seed is not the synthetic benchmark's (:data:`BENCHMARK_SEED`), so that a dataset written for
evaluation does not repeat the scenes ``panoptic train`` and ``panoptic compare`` train on; asking for that seed
works and prints a warning.

The main CLI wires it in with :func:`register`; ``python -m panoptic.data.cli synth ...`` works too.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..engine.config import DataConfig
from ..errors import run_command
from ..threads import add_threads_argument, applied_threads

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []

#: The scene seed of the built-in synthetic benchmark (``panoptic train`` / ``compare`` without ``--data``).
BENCHMARK_SEED = DataConfig().synthetic_seed
#: ``panoptic synth``'s default seed: any other than the benchmark's.
DEFAULT_SEED = BENCHMARK_SEED + 1


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand (``func=run``) to a subparsers object."""
    p = subparsers.add_parser(
        "synth", help="write a synthetic COCO-panoptic dataset",
        description="Write N deterministic synthetic scenes (4 stuff + 4 thing categories, crowd and void "
                    "regions) as COCO-panoptic: OUT/images, OUT/panoptic and OUT/panoptic_<split>.json.")
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--n", type=int, default=200, help="number of scenes (default: 200)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"base seed; the same seed writes the same bytes (default: %(default)s; {BENCHMARK_SEED} "
                        "writes the scenes the synthetic benchmark trains on)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of scenes in the 'val' split; 0 writes only 'train' (default: 0.2)")
    p.add_argument("--image-format", choices=("png", "jpg"), default="png",
                   help="image encoding (default: png)")
    add_threads_argument(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``synth``; returns the exit status (bad arguments raise a ``ConfigError``: one line, exit 2)."""
    from ..engine.config import ConfigError
    from .synthetic import write_synthetic_dataset

    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}.")
    if args.size < 16:
        raise ConfigError(f"--size must be >= 16, got {args.size}.")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {args.val_fraction}.")
    if args.seed == BENCHMARK_SEED:
        print(f"panoptic synth: warning: seed {BENCHMARK_SEED} draws the synthetic benchmark's scenes, which "
              "`panoptic train` and `panoptic compare` train on by default; evaluating a model trained there on "
              f"them measures training data. Use another --seed (default {DEFAULT_SEED}) for held-out scenes.",
              file=sys.stderr)
    f = args.val_fraction
    splits = {"train": 1.0 - f, "val": f} if f > 0 else {"train": 1.0}
    start = time.perf_counter()
    with applied_threads(args.threads):
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
    return run_command(args.command, lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
