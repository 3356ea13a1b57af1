"""The autocast a training step runs under: float16 on CUDA (``amp``), bfloat16 on the CPU (``cpu_amp``), or none.

bfloat16 keeps float32's exponent range, so the CPU path needs no gradient scaling. It pays off only where the CPU
computes bfloat16 in hardware (Intel AMX or AVX512-BF16, through oneDNN): there a ``cpu_small`` training step of
``panoptic compare`` took 0.49-0.76x of its float32 time, depending on the network and on the moment (the float32
speed of a shared host moves; docs/benchmarks.md, ``benchmarks/training_precision.py``); elsewhere bfloat16 is
emulated and slower than float32.
"""

from __future__ import annotations

import torch

# Machinery of the trainer (the public switch is TrainConfig.cpu_amp / CompareConfig.cpu_amp).
__all__: list[str] = []


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 matrix products and convolutions in hardware (AMX or AVX512-BF16).

    Example:
        >>> isinstance(cpu_bf16_native(), bool)
        True
    """
    try:  # oneDNN's own test: the kernels it would pick, not only the CPU flags
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def autocast_dtype(device: torch.device, amp: bool, cpu_amp: bool) -> torch.dtype | None:
    """The dtype of the training step's autocast on ``device``, or ``None`` for float32.

    Args:
        device: The training device.
        amp: float16 autocast on CUDA (with gradient scaling).
        cpu_amp: bfloat16 autocast on the CPU (no gradient scaling).

    Example:
        >>> autocast_dtype(torch.device("cpu"), amp=True, cpu_amp=False) is None
        True
        >>> autocast_dtype(torch.device("cpu"), amp=True, cpu_amp=True)
        torch.bfloat16
    """
    if device.type == "cuda":
        return torch.float16 if amp else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_amp else None
    return None
