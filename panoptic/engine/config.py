"""Typed training configuration: dataclasses with strict JSON load/save and dotted overrides.

A run is described by one :class:`TrainConfig` (nesting :class:`DataConfig`, :class:`OptimConfig` and
:class:`DistConfig`). ``panoptic train --config run.json`` reads a JSON file holding any subset of its fields;
command-line flags override it (:func:`apply_overrides`); the resolved config is saved as ``config.json`` in the
run folder and inside every checkpoint.

Example:
    >>> cfg = TrainConfig.from_dict({"iterations": 100, "optim": {"lr": 0.01}})
    >>> cfg = apply_overrides(cfg, {"optim.steps": [60, 90], "batch_size": 2})
    >>> cfg.optim.lr, cfg.optim.steps, cfg.batch_size
    (0.01, (60, 90), 2)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from ..atomic import atomic_write_text
from ..errors import PanopticError

__all__ = ["ConfigError", "DataConfig", "OptimConfig", "TrainConfig"]

T = TypeVar("T")


class ConfigError(PanopticError, ValueError):
    """A bad configuration value or key; the message names the field and what it accepts."""


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is augmented.

    Attributes:
        root: A COCO-panoptic folder: either the synthetic layout (``images/``, ``panoptic/``,
            ``panoptic_{train,val}.json``) or COCO 2017's (``train2017/``, ``val2017/``,
            ``annotations/panoptic_{train,val}2017.json`` + PNG folders). ``None``: the synthetic benchmark.
        train_json: Explicit training JSON (overrides ``root``'s); its images and PNGs are found in
            ``image_root`` / ``panoptic_root`` or, if not given, in the JSON's folder layout.
        val_json: Explicit validation JSON; ``""`` disables evaluation.
        image_root: Image folder of ``train_json`` (and ``val_json`` unless ``val_image_root``).
        panoptic_root: PNG folder of ``train_json`` (and ``val_json`` unless ``val_panoptic_root``).
        val_image_root: Image folder of ``val_json``.
        val_panoptic_root: PNG folder of ``val_json``.
        categories: A JSON file with the COCO ``categories`` list (or a COCO-panoptic JSON) to use instead of the
            annotation files' own; every segment's category must be in it (checked when the data is loaded).
        synthetic_n: Synthetic benchmark: number of scenes (train + val).
        synthetic_size: Synthetic benchmark: image side in pixels.
        synthetic_seed: Synthetic benchmark: scene seed.
        synthetic_val_fraction: Synthetic benchmark: fraction of scenes in ``val``.
        synthetic_scenes: Synthetic benchmark: scene preset, a key of
            :data:`panoptic.data.synthetic.SCENE_PRESETS` (``"plain"``, ``"table6"`` or ``"table6_decoys"``).
        cache_dir: Where the synthetic benchmark is written once and reused; default
            ``$PANOPTIC_CACHE/synthetic`` or ``~/.cache/panoptic/synthetic``.
        short_side: Training resize: short side (or candidates, one drawn per image); ``None`` keeps the size.
        max_size: Training resize: long-side cap.
        test_short_side: Evaluation resize (predictions are evaluated at the original size); ``None`` keeps it.
        test_max_size: Evaluation resize: long-side cap.
        flip_prob: Training horizontal flip probability.
        num_workers: DataLoader workers; ``None``: 0 on CPU, ``min(4, cores)`` on CUDA.
        max_eval_images: Evaluate on at most this many validation images (the first ones); ``None``: all.
    """

    root: str | None = None
    train_json: str | None = None
    val_json: str | None = None
    image_root: str | None = None
    panoptic_root: str | None = None
    val_image_root: str | None = None
    val_panoptic_root: str | None = None
    categories: str | None = None
    synthetic_n: int = 400
    synthetic_size: int = 128
    synthetic_seed: int = 0
    synthetic_val_fraction: float = 0.2
    synthetic_scenes: str = "plain"
    cache_dir: str | None = None
    short_side: tuple[int, ...] | None = None
    max_size: int | None = None
    test_short_side: int | None = None
    test_max_size: int | None = None
    flip_prob: float = 0.5
    num_workers: int | None = None
    max_eval_images: int | None = None

    def __post_init__(self) -> None:
        _check(self.synthetic_n >= 2, "data.synthetic_n", self.synthetic_n, "an int >= 2")
        _check(self.synthetic_size >= 32, "data.synthetic_size", self.synthetic_size, "an int >= 32")
        _check(0.0 <= self.synthetic_val_fraction < 1.0, "data.synthetic_val_fraction",
               self.synthetic_val_fraction, "a float in [0, 1)")
        _check(self.synthetic_scenes in ("plain", "table6", "table6_decoys"), "data.synthetic_scenes",
               self.synthetic_scenes,
               "'plain', 'table6' or 'table6_decoys' (a key of panoptic.data.synthetic.SCENE_PRESETS)")
        _check(0.0 <= self.flip_prob <= 1.0, "data.flip_prob", self.flip_prob, "a float in [0, 1]")
        _check(self.num_workers is None or self.num_workers >= 0, "data.num_workers", self.num_workers,
               "an int >= 0 or null")


@dataclass(frozen=True)
class OptimConfig:
    """SGD with UPSNet's schedule (reference §7.2): linear warmup from ``lr * warmup_factor``, then x``gamma``
    at each of ``steps``; biases get ``lr * bias_lr_factor`` and no weight decay.

    Attributes:
        lr: Base learning rate. UPSNet uses 0.02 for 16 images per step (scale it linearly with the total batch
            for the ResNet-50 presets); the small CPU presets, trained from scratch, take 0.02 at 4 images per step.
        momentum: SGD momentum.
        weight_decay: Weight decay of weights.
        bias_lr_factor: Learning-rate multiplier of biases.
        bias_weight_decay: Weight decay of biases.
        norm_weight_decay: Weight decay of normalization-layer scales and shifts.
        warmup_iters: Warmup length in iterations (0: none).
        warmup_factor: Learning-rate factor at iteration 0 of the warmup.
        steps: Iterations at which the learning rate is multiplied by ``gamma``.
        gamma: Step decay factor.
        clip_grad_norm: Clip the global gradient norm of each optimizer to this; ``None``: no clipping.
    """

    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_factor: float = 2.0
    bias_weight_decay: float = 0.0
    norm_weight_decay: float = 0.0
    warmup_iters: int = 100
    warmup_factor: float = 0.1
    steps: tuple[int, ...] = (1000, 1350)
    gamma: float = 0.1
    clip_grad_norm: float | None = 10.0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", self.lr, "a float > 0")
        _check(self.warmup_iters >= 0, "optim.warmup_iters", self.warmup_iters, "an int >= 0")
        _check(0 < self.warmup_factor <= 1, "optim.warmup_factor", self.warmup_factor, "a float in (0, 1]")
        _check(list(self.steps) == sorted(self.steps), "optim.steps", self.steps, "increasing iterations")
        _check(self.clip_grad_norm is None or self.clip_grad_norm > 0, "optim.clip_grad_norm",
               self.clip_grad_norm, "a float > 0 or null")


@dataclass(frozen=True)
class DistConfig:
    """DistributedDataParallel options (used when launched by ``torchrun`` with ``WORLD_SIZE > 1``).

    Attributes:
        backend: ``"auto"`` (nccl on CUDA, gloo on CPU), ``"nccl"`` or ``"gloo"``.
        find_unused_parameters: Passed to DDP; needed only by models whose losses skip parameters.
        timeout_s: Process-group timeout in seconds.
    """

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    find_unused_parameters: bool = False
    timeout_s: int = 1800


@dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults train ``upsnet_cpu_small`` on the synthetic benchmark (400 scenes of 128 px)
    for 1500 iterations of 4 images: about 10 minutes on 2 CPU cores.

    Attributes:
        model: Name in :data:`panoptic.models.MODELS`.
        model_kwargs: JSON keyword arguments of the builder (e.g. ``{"fpn_channels": 32}``; ``loss_weights``
            may be a dict of :class:`~panoptic.models.LossWeights` fields).
        pretrained: Start the backbone(s) from timm's ImageNet weights (they must be in the local timm / Hugging
            Face cache: nothing is downloaded by the tests or the synthetic benchmark, which train from scratch).
        data: See :class:`DataConfig`.
        optim: See :class:`OptimConfig`.
        dist: See :class:`DistConfig`.
        iterations: Total optimizer steps.
        batch_size: Images per step **per process**.
        seed: Seeds model initialization, data order, augmentation and the training RNGs.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: Mixed precision (float16 autocast + gradient scaling); only takes effect on CUDA.
        cpu_amp: bfloat16 autocast on the CPU (no gradient scaling: bfloat16 keeps float32's range). 1.3-2x
            faster training steps where the CPU computes bfloat16 in hardware (Intel AMX or AVX512-BF16),
            slower elsewhere; the weights differ from float32 training in their last bits and beyond. Off by
            default, so what a run computes does not depend on whether the CPU has that hardware.
        out_dir: Run folder: ``config.json``, ``metrics.jsonl``, checkpoints, TensorBoard events.
        log_every: Log the losses every this many iterations (and at the last one).
        eval_every: Evaluate every this many iterations; 0: only at the end.
        eval_at_end: Evaluate after the last iteration (when there is a validation split).
        checkpoint_every: Write ``checkpoint_<iter>.pt`` every this many iterations; 0: only ``model_final.pt``.
        keep_checkpoints: Keep this many periodic checkpoints (older ones are deleted); 0 keeps all.
        progress: Show a tqdm progress bar on rank 0: ``None`` when stderr is a terminal, ``True``/``False`` as
            asked; log lines are printed instead when there is no bar.
        tensorboard: Also write TensorBoard events when ``tensorboard`` is installed.
        threads: CPU threads per process (``torch.set_num_threads``); ``None`` leaves the count in effect (the
            command line sets it to the free cores, :func:`panoptic.threads.default_threads`).
        debug_rank_digest: Test aid: every rank writes ``rank<r>.sha256`` (digest of its final parameters).
    """

    model: str = "upsnet_cpu_small"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    iterations: int = 1500
    batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    cpu_amp: bool = False
    out_dir: str = "runs/panoptic"
    log_every: int = 20
    eval_every: int = 500
    eval_at_end: bool = True
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress: bool | None = None
    tensorboard: bool = True
    threads: int | None = None
    debug_rank_digest: bool = False

    def __post_init__(self) -> None:
        _check(self.iterations >= 1, "iterations", self.iterations, "an int >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
        _check(self.log_every >= 1, "log_every", self.log_every, "an int >= 1")
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), "an int >= 0")
        dev = self.device
        _check(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"), "device", dev,
               "'auto', 'cpu', 'cuda' or 'cuda:N'")
        try:
            json.dumps(self.model_kwargs)
        except TypeError as e:
            raise ConfigError(f"model_kwargs must be JSON-serialisable ({e}).") from None

    # ------------------------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a (possibly partial) dict; unknown keys and wrong types raise :class:`ConfigError`."""
        return _build(cls, data, "")

    def save(self, path: str | Path) -> Path:
        """Write as indented JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a JSON file written by :meth:`save` (or any subset of its keys)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}. --config takes a JSON file.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must hold a JSON object, got {type(data).__name__}.")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return ``config`` with dotted keys replaced, e.g. ``{"optim.lr": 0.01, "data.root": "coco"}``.

    Raises:
        ConfigError: For an unknown key or a value of the wrong type.
    """
    data = config.to_dict()
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown config section {p!r} in {key!r}; sections: data, optim, dist.")
            node = node[p]
        if parts[-1] not in node and parts[:-1] != ["model_kwargs"]:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {sorted(node)}.")
        node[parts[-1]] = list(value) if isinstance(value, tuple) else value
    return TrainConfig.from_dict(data)


# ---------------------------------------------------------------------------------- helpers
def _check(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {what}, got {value!r}.")


def _build(cls: type[T], data: Any, prefix: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a JSON object, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys: "
                          f"{sorted(prefix + n for n in names)}.")
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name + ".")  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}: {value!r} matches none of {tp}.")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{name} must be one of {list(typing.get_args(tp))}, got {value!r}.")
        return value
    if origin is tuple:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}.")
        return tuple(_convert(typing.get_args(tp)[0], v, f"{name}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a JSON object, got {value!r}.")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an int, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}.")
        return value
    raise ConfigError(f"{name}: unsupported config type {tp}.")  # pragma: no cover
