"""The one backend switch: plain torch or the C kernels, held in a context variable (not a module global)."""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Literal

#: The ``API_VERSION`` of ``panoptic/fusion/_kernels.c`` these sources call (raised with every entry point added or
#: changed there).
API_VERSION = 3


def _checked(module: ModuleType | None) -> ModuleType | None:
    """``module`` if it was built from these sources, else ``None`` with a warning: an editable install whose
    sources moved on since its last build would otherwise call the kernels with the wrong arguments. The torch
    path gives the same results, only slower, until the extension is rebuilt."""
    if module is None or getattr(module, "API_VERSION", None) == API_VERSION:
        return module
    warnings.warn(f"panoptic.fusion._kernels was built from other sources (API_VERSION "
                  f"{getattr(module, 'API_VERSION', 'none')}, these sources need {API_VERSION}); the fusions use "
                  "their torch path (same results, slower) until you rebuild it: `pip install -e .` or "
                  "`python setup.py build_ext --inplace`.", RuntimeWarning, stacklevel=2)
    return None


try:
    from ..fusion import _kernels as _found
except ImportError:  # pragma: no cover - the extension is optional (no C compiler at install time)
    _found = None
_built = _checked(_found)

__all__ = ["API_VERSION", "BackendName", "backend", "current_backend", "native_kernels"]

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
        if _found is not None:
            raise RuntimeError("backend('native') needs the C extension panoptic.fusion._kernels built from these "
                               "sources, and the one installed is older: rebuild it with `pip install -e .` or "
                               "`python setup.py build_ext --inplace`, or use backend('auto').")
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
