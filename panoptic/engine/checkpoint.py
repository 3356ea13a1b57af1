"""Checkpoints that hold weights, config and the category table, and load without unpickling objects.

A checkpoint is a dict of tensors and plain data saved with ``torch.save`` (``.pt``)::

    {"format": "panoptic-checkpoint", "version": 1,
     "meta": "<JSON: model name, builder kwargs, COCO categories, iteration, config, metrics, ...>",
     "model": state_dict,
     "optimizers": {part: state}, "schedulers": {part: state}, "scalers": {part: state},   # for --resume
     "rng": [per-rank RNG states as tensors]}                                                # for --resume

so ``torch.load(path, weights_only=True)`` reads it. A ``.safetensors`` file holds the weights with the same
JSON metadata (no optimizer state: for inference and sharing). Both are written to a temporary file and renamed
into place (:mod:`panoptic.atomic`), so an interrupted save never leaves a half-written checkpoint. The loader is
chosen by the file's content, not its suffix. Every failure to load raises a
:class:`CheckpointError` that says what is wrong and what to do.

Example:
    >>> import tempfile
    >>> from panoptic.data import synthetic_categories
    >>> table = synthetic_categories()
    >>> model = build_named_model("upsnet_cpu_small", table, {"fpn_channels": 8})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = save_checkpoint(f"{d}/m.pt", model, model_name="upsnet_cpu_small", table=table,
    ...                            model_kwargs={"fpn_channels": 8})
    ...     model2, table2, meta = load_checkpoint(path)
    >>> table2 == table, meta.model
    (True, 'upsnet_cpu_small')
"""

from __future__ import annotations

import json
import pickle
import struct
import time
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_write, atomic_write_bytes
from ..categories import CategoryTable
from ..errors import CheckpointError
from ..models import MODELS
from ..models.registry import build_model_from_kwargs
from ._rng import unwrap_model
from ._table_check import check_table

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "panoptic-checkpoint"
VERSION = 1
_ST_SEP = "::"  # safetensors key separator for non-tensor state_dict entries (extra state dicts)


@dataclass
class CheckpointMeta:
    """The JSON part of a checkpoint.

    Attributes:
        model: Builder name in :data:`panoptic.models.MODELS`.
        model_kwargs: JSON keyword arguments of the builder.
        categories: The category table as a COCO ``categories`` list (channel order).
        iteration: Completed training iterations.
        config: The :class:`~panoptic.engine.config.TrainConfig` as a dict, when trained by the engine.
        metrics: Latest evaluation results.
        world_size: Processes of the run that wrote it.
        threads: torch CPU threads of the run that wrote it (``None``: not recorded).
        panoptic_version: Library version that wrote it.
        torch_version: torch version that wrote it.
        created: Unix time of writing.
    """

    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    categories: list[dict[str, Any]] = field(default_factory=list)
    iteration: int = 0
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    threads: int | None = None
    panoptic_version: str = __version__
    torch_version: str = torch.__version__
    created: float = 0.0

    @property
    def table(self) -> CategoryTable:
        """The category table."""
        return CategoryTable.from_coco(self.categories)


# ------------------------------------------------------------------------------------------- models
def build_named_model(name: str, table: CategoryTable, model_kwargs: Mapping[str, Any] | None = None,
                      pretrained: bool = False) -> nn.Module:
    """:func:`~panoptic.models.build_model_from_kwargs` with its errors as :class:`CheckpointError`. Checkpoint
    loading keeps ``pretrained=False``: the weights come from the checkpoint.

    Raises:
        CheckpointError: For an unknown name or builder arguments it does not take.
    """
    try:
        return build_model_from_kwargs(name, table, model_kwargs, pretrained)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


# --------------------------------------------------------------------------------------------- save
def save_checkpoint(path: str | Path, model: nn.Module, *, model_name: str, table: CategoryTable,
                    model_kwargs: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                    iteration: int = 0, metrics: Mapping[str, Any] | None = None,
                    optimizers: Mapping[str, Any] | None = None, schedulers: Mapping[str, Any] | None = None,
                    scalers: Mapping[str, Any] | None = None, rng: list[dict[str, Any]] | None = None,
                    world_size: int = 1, threads: int | None = None) -> Path:
    """Write a checkpoint atomically (:func:`~panoptic.atomic.atomic_write`: a disk-full or file-size failure is an
    ``OSError`` naming ``path``, and the previous file at ``path`` stays as it was).

    A ``.safetensors`` suffix writes the weights and metadata only (``optimizers``, ``schedulers``,
    ``scalers`` and ``rng`` are then not saved); anything else is a ``torch.save`` file.

    Args:
        path: Destination.
        model: The model (a DDP wrapper is unwrapped).
        model_name: Its builder name in :data:`panoptic.models.MODELS`.
        table: Its category table.
        model_kwargs: JSON builder kwargs that rebuild it.
        config: The training config as a dict.
        iteration: Completed iterations.
        metrics: Latest evaluation results (JSON).
        optimizers: Part name -> ``optimizer.state_dict()``.
        schedulers: Part name -> ``scheduler.state_dict()``.
        scalers: Part name -> ``GradScaler.state_dict()``.
        rng: Per-rank :func:`capture_rng_state` results.
        world_size: Processes of the run.
        threads: torch CPU threads of the run (checked by ``--resume``).

    Returns:
        ``path``.
    """
    path = Path(path)
    meta = CheckpointMeta(model=model_name, model_kwargs=dict(model_kwargs or {}), categories=table.to_coco(),
                          iteration=int(iteration), config=dict(config) if config is not None else None,
                          metrics=dict(metrics or {}), world_size=world_size, threads=threads,
                          created=time.time())
    meta_json = json.dumps(asdict(meta))
    own = unwrap_model(model).state_dict()
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in own.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        data = save(_flatten(state), metadata={"format": FORMAT, "version": str(VERSION), "meta": meta_json})
        return atomic_write_bytes(path, data)
    obj: dict[str, Any] = {"format": FORMAT, "version": VERSION, "meta": meta_json, "model": state}
    for key, value in (("optimizers", optimizers), ("schedulers", schedulers), ("scalers", scalers), ("rng", rng)):
        if value is not None:
            obj[key] = value
    return atomic_write(path, lambda f: torch.save(obj, f))


def _flatten(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            flat[k] = v.contiguous().clone()
        elif isinstance(v, Mapping) and all(isinstance(t, torch.Tensor) for t in v.values()):
            for sub, t in v.items():
                flat[f"{k}{_ST_SEP}{sub}"] = t.contiguous().clone()
        else:
            raise CheckpointError(f"state_dict entry {k!r} is a {type(v).__name__}; safetensors holds only tensors, "
                                  "save a .pt checkpoint instead.")
    return flat


def _unflatten(flat: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for k, v in flat.items():
        if _ST_SEP in k:
            key, sub = k.split(_ST_SEP, 1)
            state.setdefault(key, {})[sub] = v
        else:
            state[k] = v
    return state


# --------------------------------------------------------------------------------------------- read
def _kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        n = struct.unpack("<Q", head[:8])[0]
        if 0 < n <= path.stat().st_size - 8:
            return "safetensors"
        return "truncated-safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint file with ``torch.load(weights_only=True)`` or safetensors.

    Returns:
        The checkpoint dict with ``meta`` parsed into a :class:`CheckpointMeta` (safetensors files give
        ``{"format", "version", "meta", "model"}``).

    Raises:
        CheckpointError: If the file is missing, truncated or corrupt, is not a panoptic checkpoint (e.g. a
            plain state dict or a pickled object), or comes from a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass the path of a .pt or .safetensors file written by "
                              "`panoptic train` (e.g. runs/panoptic/model_final.pt).")
    kind = _kind(path)
    what = f"{path} is not a panoptic checkpoint"
    if kind == "unknown":
        raise CheckpointError(f"{what}: it is neither a torch.save zip file nor a safetensors file (wrong file?).")
    if kind == "pickle":
        raise CheckpointError(f"{what}: it is a legacy pickled torch file, which would have to be unpickled; "
                              "panoptic only loads checkpoints written by `panoptic train` / save_checkpoint.")
    if kind == "truncated-safetensors":
        raise CheckpointError(f"{path} is a truncated or corrupt safetensors file; re-copy or re-export it.")
    if kind == "safetensors":
        obj = _read_safetensors(path, map_location)
    else:
        obj = _read_torch(path, map_location)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        hint = (" It looks like a plain state_dict: load it with model.load_state_dict(torch.load(path, "
                "weights_only=True)), or rebuild a panoptic checkpoint with save_checkpoint(...)."
                if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()) else "")
        raise CheckpointError(f"{what} (no 'format': '{FORMAT}' entry; found {keys}).{hint}")
    version = int(obj.get("version", 0))
    if version > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}, newer than this panoptic "
                              f"({__version__}) reads (<= {VERSION}); upgrade panoptic.")
    try:
        obj["meta"] = CheckpointMeta(**json.loads(obj["meta"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the checkpoint's metadata is corrupt ({e}); re-export the "
                              "checkpoint.") from None
    if not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path}: the checkpoint holds no model weights.")
    return obj


def _read_torch(path: Path, map_location: str | torch.device) -> Any:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise CheckpointError(f"{path} is corrupt (member {bad} fails its CRC check); re-copy the file or use an "
                                  "earlier checkpoint.")
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); the save was interrupted or the copy is "
                              "incomplete: re-copy it or use an earlier checkpoint.") from None
    try:
        # An open file, not the path: torch.load picks a loader by the path's suffix, and the kind is the content's.
        with open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a panoptic checkpoint: it holds Python objects that only a full "
                              f"unpickle could load, which panoptic refuses for safety ({first}).") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:200]}); re-copy it "
                              "or use an earlier checkpoint.") from None


def _read_safetensors(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    device = str(map_location) if not isinstance(map_location, str) else map_location
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is a truncated or corrupt safetensors file ({e}); re-copy or re-export "
                              "it.") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a panoptic checkpoint (no 'format': '{FORMAT}' "
                              "metadata); export one with save_checkpoint(path.safetensors, ...).")
    return {"format": FORMAT, "version": int(metadata.get("version", "0")), "meta": metadata.get("meta", ""),
            "model": _unflatten(flat)}


# --------------------------------------------------------------------------------------------- load
def load_state(model: nn.Module, state: Mapping[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(state)`` with a :class:`CheckpointError` naming missing/unexpected/mismatched keys."""
    own = unwrap_model(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and isinstance(v, torch.Tensor) and isinstance(state[k], torch.Tensor)
              and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{name} {vals[:4]}{' ...' if len(vals) > 4 else ''}" for name, vals in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if vals]
        raise CheckpointError(f"{path}: the weights do not fit the model ({'; '.join(parts)}); the checkpoint was "
                              "written for a different model or model_kwargs.")
    unwrap_model(model).load_state_dict(dict(state))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, model_name: str | None = None,
                    table: CategoryTable | None = None) -> tuple[nn.Module, CategoryTable, CheckpointMeta]:
    """Rebuild the model a checkpoint was written for and load its weights.

    Args:
        path: A ``.pt`` or ``.safetensors`` checkpoint.
        map_location: Device of the loaded tensors and of the returned model.
        model_name: If given, the checkpoint must be for this model.
        table: If given, the checkpoint's category table must match it (e.g. the evaluation data's).

    Returns:
        ``(model in eval mode, category table, metadata)``.

    Raises:
        CheckpointError: See :func:`read_checkpoint`; also for a different model name or category table.
    """
    obj = read_checkpoint(path, map_location)
    meta: CheckpointMeta = obj["meta"]
    if meta.model not in MODELS:
        raise CheckpointError(f"{path} was written for model {meta.model!r}, which this version of panoptic does not "
                              f"know (known: {sorted(MODELS)}); load it with the panoptic version that wrote it "
                              f"({meta.panoptic_version}).")
    if model_name is not None and meta.model != model_name:
        raise CheckpointError(f"{path} holds a {meta.model!r} model, not {model_name!r}; pass --model {meta.model} "
                              "or a checkpoint of the model you want.")
    try:
        ckpt_table = meta.table
    except ValueError as e:
        raise CheckpointError(f"{path}: the checkpoint's category table is invalid ({e}).") from None
    if table is not None:
        check_table(ckpt_table, table, str(path))
    model = build_named_model(meta.model, ckpt_table, meta.model_kwargs)
    load_state(model, obj["model"], path)
    return model.to(map_location).eval(), ckpt_table, meta
