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
    load_checkpoint,
    read_checkpoint,  # noqa: F401
    save_checkpoint,
)
from .config import (
    ConfigError,
    DataConfig,
    DistConfig,  # noqa: F401
    OptimConfig,
    TrainConfig,
)
from .evaluate import evaluate
from .evaluators import DetectionEvaluator, PanopticEvaluator, SemanticEvaluator
from .inference import DatasetEvaluator, ImageOutput, inference_on_dataset
from .predict import (
    PredictOutput,  # noqa: F401
    predict_images,
)
from .trainer import (
    TrainResult,  # noqa: F401
    train,
)

# Imports marked `noqa: F401` stay importable for existing code but are not API (not in __all__).
__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DatasetEvaluator",
    "DetectionEvaluator",
    "ImageOutput",
    "OptimConfig",
    "PanopticEvaluator",
    "SemanticEvaluator",
    "TrainConfig",
    "evaluate",
    "inference_on_dataset",
    "load_checkpoint",
    "predict_images",
    "save_checkpoint",
    "train",
]
