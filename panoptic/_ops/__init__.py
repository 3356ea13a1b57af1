"""Accelerated primitives of the fusions, one typed function per file (private; see ``docs/concepts/ops.md``).

Every primitive has exactly one plain, device-agnostic torch implementation, which is its specification and the
path on every device but the CPU, and optionally a C kernel for contiguous float32 CPU tensors
(``panoptic.fusion._kernels``). :func:`panoptic.ops.backend` picks between them.
"""

from .argmax import first_argmax_keys
from .keys import count_keys, relabel_keys
from .overlap import overlap_flags
from .switch import BackendName, backend, current_backend, native_kernels
from .upsnet import upsnet_keys

__all__ = ["BackendName", "backend", "count_keys", "current_backend", "first_argmax_keys", "native_kernels",
           "overlap_flags", "relabel_keys", "upsnet_keys"]
