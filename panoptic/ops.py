"""Public switch between the plain torch implementation of the fusion primitives and their C kernels.

Example:
    >>> import panoptic.ops
    >>> with panoptic.ops.backend("torch"):  # the specification, as on a GPU
    ...     pass
"""

from ._ops.switch import BackendName, backend, current_backend  # noqa: F401

# Imports marked `noqa: F401` stay importable for existing code but are not API (not in __all__).
__all__ = ["backend"]
