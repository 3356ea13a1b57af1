"""``panoptic train`` and ``panoptic predict``.

``panoptic train [--config run.json] [--data DIR] [--model NAME] [--out DIR] [--iterations N] ... [--resume [CKPT]]``
trains on COCO-panoptic data (default: the synthetic benchmark, generated once and cached); flags override
the JSON config. Distributed: ``torchrun --standalone --nproc_per_node N -m panoptic train ...`` (see
:mod:`panoptic.engine.distributed` for several machines).

``panoptic predict IMAGE_OR_DIR... --checkpoint CKPT --out DIR [--fusion upsnet|heuristic] [--scales ...] [--flip]``
writes COCO-panoptic PNG + JSON and an overlay per image.

The main CLI wires both in with :func:`register`; ``python -m panoptic.engine.cli train ...`` works too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import Interrupted, run_command
from ..threads import add_threads_argument, applied_threads
from .runlog import add_progress_argument

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []

# flag dest -> config key
_TRAIN_KEYS = {
    "data": "data.root", "train_json": "data.train_json", "val_json": "data.val_json",
    "image_root": "data.image_root", "panoptic_root": "data.panoptic_root",
    "val_image_root": "data.val_image_root", "val_panoptic_root": "data.val_panoptic_root",
    "categories": "data.categories", "synthetic_n": "data.synthetic_n", "synthetic_size": "data.synthetic_size",
    "cache_dir": "data.cache_dir",
    "short_side": "data.short_side", "max_size": "data.max_size", "test_short_side": "data.test_short_side",
    "flip_prob": "data.flip_prob", "num_workers": "data.num_workers", "max_eval_images": "data.max_eval_images",
    "model": "model", "out": "out_dir", "iterations": "iterations", "batch_size": "batch_size", "seed": "seed",
    "device": "device", "eval_every": "eval_every", "checkpoint_every": "checkpoint_every",
    "log_every": "log_every", "threads": "threads", "lr": "optim.lr", "warmup_iters": "optim.warmup_iters",
    "steps": "optim.steps", "backend": "dist.backend",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` (``func=run_train``) and ``predict`` (``func=run_predict``) subcommands."""
    _add_train_parser(subparsers)
    _add_predict_parser(subparsers)


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """``panoptic train``: the config file, then the data and run flag groups."""
    t = subparsers.add_parser(
        "train", help="train a panoptic model (default: the small CPU UPSNet on the synthetic benchmark)",
        description="Train with SGD, linear warmup and step decay (UPSNet's schedule), AMP on CUDA, gradient "
                    "clipping, periodic PQ/mIoU evaluation and atomic, resumable checkpoints. Writes config.json, "
                    "metrics.jsonl, checkpoint_<iter>.pt and model_final.pt to --out. Flags override --config.",
        epilog="distributed: torchrun --standalone --nproc_per_node N -m panoptic train ... (batch size is per "
               "process; gloo on CPU, nccl on GPU).")
    t.add_argument("--config", type=Path, metavar="JSON", help="JSON config (any subset of TrainConfig's fields)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    _add_data_flags(t.add_argument_group("data"))
    _add_run_flags(t.add_argument_group("run"))
    t.set_defaults(func=run_train)


def _add_data_flags(d: argparse._ArgumentGroup) -> None:
    """Where the training data is and how it is resized (DataConfig's fields)."""
    d.add_argument("--data", metavar="DIR", help="COCO-panoptic folder (synthetic or COCO-2017 layout); default: the "
                   "synthetic benchmark, cached")
    for flag in ("--train-json", "--val-json", "--image-root", "--panoptic-root", "--val-image-root",
                 "--val-panoptic-root", "--cache-dir"):
        d.add_argument(flag, metavar="PATH")
    d.add_argument("--categories", metavar="JSON", help="categories list (or COCO-panoptic JSON) to use instead of "
                   "the annotation files' own")
    d.add_argument("--synthetic-n", type=int, metavar="N", help="synthetic benchmark: scenes (default 400)")
    d.add_argument("--synthetic-size", type=int, metavar="PX", help="synthetic benchmark: image side (default 128)")
    d.add_argument("--short-side", type=int, nargs="+", metavar="PX", help="training resize (one or several)")
    d.add_argument("--max-size", type=int, metavar="PX")
    d.add_argument("--test-short-side", type=int, metavar="PX")
    d.add_argument("--flip-prob", type=float, metavar="P", help="training flip probability (default 0.5)")
    d.add_argument("--num-workers", type=int, metavar="N", help="DataLoader workers (default: 0 on CPU, 4 on CUDA)")
    d.add_argument("--max-eval-images", type=int, metavar="N")


def _add_run_flags(r: argparse._ArgumentGroup) -> None:
    """The model, the optimisation schedule and the run's bookkeeping (TrainConfig's other fields)."""
    from ..models import MODELS

    r.add_argument("--model", choices=sorted(MODELS), help="model builder (default upsnet_cpu_small)")
    r.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="builder keyword argument, VALUE parsed as JSON (repeatable), e.g. fpn_channels=32")
    r.add_argument("--pretrained", action="store_true",
                   help="start from timm's ImageNet weights (must be in the local cache; nothing is downloaded)")
    r.add_argument("--out", metavar="DIR", help="run folder (default runs/panoptic)")
    r.add_argument("--iterations", type=int, metavar="N")
    r.add_argument("--batch-size", type=int, metavar="N", help="images per step per process")
    r.add_argument("--lr", type=float)
    r.add_argument("--warmup-iters", type=int, metavar="N")
    r.add_argument("--steps", type=int, nargs="*", metavar="ITER", help="decay iterations")
    r.add_argument("--clip-grad", type=float, metavar="NORM", help="gradient norm clip; 0 disables")
    r.add_argument("--seed", type=int, metavar="N")
    r.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    r.add_argument("--cpu-amp", action="store_true", help="bfloat16 mixed precision on the CPU: 1.3-2x faster "
                   "steps where the CPU has AMX or AVX512-BF16, slower elsewhere")
    r.add_argument("--eval-every", type=int, metavar="N")
    r.add_argument("--checkpoint-every", type=int, metavar="N")
    r.add_argument("--log-every", type=int, metavar="N")
    add_threads_argument(r, "per process")
    r.add_argument("--backend", choices=("auto", "gloo", "nccl"), help="process-group backend")
    r.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue a run: from CKPT, or from the latest checkpoint in --out (its config must match: "
                        "a difference is an error that lists it)")
    r.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even if the checkpoint was trained with another config, thread "
                        "count or number of processes (the weights then differ from an uninterrupted run)")
    add_progress_argument(r)
    r.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard events")
    r.add_argument("--debug-rank-digest", action="store_true", help=argparse.SUPPRESS)


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    """``panoptic predict``: inputs, checkpoint, output folder and the test-time options."""
    p = subparsers.add_parser(
        "predict", help="panoptic segmentation of images with a trained checkpoint",
        description="Segment images (files or folders) and write OUT/panoptic.json + OUT/panoptic/<id>.png "
                    "(COCO-panoptic), OUT/segments/<id>.json and OUT/overlay/<id>.png.")
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR")
    p.add_argument("--images-json", type=Path, metavar="JSON",
                   help="predict the images listed in this COCO(-panoptic) JSON (with --image-root) and keep their "
                        "image ids, so that `panoptic evaluate` matches the predictions to that ground truth")
    p.add_argument("--image-root", type=Path, metavar="DIR", help="folder of the --images-json file_names")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help=".pt or .safetensors checkpoint, or a `panoptic train` run folder (its final or latest one)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--fusion", choices=("model", "upsnet", "heuristic"), default="model",
                   help="fusion strategy (default: the model's own)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="S",
                   help="test scales whose semantic logits are averaged (instances from scale 1.0)")
    p.add_argument("--flip", action="store_true", help="also average the semantic logits of flipped images")
    p.add_argument("--short-side", type=int, metavar="PX", help="resize images to this short side first")
    p.add_argument("--max-size", type=int, metavar="PX")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay pictures")
    p.add_argument("--bare-overlay", action="store_true",
                   help="overlays without outlines, labels and legend (only the blended colours)")
    add_threads_argument(p)
    p.set_defaults(func=run_predict)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` of ``--config`` (or the defaults) with the given flags applied."""
    from .config import TrainConfig, apply_overrides

    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    over: dict[str, Any] = {key: getattr(args, dest) for dest, key in _TRAIN_KEYS.items()
                            if getattr(args, dest, None) is not None}
    if args.clip_grad is not None:
        over["optim.clip_grad_norm"] = args.clip_grad or None
    if args.progress is not None:
        over["progress"] = args.progress
    switches = (("no_amp", "amp", False), ("cpu_amp", "cpu_amp", True),
                ("no_tensorboard", "tensorboard", False), ("debug_rank_digest", "debug_rank_digest", True),
                ("pretrained", "pretrained", True))
    for flag, key, value in switches:
        if getattr(args, flag):
            over[key] = value
    if args.model_arg:
        kwargs = dict(cfg.model_kwargs)
        for item in args.model_arg:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--model-arg takes KEY=VALUE, got {item!r}.")
            kwargs[key] = _json_value(value)
        over["model_kwargs"] = kwargs
    return apply_overrides(cfg, over)


def run_train(args: argparse.Namespace) -> int:
    """Run ``train``; returns the exit status (user mistakes raise a ``PanopticError``: one line, exit 2)."""
    from .config import ConfigError
    from .trainer import TrainingInterrupted, train

    try:
        cfg = build_config(args)
    except ValueError as e:  # a bad flag value: one line
        raise ConfigError(str(e)) from None
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    try:
        with applied_threads(cfg.threads):
            result = train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    except TrainingInterrupted as e:
        raise Interrupted(f"{e}; resume with: panoptic train --config {e.out_dir / 'config.json'} --resume") from None
    if int(os.environ.get("RANK", "0")) == 0:
        m = result.metrics
        summary = (f"PQ {100 * m['pq']:.1f}  SQ {100 * m['sq']:.1f}  RQ {100 * m['rq']:.1f}  mIoU {100 * m['miou']:.1f}"
                   if m else "no evaluation")
        print(f"trained {result.iterations} iterations in {result.seconds:.0f} s ({result.images_per_second:.1f} "
              f"img/s); {summary}\ncheckpoint: {result.checkpoint}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Run ``predict``; returns the exit status (user mistakes raise a ``PanopticError``: one line, exit 2)."""
    from .checkpoint import load_checkpoint
    from .config import ConfigError
    from .distributed import resolve_device
    from .predict import fusion_note, images_from_json, predict_images
    from .trainer import checkpoint_of

    if (args.images_json is None) == (not args.inputs):
        raise ConfigError("give image files / folders, or --images-json with --image-root (not both).")
    inputs, ids = args.inputs, None
    if args.images_json is not None:
        if args.image_root is None:
            raise ConfigError("--images-json needs --image-root, the folder its file_names are relative to.")
        inputs, ids = images_from_json(args.images_json, args.image_root)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    with applied_threads(args.threads):
        checkpoint = checkpoint_of(args.checkpoint)
        if checkpoint != args.checkpoint:
            print(f"using {checkpoint}", file=sys.stderr)
        model, table, meta = load_checkpoint(checkpoint, map_location=device)
        note = fusion_note(args.fusion, model)
        if note:
            print(f"panoptic predict: note: {note}", file=sys.stderr)
        outputs = predict_images(model, table, inputs, out_dir=args.out, scales=args.scales, flip=args.flip,
                                 fusion=args.fusion, short_side=args.short_side, max_size=args.max_size,
                                 write_overlay=not args.no_overlay, image_ids=ids, labels=not args.bare_overlay)
    for o in outputs:
        things = int(o.result.isthing.sum())
        print(f"{o.image_path}: {o.result.num_segments} segments ({things} things, "
              f"{o.result.num_segments - things} stuff)")
    print(f"wrote {len(outputs)} predictions of {meta.model} (iteration {meta.iteration}) to {args.out}/ "
          "(panoptic.json, panoptic/, segments/, overlay/)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point with the ``train`` and ``predict`` subcommands."""
    parser = argparse.ArgumentParser(prog="panoptic")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_command(args.command, lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
