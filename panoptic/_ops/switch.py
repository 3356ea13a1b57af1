"""The one backend switch: plain torch or the C kernels, held in a context variable (not a module global)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from types import ModuleType
from typing import Literal

try:
    from ..fusion import _kernels as _built
except ImportError:  # pragma: no cover - the extension is optional (no C compiler at install time)
    _built = None

__all__ = ["BackendName", "backend", "current_backend", "native_kernels"]

BackendName = Literal["torch", "native", "auto"]
_NAMES = ("torch", "native", "auto")
_BACKEND: contextvars.ContextVar[BackendName] = contextvars.ContextVar("panoptic_ops_backend", default="auto")


@contextlib.contextmanager
def backend(name: BackendName) -> Iterator[None]:
    """Select the implementation of the fusion primitives inside a ``with`` block (per thread and task).

    Args:
        name: ``"torch"`` (the plain torch specification, on every device), ``"native"`` (the C kernels for
            contiguous float32 CPU tensors, required to be built; other inputs still take torch) or ``"auto"``
            (the default: the C kernels when built and the input suits them, else torch).

    Raises:
        ValueError: Unknown name.
        RuntimeError: ``"native"`` without the built C extension.

    Example:
        >>> import panoptic.ops
        >>> with panoptic.ops.backend("torch"):
        ...     panoptic.ops.current_backend()
        'torch'
    """
    if name not in _NAMES:
        raise ValueError(f"backend must be one of {_NAMES}, got {name!r}.")
    if name == "native" and _built is None:
        raise RuntimeError("backend('native') needs the C extension panoptic.fusion._kernels, which is not built: "
                           "install a C compiler and run `python setup.py build_ext --inplace` (or reinstall), "
                           "or use backend('auto').")
    token = _BACKEND.set(name)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def current_backend() -> BackendName:
    """The backend selected by the innermost :func:`backend` block (``"auto"`` outside any)."""
    return _BACKEND.get()


def native_kernels() -> ModuleType | None:
    """The C kernel module if the current backend may use it (and it is built), else ``None``."""
    return None if _BACKEND.get() == "torch" else _built
