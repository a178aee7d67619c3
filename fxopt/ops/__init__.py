"""The custom ops the rewritten graphs call, each with its reference beside it.

Low-bit storage of saved activations (fp8 e4m3 / int8): importing this package registers
``torch.ops.fxopt.quantize`` and ``torch.ops.fxopt.dequantize`` (``lowbit.py``); it needs neither
Triton nor CUDA. The Triton kernels (``triton_quant.py``) are imported on first use with a CUDA
tensor; ``reference.py`` is the pure-torch spec. CPU offload and prefetch
(``torch.ops.fxopt.offload/prefetch/wait_``) are registered by ``offload.py``.
"""

from __future__ import annotations

from .lowbit import dequantize, quantize, triton_available, triton_on_cpu
from .reference import BLOCK_SIZE, FORMATS, GRANULARITIES, group_shape, payload_dtype, qmax

__all__ = [
    "BLOCK_SIZE",
    "FORMATS",
    "GRANULARITIES",
    "dequantize",
    "group_shape",
    "payload_dtype",
    "qmax",
    "quantize",
    "triton_available",
    "triton_on_cpu",
]
