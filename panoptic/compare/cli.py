"""``panoptic compare``: baseline versus UPSNet, the paper's tables on the synthetic benchmark or the user's data."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from ..engine.runlog import add_progress_argument
from ..errors import Interrupted
from ..threads import add_threads_argument, applied_threads

# Machinery of `panoptic compare` (the package exports the API: CompareConfig, run_compare, CompareResult).
__all__: list[str] = []


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand (``func=run``)."""
    from .config import MODEL_IDS

    p = subparsers.add_parser(
        "compare", help="train and compare MR-CNN-PSP, UPSNet-C, UPSNet-CP and UPSNet (the paper's tables)",
        description="Generate (or reuse) the synthetic benchmark, train MR-CNN-PSP, UPSNet-C and UPSNet with the same "
                    "schedule (UPSNet-CP reuses UPSNet's weights; cached checkpoints with the same config are reused), "
                    "evaluate them on the held-out split and write the main table (Table 7), the ablation (Table 6), "
                    "the run-time table (Table 5) as Markdown/CSV/JSON and a Figure-4-style PNG to --out.",
        epilog="default (3 seeds): under 45 minutes on 2 CPU cores with bfloat16 hardware (Intel AMX: training in "
               "bfloat16 autocast), about 1.5 hours on 2 cores without (float32); --seeds 1 a third of that; --quick: "
               "a minute (numbers not meaningful).")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 30 iterations, narrow networks")
    p.add_argument("--models", default=",".join(MODEL_IDS), metavar="LIST",
                   help="comma-separated subset of %(default)s")
    d = p.add_argument_group("data (default: the synthetic benchmark, generated once and cached)")
    d.add_argument("--data", metavar="DIR", help="COCO-panoptic folder with a held-out split (synthetic layout: "
                   "panoptic_{train,val}.json + images/ + panoptic/; or COCO 2017's layout)")
    d.add_argument("--train-json", metavar="PATH", help="explicit training JSON (images/PNGs beside it or see "
                   "--image-root/--panoptic-root)")
    d.add_argument("--val-json", metavar="PATH", help="explicit held-out JSON")
    d.add_argument("--image-root", metavar="DIR")
    d.add_argument("--panoptic-root", metavar="DIR")
    d.add_argument("--categories", metavar="JSON", help="categories list to use instead of the JSON files' own")
    d.add_argument("--synthetic-n", type=int, metavar="N", help="synthetic benchmark: scenes (train + held out)")
    d.add_argument("--synthetic-size", type=int, metavar="PX", help="synthetic benchmark: image side")
    d.add_argument("--synthetic-scenes", choices=("plain", "table6", "table6_decoys"),
                   help="synthetic benchmark: scene preset (default table6: stuff patches, same-class pairs, thin "
                        "things; table6_decoys adds decoy patches, pictures of things on stuff)")
    d.add_argument("--test-short-side", type=int, metavar="PX", help="evaluation resize (scored at original size)")
    m = p.add_argument_group("models and training")
    m.add_argument("--preset", choices=("cpu_small", "r50_fpn"), help="model sizes (default cpu_small)")
    m.add_argument("--backbone", metavar="TIMM_NAME", help="timm backbone of every model (default: the preset's)")
    m.add_argument("--pretrained", action="store_true", help="ImageNet weights from the local timm cache")
    m.add_argument("--iterations", type=int, metavar="N")
    m.add_argument("--batch-size", type=int, metavar="N")
    m.add_argument("--lr", type=float)
    m.add_argument("--seed", type=int, metavar="N", help="training seed of the first seed run (default 0)")
    m.add_argument("--seeds", type=int, metavar="K", help="trainings per network with seeds seed..seed+K-1 (default 3, "
                   "--quick 1); tables show mean +- std, claims a paired bootstrap 95%% interval; cached seeds are "
                   "reused")
    m.add_argument("--retrain", action="store_true", help="train even when a matching checkpoint is cached")
    r = p.add_argument_group("run")
    r.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    add_threads_argument(r)
    r.add_argument("--jobs", type=int, metavar="N", help="trainings at once on the CPU, each with threads/N threads "
                   "(default 1; on 2 cores 2 train small networks up to 1.6x faster, the default run no faster; "
                   "other weights than 1 job)")
    amp = r.add_mutually_exclusive_group()
    amp.add_argument("--cpu-amp", dest="cpu_amp", action="store_true", default=None,
                     help="train with bfloat16 autocast on the CPU (default: where the CPU has AMX or AVX512-BF16, "
                          "1.3-2x faster steps there)")
    amp.add_argument("--no-cpu-amp", dest="cpu_amp", action="store_false", help="train in float32 on every CPU")
    r.add_argument("--eval-images", type=int, metavar="N", help="evaluate on the first N held-out images")
    r.add_argument("--out", metavar="DIR", help="output folder (default panoptic-compare)")
    r.add_argument("--cache", metavar="DIR", help="checkpoint cache (default $PANOPTIC_CACHE/compare)")
    add_progress_argument(r)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from .config import CompareConfig

    base = CompareConfig.quick() if args.quick else CompareConfig.default()
    data_over = {k: v for k, v in (("root", args.data), ("train_json", args.train_json), ("val_json", args.val_json),
                                   ("image_root", args.image_root), ("panoptic_root", args.panoptic_root),
                                   ("categories", args.categories), ("synthetic_n", args.synthetic_n),
                                   ("synthetic_size", args.synthetic_size),
                                   ("synthetic_scenes", args.synthetic_scenes),
                                   ("test_short_side", args.test_short_side)) if v is not None}
    over: dict[str, Any] = {k: v for k, v in (("preset", args.preset), ("backbone", args.backbone),
                                              ("iterations", args.iterations), ("batch_size", args.batch_size),
                                              ("lr", args.lr), ("seed", args.seed), ("seeds", args.seeds),
                                              ("device", args.device),
                                              ("threads", args.threads), ("jobs", args.jobs),
                                              ("cpu_amp", args.cpu_amp),
                                              ("eval_images", args.eval_images),
                                              ("out_dir", args.out), ("cache_dir", args.cache)) if v is not None}
    if args.pretrained:
        over["pretrained"] = True
    if args.retrain:
        over["retrain"] = True
    if args.progress is not None:
        over["progress"] = args.progress
    over["models"] = tuple(s.strip() for s in args.models.split(",") if s.strip())
    if data_over:
        over["data"] = dataclasses.replace(base.data, **data_over)
    return dataclasses.replace(base, **over)


def run(args: argparse.Namespace) -> int:
    """Run ``compare``; returns the exit status (user mistakes raise a ``PanopticError``: one line, exit 2)."""
    from ..engine.config import ConfigError
    from ..engine.distributed import resolve_device
    from ..engine.trainer import TrainingInterrupted
    from .report import claim_lines, to_markdown
    from .runner import run_compare

    t0 = time.perf_counter()
    try:
        config = _config(args)
        resolve_device(config.device)  # --device cuda without a GPU: one line, before any work
    except ValueError as e:  # a bad flag value: one line
        raise ConfigError(str(e)) from None
    try:
        with applied_threads(config.threads):
            result = run_compare(config)
    except TrainingInterrupted as e:
        raise Interrupted(f"{e}; run the same `panoptic compare` command again to resume it (models already "
                          "trained stay cached)") from None
    res = result.results
    print()
    print(to_markdown("main", res))
    if res["ablation"]:
        print(to_markdown("ablation", res))
    print(to_markdown("runtime", res))
    for line in claim_lines(res):
        print(line)
    for name, ok in res["checks"].items():
        print(f"{'PASS' if ok else 'MISS'}: {name}")
    print(f"wrote {len(result.files)} files to {result.out_dir}/ (report.md, results.json, figure.png)")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    return 0
