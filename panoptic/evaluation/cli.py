"""``panoptic evaluate``: PQ of COCO-panoptic prediction files against ground truth.

Wire it into a top-level parser with :func:`register`::

    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args()
    raise SystemExit(args.func(args))
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..engine.runlog import add_progress_argument
from ..errors import run_command
from ..threads import add_threads_argument

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``).

    Returns:
        The new subparser (its ``func`` default is :func:`run`).
    """
    p = subparsers.add_parser(
        "evaluate", help="panoptic quality (PQ/SQ/RQ) of COCO-panoptic predictions",
        description="Panoptic quality of COCO-panoptic predictions (JSON + PNG folder) against ground truth, "
                    "with panopticapi's exact rules; prints All/Things/Stuff and per-class tables.")
    p.add_argument("--gt-json", required=True, type=Path, help="ground-truth COCO-panoptic JSON")
    p.add_argument("--gt-folder", type=Path, default=None, help="ground-truth PNG folder (default: JSON path "
                   "without .json)")
    p.add_argument("--pred-json", required=True, type=Path, help="prediction COCO-panoptic JSON")
    p.add_argument("--pred-folder", type=Path, default=None, help="prediction PNG folder (default: JSON path "
                   "without .json)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results to this JSON file")
    p.add_argument("--workers", type=int, default=None, help="processes (default: --threads)")
    add_threads_argument(p, "(worker processes unless --workers is given)")
    add_progress_argument(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; returns the exit status (0, or 2 on bad input)."""
    from ..engine.runlog import progress_enabled
    from ..threads import default_threads
    from .pq import format_pq_results, pq_compute

    workers = args.workers or args.threads or default_threads()
    try:
        results = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                             workers=workers, progress=progress_enabled(args.progress))
    except ValueError as e:
        print(f"panoptic evaluate: error: {e}", file=sys.stderr)
        return 2
    print(format_pq_results(results))
    if args.json is not None:
        out = {k: v for k, v in results.items() if k != "per_class"}
        out["per_class"] = {str(k): v for k, v in results["per_class"].items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m panoptic.evaluation.cli evaluate ...``."""
    parser = argparse.ArgumentParser(prog="panoptic")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return run_command(args.command, lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
