"""Training and inference engine: typed configs, the training loop (SGD + warmup/step schedule, AMP, DDP),
checkpoints, evaluation and prediction on images.

* :func:`train` (``panoptic train``): :class:`TrainConfig` -> :class:`TrainResult` (final checkpoint, metrics).
* :func:`load_checkpoint` / :func:`save_checkpoint`: weights + config + category table, loaded with
  ``torch.load(weights_only=True)`` or safetensors; :class:`CheckpointError` on anything unusable.
* :func:`evaluate`: PQ / SQ / RQ and mIoU of a model on a COCO-panoptic split (merged across ranks);
  :func:`build_datasets` gives the splits of a :class:`DataConfig` (default: the cached synthetic benchmark).
* :func:`predict_images` (``panoptic predict``): COCO-panoptic PNG + JSON and overlays, multi-scale / flip test.

Example:
    >>> from panoptic.engine import TrainConfig, train, load_checkpoint, predict_images   # doctest: +SKIP
    >>> result = train(TrainConfig(iterations=200, out_dir="runs/demo"))                 # doctest: +SKIP
    >>> model, table, meta = load_checkpoint(result.checkpoint)                          # doctest: +SKIP
    >>> outputs = predict_images(model, table, ["photo.jpg"], out_dir="pred")            # doctest: +SKIP
"""

from .checkpoint import (
    CheckpointError,
    CheckpointMeta,
    build_named_model,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .config import ConfigError, DataConfig, DistConfig, OptimConfig, TrainConfig, apply_overrides
from .data import build_datasets, synthetic_benchmark
from .distributed import DistInfo, init_distributed, resolve_device
from .evaluate import evaluate
from .optim import WarmupStepSchedule, build_optimizer, build_scheduler, param_groups
from .predict import PredictOutput, images_from_json, predict_image, predict_images
from .table_check import check_table
from .trainer import Trainer, TrainResult, model_parts, train

__all__ = [
    "CheckpointError",
    "CheckpointMeta",
    "ConfigError",
    "DataConfig",
    "DistConfig",
    "DistInfo",
    "OptimConfig",
    "PredictOutput",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "WarmupStepSchedule",
    "apply_overrides",
    "build_datasets",
    "build_named_model",
    "build_optimizer",
    "build_scheduler",
    "check_table",
    "evaluate",
    "images_from_json",
    "init_distributed",
    "load_checkpoint",
    "model_parts",
    "param_groups",
    "predict_image",
    "predict_images",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "synthetic_benchmark",
    "train",
]
