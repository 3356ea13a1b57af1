"""The `panoptic` command. Thin: every subcommand calls library functions."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__
from .threads import add_threads_argument, applied_threads

# The console entry point (pyproject's [project.scripts]); nothing here is imported by users.
__all__: list[str] = []


def _register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run every fusion family on a synthetic scene and write a side-by-side PNG",
                       description="Build a synthetic scene, simulate imperfect head outputs of each fusion family "
                                   "(semantic logits + detections, queries, centre offsets), fuse them with "
                                   "HeuristicFusion, UPSNetFusion, MaskFormerFusion and CentreOffsetFusion, score "
                                   "each with PQ and write the results (COCO-panoptic PNG + JSON, coloured maps, "
                                   "side_by_side.png).")
    p.add_argument("--out", default="panoptic-demo", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels, >= 16 (default: %(default)s)")
    add_threads_argument(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .engine.config import ConfigError

    if args.size < 16:
        raise ConfigError(f"--size must be at least 16, got {args.size}.")
    with applied_threads(args.threads):
        report = run_demo(args.out, seed=args.seed, size=args.size)
    print(f"scene seed {args.seed}, {args.size}x{args.size}")
    print(f"{'strategy':<12} {'PQ':>6} {'PQ_th':>6} {'PQ_st':>6} {'segments':>8} {'unknown px':>10} {'ms':>7}")
    for name, res in report.results.items():
        s = report.summary[name]
        print(f"{name:<12} {s['PQ']:>6.1f} {s['PQ_th']:>6.1f} {s['PQ_st']:>6.1f} {res.num_segments:>8} "
              f"{int(res.unknown_mask.sum()):>10} {report.timings_ms[name]:>7.1f}")
    print(f"wrote {len(report.files)} files to {report.out_dir}/ (see side_by_side.png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="panoptic", description="Panoptic segmentation with pluggable fusion "
                                     "strategies: UPSNet's panoptic head and the heuristic baselines.")
    parser.add_argument("--version", action="version", version=f"panoptic {__version__} ({_native_summary()})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_demo(sub)
    from .compare.cli import register as register_compare
    from .data.cli import register as register_synth
    from .engine.cli import register as register_engine
    from .evaluation.cli import register as register_evaluate

    register_synth(sub)
    register_engine(sub)
    register_evaluate(sub)
    register_compare(sub)
    _register_export(sub)
    return parser


def _register_export(sub: argparse._SubParsersAction) -> None:
    from .export_cli import register

    register(sub)


def _native_summary() -> str:
    """Which optional C extensions this install has (a pip install without a C compiler skips them)."""
    from ._ops.switch import native_kernels
    from .png import decoder_name

    fusion = "C" if native_kernels() is not None else "torch (no C extension)"
    return f"fusion passes: {fusion}; PNG decoder: {decoder_name()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `panoptic` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    from .errors import run_command

    # User mistakes and file-system failures end in one line and exit code 2, Ctrl-C in one line and 130.
    return run_command(args.command, lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
