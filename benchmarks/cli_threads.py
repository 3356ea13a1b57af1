"""Thread defaults of the command line on a quiet and on a busy machine.

Times four commands as a user runs them (a fresh ``python -m panoptic`` process each, wall clock, import
included):

* ``predict``: ``--images`` synthetic held-out images with a briefly trained ``upsnet_cpu_small`` checkpoint;
* ``train``: ``--train-iters`` iterations of the default model on the synthetic data (no evaluation);
* ``evaluate``: PQ of those predictions' counterpart on ``--eval-images`` images (one prediction per image);
* ``demo``: ``panoptic demo --size 384``.

each with three thread settings:

* ``default``: no flag (the command picks the free cores, :func:`panoptic.threads.default_threads`);
* ``threads1``: ``--threads 1``;
* ``all``: ``--threads <cores>``: torch's own default, i.e. what every command did before it chose by itself
  (``evaluate``: one worker process per core, its previous default).

under two conditions: ``quiet`` (nothing started by this script) and ``busy`` (``--busy`` processes that spin on
a core each; each one stops by itself after ``--busy-seconds`` and is also ended when its condition is done).
Settings are interleaved (rotated per repeat) so that slow drifts of the machine hit all three alike; each row
reports medians over ``--repeats``, the ratios ``default / threads1`` and ``default / all``, and the cores other
processes kept busy just before each run (``/proc/stat``), since a shared machine is never really quiet.

Targets (issue 18): under ``busy``, ``default`` is never slower than ``threads1`` (ratio <= 1, with noise); under
``quiet``, ``default`` stays within 10% of ``all`` (ratio <= 1.10).

Usage::

    python benchmarks/cli_threads.py --quick            # about 5 minutes on 2 cores: 1 repeat, small workloads
    python benchmarks/cli_threads.py --json cli_threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from panoptic.threads import available_cores, busy_cores  # noqa: E402

COMMANDS = ("predict", "train", "evaluate", "demo")
SETTINGS = ("default", "threads1", "all")


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PANOPTIC_CACHE"] = str(cache)
    return env


def _panoptic(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "panoptic", *args], capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"panoptic {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def _setup(work: Path, env: dict[str, str], images: int, eval_images: int) -> dict[str, Path]:
    """Synthetic data, a briefly trained checkpoint, and predictions to evaluate (not timed)."""
    data = work / "data"
    _panoptic(["synth", str(data), "--n", str(max(images, eval_images) * 2), "--size", "128", "--val-fraction",
               "0.5", "--threads", "1"], env)
    run = work / "ckpt"
    _panoptic(["train", "--data", str(data), "--out", str(run), "--iterations", "4", "--batch-size", "2",
               "--val-json", "", "--checkpoint-every", "0", "--no-tensorboard", "--no-progress", "--threads", "1"],
              env)
    val = json.loads((data / "panoptic_val.json").read_text())
    for n, name in ((images, "predict.json"), (eval_images, "evaluate.json")):
        subset = {**val, "images": val["images"][:n], "annotations": val["annotations"][:n]}
        (work / name).write_text(json.dumps(subset))
    _panoptic(["predict", "--images-json", str(work / "evaluate.json"), "--image-root", str(data / "images"),
               "--checkpoint", str(run), "--out", str(work / "pred"), "--no-overlay", "--threads", "1"], env)
    return {"data": data, "run": run}


def _command(name: str, setting: str, work: Path, paths: dict[str, Path], train_iters: int, k: int) -> list[str]:
    cores = available_cores()
    flag = [] if setting == "default" else ["--threads", "1" if setting == "threads1" else str(cores)]
    out = work / f"out-{name}-{setting}-{k}"
    data = paths["data"]
    if name == "predict":
        return ["predict", "--images-json", str(work / "predict.json"), "--image-root", str(data / "images"),
                "--checkpoint", str(paths["run"]), "--out", str(out), *flag]
    if name == "train":
        return ["train", "--data", str(data), "--out", str(out), "--iterations", str(train_iters), "--val-json", "",
                "--checkpoint-every", "0", "--no-tensorboard", "--no-progress", *flag]
    if name == "evaluate":
        return ["evaluate", "--gt-json", str(work / "evaluate.json"), "--gt-folder", str(data / "panoptic"),
                "--pred-json", str(work / "pred" / "panoptic.json"), "--pred-folder", str(work / "pred" / "panoptic"),
                "--no-progress", *flag]
    return ["demo", "--size", "384", "--out", str(out), *flag]


def _start_busy(n: int, seconds: float) -> list[subprocess.Popen]:
    """``n`` processes that each spin on a core for at most ``seconds`` (they stop by themselves)."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        p.wait()


def run(args: argparse.Namespace) -> dict:
    cores = available_cores()
    results: dict = {"cores": cores, "repeats": args.repeats, "images": args.images, "eval_images": args.eval_images,
                     "train_iters": args.train_iters, "busy": args.busy, "conditions": {}}
    with tempfile.TemporaryDirectory(prefix="cli-threads-") as tmp:
        work = Path(tmp)
        env = _env(work / "cache")
        print(f"setup: data, a checkpoint, predictions ({cores} cores)", flush=True)
        paths = _setup(work, env, args.images, args.eval_images)
        for condition, n_busy in (("quiet", 0), ("busy", args.busy)):
            busy = _start_busy(n_busy, args.busy_seconds)
            time.sleep(1.0 if n_busy else 0.0)  # let them get going
            runs: dict[str, dict[str, list[dict]]] = {c: {s: [] for s in SETTINGS} for c in COMMANDS}
            try:
                for k in range(args.repeats):
                    for i, name in enumerate(COMMANDS):
                        order = SETTINGS[(k + i) % 3:] + SETTINGS[:(k + i) % 3]  # rotate the order per repeat
                        for setting in order:
                            foreign = busy_cores(0.2)
                            seconds = _panoptic(_command(name, setting, work, paths, args.train_iters, k), env)
                            runs[name][setting].append({"seconds": seconds, "foreign_cores": foreign})
                            others = "?" if foreign is None else f"{foreign:.1f}"
                            print(f"  {condition:<5} {name:<8} {setting:<8} {seconds:7.2f} s  (others busy on "
                                  f"{others} cores)", flush=True)
            finally:
                _stop(busy)
            rows = {}
            for name in COMMANDS:
                med = {s: statistics.median(r["seconds"] for r in runs[name][s]) for s in SETTINGS}
                rows[name] = {**{f"{s}_s": med[s] for s in SETTINGS},
                              "default_over_threads1": med["default"] / med["threads1"],
                              "default_over_all": med["default"] / med["all"], "runs": runs[name]}
            results["conditions"][condition] = rows
    return results


def to_markdown(results: dict) -> str:
    lines = ["| condition | command | default (s) | --threads 1 (s) | --threads all (s) | default / 1 | "
             "default / all | others busy (cores) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for condition, rows in results["conditions"].items():
        for name, r in rows.items():
            foreign = [x["foreign_cores"] for s in SETTINGS for x in r["runs"][s] if x["foreign_cores"] is not None]
            busy = f"{statistics.median(foreign):.1f}" if foreign else "?"
            lines.append(f"| {condition} | {name} | {r['default_s']:.1f} | {r['threads1_s']:.1f} | {r['all_s']:.1f} | "
                         f"{r['default_over_threads1']:.2f} | {r['default_over_all']:.2f} | {busy} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repeat, 4 images, 4 training iterations, 16 eval images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=12, help="predicted images")
    p.add_argument("--eval-images", type=int, default=40, help="evaluated images")
    p.add_argument("--train-iters", type=int, default=15)
    p.add_argument("--busy", type=int, default=2, help="busy processes in the busy condition")
    p.add_argument("--busy-seconds", type=float, default=1800.0, help="each busy process stops after this long")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.images, args.train_iters, args.eval_images = 1, 4, 4, 16
    results = run(args)
    print(to_markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
