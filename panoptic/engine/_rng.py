"""Every RNG state of a process (torch, CUDA, numpy, Python, the model's generators), for exact resumption."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper, or ``model`` itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def capture_rng_state(model: nn.Module | None = None) -> dict[str, Any]:
    """This process's RNG states as tensors and numbers: torch (CPU and CUDA), numpy, Python ``random`` and
    every ``torch.Generator`` attribute of ``model``'s modules (e.g. UPSNet's unknown-sampling generator)."""
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global state is what we save)
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "generators": {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    if model is not None:
        for name, m in unwrap_model(model).named_modules():
            for attr, v in vars(m).items():
                if isinstance(v, torch.Generator) and v.device.type == "cpu":
                    state["generators"][f"{name}.{attr}" if name else attr] = v.get_state()
    return state


def restore_rng_state(state: Mapping[str, Any], model: nn.Module | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    if model is not None:
        gens = state.get("generators", {})
        for name, m in unwrap_model(model).named_modules():
            for attr, v in vars(m).items():
                key = f"{name}.{attr}" if name else attr
                if isinstance(v, torch.Generator) and key in gens:
                    v.set_state(gens[key].cpu())
