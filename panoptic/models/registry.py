"""The builder registry: ``@register_model`` adds a builder under its function name (as timm's ``register_model``).

Example:
    >>> from panoptic.data import synthetic_categories
    >>> "upsnet_cpu_small" in MODELS
    True
    >>> type(build_model("upsnet_c_cpu_small", synthetic_categories(), fpn_channels=8)).__name__
    'UPSNet'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from ..categories import CategoryTable
from .types import LossWeights

__all__ = [
    "MODELS",
    "build_model",
    "register_model",
]

MODELS: dict[str, Callable[..., nn.Module]] = {}
"""Builder registry for the command line: name -> ``builder(table, pretrained=False, **kwargs)``."""

_Builder = TypeVar("_Builder", bound=Callable[..., nn.Module])


def register_model(builder: _Builder) -> _Builder:
    """Decorator: register ``builder`` in :data:`MODELS` under its ``__name__``.

    Raises:
        ValueError: If another builder already has that name.
    """
    name = builder.__name__
    if name in MODELS and MODELS[name] is not builder:
        raise ValueError(f"a model called {name!r} is already registered; give the builder another name.")
    MODELS[name] = builder
    return builder


def build_model(name: str, table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.")
    return MODELS[name](table, pretrained, **kwargs)


def build_model_from_kwargs(name: str, table: CategoryTable, model_kwargs: Mapping[str, Any] | None = None,
                            pretrained: bool = False) -> nn.Module:
    """:func:`build_model` with JSON keyword arguments (as configs and checkpoints store them): a ``loss_weights``
    dict becomes :class:`~panoptic.models.LossWeights`.

    Raises:
        ValueError: For an unknown name, or builder arguments it does not take.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; this version of panoptic knows {sorted(MODELS)}.")
    kwargs = dict(model_kwargs or {})
    if isinstance(kwargs.get("loss_weights"), dict):
        kwargs["loss_weights"] = LossWeights(**kwargs["loss_weights"])
    try:
        return build_model(name, table, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise ValueError(f"model {name!r} does not accept the arguments {sorted(kwargs)} ({e}).") from None
