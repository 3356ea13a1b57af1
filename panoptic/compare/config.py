"""What ``panoptic compare`` runs: the models, the data, the training schedule and the evaluation, as one dataclass.

Two presets: :meth:`CompareConfig.default` (the paper's comparison on the synthetic benchmark with 3 seeds, about
13 minutes per seed on 2 CPU cores that train in bfloat16, about 30 without) and :meth:`CompareConfig.quick` (a
smoke run of about a minute, one seed, used by CI and the tutorial). Everything else is an explicit field, so a run
is reproducible from its saved ``config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine.config import ConfigError, DataConfig, OptimConfig, TrainConfig
from .intervals import BootstrapConfig

__all__ = ["CompareConfig"]

MODEL_IDS = ("mrcnn_psp", "upsnet_c", "upsnet_cp", "upsnet")
"""The compared models, in table order (paper Table 7: the combined method, then UPSNet's variants)."""

DISPLAY_NAMES = {"mrcnn_psp": "MR-CNN-PSP", "upsnet_c": "UPSNet-C", "upsnet_cp": "UPSNet-CP", "upsnet": "UPSNet"}

# 320 training scenes (as before) and 400 held out: enough images for the main claim's interval to be narrower
# than its gap (see the compare tutorial's "How many held-out images?"). The "table6" scenes hold stuff patches,
# same-class pairs and thin things, so every ablation row has something to change.
BENCHMARK_DATA = DataConfig(synthetic_n=720, synthetic_val_fraction=400 / 720, synthetic_scenes="table6")
"""The synthetic benchmark of the default comparison."""

# Trained network of each model: UPSNet-CP is UPSNet's weights tested with the heuristic (paper §4.1), so it needs
# no training of its own.
_NETWORK = {"mrcnn_psp": "mrcnn_psp", "upsnet_c": "upsnet_c", "upsnet_cp": "upsnet", "upsnet": "upsnet"}

# Registered builder per (preset, network).
BUILDERS = {
    "cpu_small": {"upsnet": "upsnet_cpu_small", "upsnet_c": "upsnet_c_cpu_small", "mrcnn_psp": "mrcnn_psp_cpu_small"},
    "r50_fpn": {"upsnet": "upsnet_r50_fpn", "upsnet_c": "upsnet_c", "mrcnn_psp": "mrcnn_psp"},
}


def network_of(model_id: str) -> str:
    """The trained network a compared model uses (``"upsnet_cp"`` -> ``"upsnet"``)."""
    return _NETWORK[model_id]


@dataclass(frozen=True)
class CompareConfig:
    """A comparison run.

    Attributes:
        models: Model ids to compare, a subset of :data:`MODEL_IDS` (table order is kept). The ablation needs
            ``upsnet`` (and uses ``upsnet_c``'s network for its first row when that one is trained).
        data: The data (default: :data:`BENCHMARK_DATA`, the synthetic benchmark with the ``"table6"`` scenes,
            generated once into the cache and reused). For user data set ``root`` (or the explicit JSON paths)
            and optionally ``categories``.
        preset: ``"cpu_small"`` (resnet18, FPN 64, light heads: the synthetic benchmark's models) or
            ``"r50_fpn"`` (the paper's ResNet-50-FPN models, for GPUs and real data).
        backbone: timm backbone of every model; ``None``: the preset's (resnet18 / resnet50).
        pretrained: Load timm's ImageNet weights (needs them in the local timm cache; no downloads here).
        model_kwargs: Extra builder keyword arguments applied to every network (e.g. ``{"fpn_channels": 32}``).
        iterations: Training iterations of every network (same schedule for all, as in the paper).
        batch_size: Images per iteration.
        lr: Base learning rate.
        warmup_iters: Linear warmup length.
        steps: Learning-rate decay points as fractions of ``iterations`` (x0.1 at each).
        seed: Training seed of the first seed run (run ``k`` trains with ``seed + k``); the data do not depend
            on it.
        seeds: Trainings per network with seeds ``seed, seed + 1, ...`` (initialisation and sampling vary, the
            data stay fixed); tables report mean +- std over them and the claims a paired bootstrap interval over
            held-out images and seeds (:mod:`panoptic.compare.intervals`). Each seed's checkpoint is cached on
            its own, so a rerun with more seeds trains only the new ones.
        bootstrap: Resamples, level and seed of the intervals.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: CPU threads (``torch.set_num_threads``) for training and timing; ``None``: torch's default.
        cpu_amp: Train on the CPU with bfloat16 autocast (:attr:`TrainConfig.cpu_amp
            <panoptic.engine.config.TrainConfig.cpu_amp>`); ``None``: where the CPU computes bfloat16 in hardware
            (Intel AMX or AVX512-BF16), where it makes the training steps 1.3-2x faster. Part of each
            checkpoint's cache key; the run records the value used. Evaluation always runs in float32.
        jobs: Trainings run at once (CPU only), each in its own process with ``threads // jobs`` threads (at least
            one). Small networks use a second core poorly: on 2 cores two 1-thread trainings of the small networks
            ran 1.4-1.6x the iterations per second of one 2-thread training, but the default run's MR-CNN-PSP keeps
            both cores busy and was no faster with 2 jobs. The thread count is part of a checkpoint's cache key,
            so ``jobs=2`` trains (and caches) other weights than ``jobs=1``. Default 1.
        eval_images: Evaluate on the first this many validation images; ``None``: all.
        timing_warmup: Images run before timing starts (not counted).
        figure_images: Rows of the Figure-4-style figure.
        out_dir: Where tables, JSON and the figure are written.
        cache_dir: Where trained checkpoints are kept and reused (keyed by their full training config);
            ``None``: ``$PANOPTIC_CACHE/compare`` or ``~/.cache/panoptic/compare``.
        retrain: Train even when a matching checkpoint is cached.
        progress: Progress bars: ``None`` when stderr is a terminal, or as asked.
    """

    models: tuple[str, ...] = MODEL_IDS
    data: DataConfig = field(default_factory=lambda: BENCHMARK_DATA)
    preset: Literal["cpu_small", "r50_fpn"] = "cpu_small"
    backbone: str | None = None
    pretrained: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    iterations: int = 700
    batch_size: int = 4
    lr: float = 0.02
    warmup_iters: int = 100
    steps: tuple[float, ...] = (0.7, 0.9)
    seed: int = 0
    seeds: int = 3
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    device: str = "auto"
    threads: int | None = None
    cpu_amp: bool | None = None
    jobs: int = 1
    eval_images: int | None = None
    timing_warmup: int = 2
    figure_images: int = 4
    out_dir: str = "panoptic-compare"
    cache_dir: str | None = None
    retrain: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODEL_IDS]
        if unknown or not self.models:
            raise ConfigError(f"unknown model id(s) {unknown}; choose from {list(MODEL_IDS)} (comma-separated).")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"models {list(self.models)} repeat an id.")
        if self.preset not in BUILDERS:
            raise ConfigError(f"preset must be one of {sorted(BUILDERS)}, got {self.preset!r}.")
        if self.iterations < 1 or self.batch_size < 1:
            raise ConfigError("iterations and batch_size must be >= 1.")
        if self.jobs < 1:
            raise ConfigError(f"jobs must be >= 1 (trainings at once), got {self.jobs}.")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1 (trainings per network), got {self.seeds}.")
        if any(not 0.0 < s < 1.0 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ConfigError(f"steps are increasing fractions of the iterations in (0, 1), got {self.steps}.")
        if self.figure_images < 0 or self.timing_warmup < 0:
            raise ConfigError("figure_images and timing_warmup must be >= 0.")
        # keep the table order whatever order the user typed
        object.__setattr__(self, "models", tuple(m for m in MODEL_IDS if m in self.models))

    # ------------------------------------------------------------------------------------ presets
    @classmethod
    def default(cls, **overrides: Any) -> CompareConfig:
        """The full comparison on the synthetic benchmark (720 ``"table6"`` scenes of 128 px, 400 held out), 3 seeds."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides: Any) -> CompareConfig:
        """A smoke run (about a minute on 2 cores): 48 scenes of 96 px, 30 iterations, narrow networks, 1 seed.

        The numbers it prints are not meaningful; it checks that every stage runs and writes its outputs.
        """
        data = overrides.pop("data", None) or DataConfig(synthetic_n=48, synthetic_size=96,
                                                         synthetic_val_fraction=0.125, synthetic_scenes="table6")
        base: dict[str, Any] = {"iterations": 30, "batch_size": 2, "warmup_iters": 5,
                                "model_kwargs": {"fpn_channels": 32}, "timing_warmup": 1,
                                "seeds": 1}
        base.update(overrides)
        return cls(data=data, **base)

    # ----------------------------------------------------------------------------------- training
    @property
    def networks(self) -> tuple[str, ...]:
        """The networks to train, in training order (UPSNet first: it also serves UPSNet-CP and the ablation)."""
        wanted = {network_of(m) for m in self.models}
        return tuple(n for n in ("upsnet", "upsnet_c", "mrcnn_psp") if n in wanted)

    def train_config(self, network: str, out_dir: str, seed_index: int = 0) -> TrainConfig:
        """The :class:`TrainConfig` of one network's ``seed_index``-th seed run (the same schedule and data for
        all; training seed ``seed + seed_index``)."""
        kwargs = dict(self.model_kwargs)
        if self.backbone:
            kwargs["backbone"] = self.backbone
        steps = tuple(sorted({max(1, round(f * self.iterations)) for f in self.steps}))
        return TrainConfig(
            model=BUILDERS[self.preset][network], model_kwargs=kwargs, pretrained=self.pretrained, data=self.data,
            optim=OptimConfig(lr=self.lr, warmup_iters=min(self.warmup_iters, self.iterations), steps=steps),
            iterations=self.iterations, batch_size=self.batch_size, seed=self.seed + seed_index, device=self.device,
            out_dir=out_dir, log_every=max(1, min(50, self.iterations // 10)), eval_every=0, eval_at_end=False,
            checkpoint_every=max(1, self.iterations // 4), keep_checkpoints=1,
            progress=self.progress if self.jobs == 1 else False, tensorboard=False, threads=self.training_threads,
            cpu_amp=self.training_cpu_amp)

    @property
    def training_cpu_amp(self) -> bool:
        """:attr:`cpu_amp`, with ``None`` resolved: bfloat16 autocast where this CPU computes it in hardware."""
        if self.cpu_amp is not None:
            return self.cpu_amp
        from ..engine._precision import cpu_bf16_native

        return cpu_bf16_native()

    @property
    def training_threads(self) -> int | None:
        """Threads of each training: :attr:`threads` with one job, else ``threads // jobs`` (at least 1)."""
        if self.jobs == 1:
            return self.threads
        import torch  # the threads torch would use by default

        return max(1, (self.threads or torch.get_num_threads()) // self.jobs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (saved in ``results.json``)."""
        d = dataclasses.asdict(self)
        d["data"] = dataclasses.asdict(self.data)
        return d
