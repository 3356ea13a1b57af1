"""The training loop: SGD with warmup + step decay, AMP on CUDA, gradient clipping, DDP, periodic evaluation,
atomic checkpoints and exact resumption.

Models train as one or more *parts*, each with its own optimizer, scheduler and gradient scaler (and DDP
wrapper): UPSNet is one part; MR-CNN-PSP's ``detector`` and ``semantic`` are two, trained side by side on
the same batches as separately trained networks (:func:`model_parts`).

Exact resumption (bit-identical weights on CPU): batches are a pure function of the iteration
(:class:`~panoptic.engine.data.IterationBatchSampler`), and checkpoints hold the optimizer, scheduler and scaler
states and every rank's RNG states (torch, CUDA, numpy, Python, and the model's own generators); evaluation
runs with the RNG states saved and restored so it does not perturb training.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..atomic import atomic_write_text
from ..categories import CategoryTable
from ..errors import Interrupted
from ..models import TrainableModel
from ._interrupt import StopRequest
from ._optim import build_optimizer, build_scheduler
from ._precision import autocast_dtype, cpu_bf16_native
from ._rng import capture_rng_state, restore_rng_state
from ._table_check import check_table
from .checkpoint import CheckpointError, build_named_model, load_state, read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import build_datasets, train_loader
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, init_distributed
from .evaluate import evaluate
from .resume import check_resume
from .runlog import MetricsLogger, ProgressBar, format_eta

__all__ = ["train"]

FINAL_NAME = "model_final.pt"
LAST_FILE = "last_checkpoint"


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        checkpoint: The final checkpoint (``out_dir/model_final.pt``).
        out_dir: The run folder.
        metrics: The last evaluation's metrics (see :func:`~panoptic.engine.evaluate.summarize`); empty if none.
        iterations: Completed iterations.
        losses: Mean losses over the last logging window (``total`` included).
        seconds: Wall time of the iterations run by this call.
        images_per_second: Training throughput over all processes.
    """

    checkpoint: Path
    out_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    iterations: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_second: float = 0.0


class TrainingInterrupted(Interrupted):
    """Ctrl-C stopped training after an iteration; its state was saved to ``checkpoint`` (resumable).

    Attributes:
        checkpoint: The checkpoint written at the stop (also named in ``out_dir/last_checkpoint``).
        iteration: Iterations completed.
        total: Iterations the run was configured for.
        out_dir: The run folder.
    """

    def __init__(self, checkpoint: Path, iteration: int, total: int, out_dir: Path) -> None:
        super().__init__(f"stopped at iteration {iteration} of {total}; saved {checkpoint}")
        self.checkpoint, self.iteration, self.total, self.out_dir = checkpoint, iteration, total, out_dir


def model_parts(model: TrainableModel) -> dict[str, nn.Module]:
    """The model's independently optimized parts (:meth:`~panoptic.models.TrainableModel.train_parts`):
    ``{"detector", "semantic"}`` for MR-CNN-PSP, ``{"model": model}`` otherwise. Every part's
    ``forward(images, targets)`` in training mode returns a dict of losses.
    """
    return model.train_parts()


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in name order (buffers such as BN statistics left out)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def find_resume_checkpoint(out_dir: str | Path) -> Path:
    """The checkpoint named in ``out_dir/last_checkpoint``.

    Raises:
        CheckpointError: If the run folder has none.
    """
    out = Path(out_dir)
    last = out / LAST_FILE
    if last.is_file():
        path = out / last.read_text().strip()
        if path.is_file():
            return path
    raise CheckpointError(f"nothing to resume in {out}: no {LAST_FILE} file naming a checkpoint; pass --resume PATH "
                          "or start a new run.")


def checkpoint_of(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's: its ``model_final.pt``, else its latest periodic checkpoint.

    Raises:
        CheckpointError: If ``path`` is a folder without either (or does not exist).
    """
    p = Path(path)
    if not p.is_dir():
        if not p.exists():
            raise CheckpointError(f"checkpoint {p} not found; pass a .pt or .safetensors file or a `panoptic train` "
                                  "run folder.")
        return p
    if (p / FINAL_NAME).is_file():
        return p / FINAL_NAME
    try:
        return find_resume_checkpoint(p)
    except CheckpointError:
        found = sorted(q.name for q in p.iterdir() if q.suffix in (".pt", ".safetensors"))[:3]
        hint = f" (it holds {found}: pass one of them)" if found else ""
        raise CheckpointError(f"{p} is a folder with no {FINAL_NAME} or {LAST_FILE}{hint}; pass a .pt or .safetensors "
                              "file or a `panoptic train` run folder.") from None


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seed the legacy global state too)
    torch.manual_seed(seed)


class Trainer:
    """One training run; :meth:`run` does the work. Use :func:`train` unless you need the pieces.

    Args:
        config: The run.
        info: Process info (default: joined from torchrun's environment by :func:`init_distributed`).
    """

    def __init__(self, config: TrainConfig, info: DistInfo) -> None:
        self.config = cfg = config
        self.info = info
        self.out_dir = Path(cfg.out_dir)
        self.train_set, self.val_set = build_datasets(cfg.data, cfg.seed, info)
        self.table: CategoryTable = self.train_set.table
        _seed_all(cfg.seed)  # identical initialization on every rank
        self.model = build_named_model(cfg.model, self.table, cfg.model_kwargs, cfg.pretrained).to(info.device).train()
        self.parts = model_parts(self.model)
        self.optimizers = {k: build_optimizer(p, cfg.optim) for k, p in self.parts.items()}
        self.schedulers = {k: build_scheduler(o, cfg.optim) for k, o in self.optimizers.items()}
        self.amp = cfg.amp and info.device.type == "cuda"  # float16: needs gradient scaling
        self.autocast = autocast_dtype(info.device, cfg.amp, cfg.cpu_amp)
        if self.autocast == torch.bfloat16 and info.is_main and not cpu_bf16_native():
            print("cpu_amp: this CPU has no bfloat16 hardware (AMX or AVX512-BF16), so bfloat16 autocast is emulated "
                  "and slower than float32; leave --cpu-amp (TrainConfig.cpu_amp) off unless you want its numerics",
                  file=sys.stderr)
        self.scalers = {k: torch.amp.GradScaler("cuda", enabled=self.amp) for k in self.parts}
        workers = cfg.data.num_workers
        self.num_workers = workers if workers is not None else (min(4, os.cpu_count() or 1)
                                                                if info.device.type == "cuda" else 0)
        self.iteration = 0
        self.metrics: dict[str, Any] = {}
        self.resume_differences: list[str] = []  # config changes accepted by resume(allow_config_change=True)
        self._seed_training()

    def _seed_training(self) -> None:
        _seed_all(self.config.seed * 1000 + 1 + self.info.rank)

    # ------------------------------------------------------------------------------------ resume
    def resume(self, path: str | Path, allow_config_change: bool = False) -> None:
        """Load weights, optimizer/scheduler/scaler states, RNG states and the iteration from a checkpoint.

        Args:
            path: The checkpoint.
            allow_config_change: Resume even if the checkpoint was trained with another config, thread count
                or number of processes (see :func:`~panoptic.engine.resume.check_resume`).

        Raises:
            CheckpointError: If the checkpoint is unreadable, for another model, for another category table,
                for another config (see :func:`~panoptic.engine.resume.check_resume`), ahead of
                ``config.iterations``, or has no optimizer state (a weights-only export).
        """
        obj = read_checkpoint(path, map_location="cpu")
        meta = obj["meta"]
        if meta.model != self.config.model:
            raise CheckpointError(f"{path} holds a {meta.model!r} model but this run trains {self.config.model!r}; "
                                  f"pass --model {meta.model} to resume it, or start a new run without --resume.")
        try:
            saved_table = meta.table
        except ValueError as e:
            raise CheckpointError(f"{path}: the checkpoint's category table is invalid ({e}); it cannot be resumed, "
                                  "start a new run without --resume.") from None
        check_table(saved_table, self.table, str(path))
        self.resume_differences = check_resume(
            path, meta.config, self.config.to_dict(), checkpoint_iteration=int(meta.iteration),
            saved_threads=meta.threads, threads=torch.get_num_threads(), saved_world_size=meta.world_size,
            world_size=self.info.world_size, allow_config_change=allow_config_change)
        if self.resume_differences and self.info.is_main:
            print(f"resuming {path} with a changed configuration: {'; '.join(self.resume_differences)}",
                  file=sys.stderr)
        load_state(self.model, obj["model"], path)
        for key, store in (("optimizers", self.optimizers), ("schedulers", self.schedulers)):
            saved = obj.get(key) or {}
            if set(saved) != set(store):
                raise CheckpointError(f"{path} has no {key[:-1]} state for {sorted(store)} (found {sorted(saved)}); "
                                      "it is a weights-only export and cannot be resumed: start a new run.")
            for name, s in saved.items():
                store[name].load_state_dict(s)
        if self.amp:
            for name, s in (obj.get("scalers") or {}).items():
                self.scalers[name].load_state_dict(s)
        rng = obj.get("rng") or []
        self._rng_to_restore = rng[self.info.rank] if self.info.rank < len(rng) else None
        self.iteration = int(meta.iteration)
        self.metrics = dict(meta.metrics)

    # ------------------------------------------------------------------------------------- steps
    def _wrapped_parts(self) -> dict[str, nn.Module]:
        if not self.info.distributed:
            return self.parts
        ids = [self.info.device.index] if self.info.device.type == "cuda" else None
        return {k: DistributedDataParallel(p, device_ids=ids,
                                           find_unused_parameters=self.config.dist.find_unused_parameters)
                for k, p in self.parts.items()}

    def _step(self, parts: Mapping[str, nn.Module], images: torch.Tensor,
              targets: list[Any]) -> dict[str, torch.Tensor]:
        dev = self.info.device
        x = self.model.normalize(images.to(dev, non_blocking=True))
        out: dict[str, torch.Tensor] = {}
        clip = self.config.optim.clip_grad_norm
        for name, part in parts.items():
            opt, scaler = self.optimizers[name], self.scalers[name]
            with (torch.autocast(dev.type, dtype=self.autocast) if self.autocast is not None else nullcontext()):
                losses = part(x, targets)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
            if not self.amp and not torch.isfinite(norm):
                vals = {k: round(float(v), 4) for k, v in losses.items()}
                raise FloatingPointError(f"non-finite gradients at iteration {self.iteration} in part {name!r} "
                                         f"(losses {vals}); lower --lr, keep gradient clipping on, or check the data.")
            scaler.step(opt)
            scaler.update()
            self.schedulers[name].step()
            prefix = "" if len(parts) == 1 else f"{name}/"
            out.update({prefix + k: v.detach() for k, v in losses.items()})
        return out

    def _evaluate(self) -> dict[str, Any]:
        if self.val_set is None:
            return {}
        cfg = self.config
        state = capture_rng_state(self.model)
        try:
            metrics = evaluate(self.model, self.val_set, self.table, info=self.info, batch_size=cfg.batch_size,
                               num_workers=self.num_workers, max_images=cfg.data.max_eval_images)
        finally:
            restore_rng_state(state, self.model)
            self.model.train()
        return metrics

    def save(self, path: Path) -> Path:
        """Write a resumable checkpoint (every rank must call it: RNG states are gathered; rank 0 writes)."""
        rng = all_gather_objects(capture_rng_state(self.model), self.info)
        if self.info.is_main:
            save_checkpoint(path, self.model, model_name=self.config.model, table=self.table,
                            model_kwargs=self.config.model_kwargs, config=self.config.to_dict(),
                            iteration=self.iteration, metrics=self.metrics,
                            optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
                            schedulers={k: s.state_dict() for k, s in self.schedulers.items()},
                            scalers={k: s.state_dict() for k, s in self.scalers.items()} if self.amp else None,
                            rng=rng, world_size=self.info.world_size, threads=torch.get_num_threads())
            atomic_write_text(self.out_dir / LAST_FILE, path.name + "\n")
            self._prune()
        barrier(self.info)
        return path

    def _prune(self) -> None:
        keep = self.config.keep_checkpoints
        if keep <= 0:
            return
        periodic = sorted(p for p in self.out_dir.glob("checkpoint_*.pt")
                          if re.fullmatch(r"checkpoint_\d+\.pt", p.name))
        for p in periodic[:-keep]:
            p.unlink(missing_ok=True)

    # --------------------------------------------------------------------------------------- run
    def run(self) -> TrainResult:
        """Train from ``self.iteration`` to ``config.iterations``; returns the :class:`TrainResult`."""
        cfg, info = self.config, self.info
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / "config.json")
        barrier(info)
        logger = MetricsLogger(self.out_dir, enabled=info.is_main, tensorboard=cfg.tensorboard)
        bar = ProgressBar(cfg.iterations, self.iteration, enabled=info.is_main, bar=cfg.progress)
        start = self.iteration
        loader = train_loader(self.train_set, cfg.batch_size, cfg.seed, info, start, cfg.iterations, self.num_workers)
        parts = self._wrapped_parts()
        state = getattr(self, "_rng_to_restore", None)
        if state is not None:
            restore_rng_state(state, self.model)
        window: dict[str, list[torch.Tensor]] = {}
        losses: dict[str, float] = {}
        t0 = t_log = time.perf_counter()
        n_log = 0
        stopped: Path | None = None
        stop = StopRequest().install()
        try:
            for images, targets in loader:
                step_losses = self._step(parts, images, targets)
                self.iteration += 1
                n_log += 1
                for k, v in step_losses.items():
                    window.setdefault(k, []).append(v)
                it = self.iteration
                last = it == cfg.iterations
                if it % cfg.log_every == 0 or last:
                    losses = self._reduce_losses(window)
                    now = time.perf_counter()
                    self._log_losses(losses, (now - t_log) / max(n_log, 1), logger, bar)
                    window, n_log, t_log = {}, 0, now
                bar.update(1, loss=f"{losses['total'] if losses else self._step_total(step_losses, bar):.3f}")
                if (cfg.eval_every and it % cfg.eval_every == 0) or (last and cfg.eval_at_end):
                    self._evaluate_and_log(logger, bar)
                periodic = cfg.checkpoint_every and it % cfg.checkpoint_every == 0
                if periodic and not last:
                    self.save(self.out_dir / f"checkpoint_{it:07d}.pt")
                if not last and self._stop_requested(stop):
                    stopped = self.out_dir / f"checkpoint_{it:07d}.pt"
                    if not periodic:
                        self.save(stopped)
                    break
        finally:
            stop.restore()
            bar.close()
            logger.close()
        if stopped is not None:
            raise TrainingInterrupted(stopped, self.iteration, cfg.iterations, self.out_dir)
        seconds = time.perf_counter() - t0
        final = self.save(self.out_dir / FINAL_NAME)
        if cfg.debug_rank_digest:
            atomic_write_text(self.out_dir / f"rank{info.rank}.sha256", parameter_digest(self.model) + "\n")
        done = self.iteration - start
        return TrainResult(checkpoint=final, out_dir=self.out_dir, metrics=self.metrics, iterations=self.iteration,
                           losses=losses, seconds=seconds,
                           images_per_second=done * cfg.batch_size * info.world_size / seconds if done else 0.0)

    def _log_losses(self, losses: dict[str, float], sec_per_it: float, logger: MetricsLogger,
                    bar: ProgressBar) -> None:
        """Log the window's mean losses, learning rates and speed (and print them without a progress bar)."""
        cfg, it = self.config, self.iteration
        record = {"type": "train", "iteration": it, "loss": losses["total"],
                  "losses": {k: v for k, v in losses.items() if k != "total"},
                  "lr": {k: s.get_last_lr()[0] for k, s in self.schedulers.items()},
                  "sec_per_iter": sec_per_it,
                  "images_per_sec": cfg.batch_size * self.info.world_size / max(sec_per_it, 1e-9),
                  "eta_s": sec_per_it * (cfg.iterations - it)}
        logger.log(record)
        if not bar.active:
            bar.write(f"iter {it}/{cfg.iterations}  loss {losses['total']:.4f}  "
                      f"lr {record['lr'][next(iter(record['lr']))]:.2e}  "
                      f"{record['images_per_sec']:.1f} img/s  eta {format_eta(record['eta_s'])}")

    def _evaluate_and_log(self, logger: MetricsLogger, bar: ProgressBar) -> None:
        """Evaluate on the validation split, log the metrics and print a summary line."""
        self.metrics = self._evaluate()
        if not self.metrics:
            return
        it, m = self.iteration, self.metrics
        logger.log({"type": "eval", "iteration": it, **{k: v for k, v in m.items() if k != "per_class"},
                    "per_class": m["per_class"]})
        bar.write(f"eval @ {it}: PQ {100 * m['pq']:.1f}  SQ {100 * m['sq']:.1f}  RQ {100 * m['rq']:.1f}"
                  f"  PQ_th {100 * m['pq_th']:.1f}  PQ_st {100 * m['pq_st']:.1f}  "
                  f"mIoU {100 * m['miou']:.1f}  ({m['num_images']} images)")

    def _stop_requested(self, stop: StopRequest) -> bool:
        """Whether any process got Ctrl-C (every rank must stop at the same iteration to save together)."""
        if not self.info.distributed:
            return stop.requested
        flag = all_reduce_sum({"stop": torch.tensor(float(stop.requested))}, self.info)["stop"]
        return bool(flag > 0)

    @staticmethod
    def _step_total(step_losses: Mapping[str, torch.Tensor], bar: ProgressBar) -> float:
        """This step's total loss for the bar before the first logging window closes (no sync without a bar)."""
        return float(sum(v.float() for v in step_losses.values())) if bar.active else math.nan

    def _reduce_losses(self, window: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        means = {k: torch.stack(v).float().mean().cpu() for k, v in window.items()}
        if self.info.distributed:
            summed = all_reduce_sum(means, self.info)
            means = {k: v / self.info.world_size for k, v in summed.items()}
        out = {k: float(v) for k, v in means.items()}
        out["total"] = sum(out.values())
        return out


def train(config: TrainConfig, resume: str | Path | bool | None = None,
          allow_config_change: bool = False) -> TrainResult:
    """Train a model as described by ``config`` (one process, or every process of a ``torchrun`` launch).

    Seeds torch, numpy and Python ``random`` (global state) from ``config.seed``; ``config.threads`` applies
    during the call only.

    Args:
        config: The run.
        resume: A checkpoint path to continue from, ``True`` for the latest one in ``config.out_dir``, or
            ``None``/``False`` to start from scratch.
        allow_config_change: Resume even if the checkpoint's config, thread count or number of processes differ
            from this run's (otherwise a :class:`CheckpointError` lists the differences).

    Returns:
        The final checkpoint path, the last evaluation's metrics and throughput.

    Raises:
        CheckpointError: If ``resume`` names an unusable checkpoint (see :meth:`Trainer.resume`).
        TrainingInterrupted: If Ctrl-C stopped the run (after saving a resumable checkpoint at the end of the
            iteration it was in).
    """
    info = init_distributed(config.device, config.dist.backend, config.dist.timeout_s)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        trainer = Trainer(config, info)
        if resume:
            path = find_resume_checkpoint(config.out_dir) if resume is True else Path(resume)
            trainer.resume(path, allow_config_change=allow_config_change)
            if info.is_main:
                print(f"resuming from {path} at iteration {trainer.iteration}", flush=True)
        return trainer.run()
    finally:
        torch.set_num_threads(threads)
        info.close()
