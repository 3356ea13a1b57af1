"""SGD parameter groups and UPSNet's warmup + step learning-rate schedule (reference §7.2).

UPSNet's Caffe-style SGD accumulates ``lr * grad`` in the momentum buffer and divides the buffers by 10 at
each decay step. PyTorch's SGD accumulates ``grad`` and multiplies by the current ``lr``, which is the same
update at constant ``lr`` and at the step decays (the division is implicit); only the warmup differs, by
the tiny lag of the buffer's learning rate.

Example:
    >>> sched = WarmupStepSchedule(warmup_iters=10, warmup_factor=0.1, steps=(20, 30), gamma=0.1)
    >>> [round(sched(i), 3) for i in (0, 5, 10, 19, 20, 30)]
    [0.1, 0.55, 1.0, 1.0, 0.1, 0.01]
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import OptimConfig

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass
class WarmupStepSchedule:
    """Learning-rate factor of iteration ``i`` (a ``LambdaLR`` lambda; its state is plain numbers).

    Linear warmup from ``warmup_factor`` to 1 over ``warmup_iters`` iterations, times ``gamma`` per step
    already passed (``i >= step``).

    Attributes:
        warmup_iters: Warmup length.
        warmup_factor: Factor at iteration 0.
        steps: Decay iterations.
        gamma: Decay factor.
    """

    warmup_iters: int = 0
    warmup_factor: float = 0.1
    steps: Sequence[int] = ()
    gamma: float = 0.1

    def __call__(self, iteration: int) -> float:
        decay = self.gamma ** bisect.bisect_right(list(self.steps), iteration)
        if iteration >= self.warmup_iters:
            return decay
        alpha = iteration / self.warmup_iters
        return decay * (self.warmup_factor * (1 - alpha) + alpha)


def param_groups(module: nn.Module, config: OptimConfig) -> list[dict[str, object]]:
    """Trainable parameters split into weights, biases and normalization parameters.

    Returns:
        Up to three groups ``{"name", "params", "lr", "weight_decay"}``: ``weight`` (``lr``, ``weight_decay``),
        ``bias`` (``lr * bias_lr_factor``, ``bias_weight_decay``), ``norm`` (scales and shifts of
        batch/group/layer norms: ``lr``, ``norm_weight_decay``). Empty groups are left out.
    """
    norm_params = {id(p) for m in module.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    groups: dict[str, list[nn.Parameter]] = {"weight": [], "bias": [], "norm": []}
    seen: set[int] = set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in norm_params:
            groups["norm"].append(p)
        elif name.endswith("bias"):
            groups["bias"].append(p)
        else:
            groups["weight"].append(p)
    settings = {"weight": (config.lr, config.weight_decay),
                "bias": (config.lr * config.bias_lr_factor, config.bias_weight_decay),
                "norm": (config.lr, config.norm_weight_decay)}
    return [{"name": k, "params": v, "lr": settings[k][0], "weight_decay": settings[k][1]}
            for k, v in groups.items() if v]


def build_optimizer(module: nn.Module, config: OptimConfig) -> torch.optim.SGD:
    """SGD (momentum ``config.momentum``) over :func:`param_groups`.

    Raises:
        ValueError: If the module has no trainable parameter.
    """
    groups = param_groups(module, config)
    if not groups:
        raise ValueError(f"{type(module).__name__} has no trainable parameters to optimize.")
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)  # type: ignore[arg-type]


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :class:`WarmupStepSchedule`; call ``.step()`` once per iteration, after the optimizer."""
    schedule = WarmupStepSchedule(config.warmup_iters, config.warmup_factor, tuple(config.steps), config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
