"""Run time of the full ``panoptic compare`` (3 seeds) estimated from per-iteration timings.

The full comparison takes most of an hour, too long to run on a shared machine just to time it. This script
runs the default configuration's networks (same models, widths, image size and batch size) for
``--iterations`` training iterations on a small copy of the benchmark (``--scenes`` scenes of the default size,
``--held-out`` of them held out), then extrapolates::

    total = seeds x (sum over networks of iterations x s/iteration  +  held-out images x s/image of evaluation)

where s/image of evaluation is everything of the run that is not training (loading, network passes of every
row, fusions, PQ), divided by the held-out images: an over-estimate. It prints the estimate under the current
load (with ``/proc/loadavg``) and, when a saved quiet run is given (``--saved docs/results/compare.json``, whose
training throughputs were measured on 2 quiet cores), the same formula with the saved throughputs and the saved
evaluation time, i.e. the quiet estimate; the ratio of the two throughputs says how loaded the machine was
(with few ``--iterations`` the first, slow iteration weighs in too: an over-estimate).

Target (issue 17): the default full run (3 seeds) <= 45 minutes on 2 quiet CPU cores; ``--seeds 1`` close to
15 minutes.

Usage::

    python benchmarks/compare_budget.py --saved docs/results/compare.json          # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from panoptic.compare import CompareConfig, run_compare


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=20, help="training iterations timed per network")
    ap.add_argument("--scenes", type=int, default=60, help="scenes of the small benchmark copy")
    ap.add_argument("--held-out", type=int, default=20, help="held-out scenes of the copy (timed evaluation)")
    ap.add_argument("--saved", type=Path, help="results JSON of a saved quiet full run (its training throughputs)")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()

    full = CompareConfig.default()
    with tempfile.TemporaryDirectory() as tmp:
        data = dataclasses.replace(full.data, synthetic_n=args.scenes,
                                   synthetic_val_fraction=args.held_out / args.scenes, cache_dir=f"{tmp}/data")
        probe = dataclasses.replace(full, data=data, iterations=args.iterations, seeds=1, figure_images=0,
                                    out_dir=f"{tmp}/out", cache_dir=f"{tmp}/ckpt", progress=False)
        load_before = _loadavg()
        res = run_compare(probe, log=lambda _: None).results
    n_eval = res["num_images"]
    train = {net: runs[0] for net, runs in res["training"].items()}
    s_per_iter = {net: full.batch_size / t["images_per_second"] for net, t in train.items()}
    eval_s_per_image = max(0.0, res["wall_s"] - sum(t["seconds"] for t in train.values())) / n_eval
    held_out = round(full.data.synthetic_n * full.data.synthetic_val_fraction)

    def total(per_iter: dict[str, float], seeds: int) -> float:
        return seeds * (sum(full.iterations * s for s in per_iter.values()) + held_out * eval_s_per_image)

    out = {"load_before": load_before, "load_after": _loadavg(), "cpu_count": os.cpu_count(),
           "s_per_iteration": s_per_iter, "eval_s_per_image": eval_s_per_image,
           "estimate_s": {"seeds1": total(s_per_iter, 1), "seeds3": total(s_per_iter, full.seeds)}}
    print(f"load average before / after: {load_before} / {out['load_after']} on {os.cpu_count()} CPUs")
    for net, s in s_per_iter.items():
        print(f"  {net:10s} {s:.3f} s/iteration ({full.batch_size} images of {full.data.synthetic_size} px)")
    print(f"  evaluation {eval_s_per_image:.3f} s/held-out image (all rows, upper bound)")
    print(f"estimate under this load: --seeds 1 {out['estimate_s']['seeds1'] / 60:.1f} min, "
          f"default ({full.seeds} seeds) {out['estimate_s']['seeds3'] / 60:.1f} min")
    if args.saved:
        run = json.loads(args.saved.read_text())
        saved = {net: (v[0] if isinstance(v, list) else v) for net, v in run["training"].items()}
        quiet = {net: full.batch_size / saved[net]["images_per_second"] for net in s_per_iter}
        ratio = {net: s_per_iter[net] / quiet[net] for net in s_per_iter}
        # the saved run's evaluation: everything but training, per held-out image and seed
        seeds_run = len(run.get("seeds", [0]))
        trained_s = sum(t["seconds"] for v in run["training"].values() for t in (v if isinstance(v, list) else [v]))
        quiet_eval = (run["wall_s"] - trained_s) / (run["num_images"] * seeds_run)
        out["quiet_s_per_iteration"], out["load_ratio"], out["quiet_eval_s_per_image"] = quiet, ratio, quiet_eval

        def quiet_total(seeds: int) -> float:
            return seeds * (sum(full.iterations * s for s in quiet.values()) + held_out * quiet_eval)

        out["quiet_estimate_s"] = {"seeds1": quiet_total(1), "seeds3": quiet_total(full.seeds)}
        listed = ", ".join(f"{n} {s:.3f} s/it (now x{ratio[n]:.2f})" for n, s in quiet.items())
        print(f"saved quiet throughput: {listed}")
        print(f"quiet estimate: --seeds 1 {out['quiet_estimate_s']['seeds1'] / 60:.1f} min, "
              f"default ({full.seeds} seeds) {out['quiet_estimate_s']['seeds3'] / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
