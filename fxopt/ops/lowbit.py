"""The ``torch.ops.fxopt.quantize`` / ``torch.ops.fxopt.dequantize`` custom ops.

    payload, scales = torch.ops.fxopt.quantize(x, fmt, granularity)
    y = torch.ops.fxopt.dequantize(payload, scales, granularity, dtype)

``fmt`` is ``"fp8"`` (``torch.float8_e4m3fn`` payload) or ``"int8"``; ``granularity`` is ``"row"``
(one fp32 scale per row of the last dimension) or ``"block"`` (one per ``BLOCK_SIZE`` = 128
consecutive elements). The payload has the input's shape, so ``dequantize`` needs no shape
argument; the format is read from the payload's dtype. Neither op mutates its inputs, so a graph
pass can insert them as plain functional nodes. Semantics (NaN, Inf, zeros, rounding):
NOTE [Low-bit quantisation semantics] in ``reference.py``.

# NOTE [How the ops dispatch]
Both are ``torch.library.triton_op``s (plain ``custom_op``s where Triton is not installed), so
one Python function is the eager implementation for every device *and* the fake/meta
implementation *and*, with Triton installed, what AOTAutograd traces under ``torch.compile``
(without Triton the op stays opaque in the graph and runs the reference). It picks:

- CUDA tensors (and Triton importable): the Triton kernels. Under ``torch.compile`` AOTAutograd
  traces them through ``wrap_triton``, so Inductor compiles the kernel into the graph.
  Exception: ``dequantize`` while being traced (functional tensors) uses the pure-torch reference
  instead, which Inductor lowers to pointwise code and fuses with the consumer of the
  dequantised tensor; both paths produce the same bits.
- Anything else (CPU, meta, fake CPU tensors, no Triton installed): the pure-torch reference, which
  under ``torch.compile`` on CPU Inductor compiles into C++ like any other aten code.

``triton_on_cpu()`` routes real (not fake, not traced) CPU tensors to the Triton kernels too; it
exists for tests run under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.library import triton_op

from . import reference as ref

_state = {"triton_on_cpu": False}


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed (checked once, without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out installation
        return False


def _define(name: str) -> Callable[[Callable[..., Any]], Any]:
    """``triton_op`` where Triton is installed; otherwise a plain ``custom_op`` with the same
    function as eager and fake implementation (the reference path), so nothing changes for users."""

    def wrap(fn: Callable[..., Any]) -> Any:
        if triton_available():
            return triton_op(name, fn, mutates_args=())
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fn)
        return op

    return wrap


@contextlib.contextmanager
def triton_on_cpu(enabled: bool = True) -> Iterator[None]:
    """Run the Triton kernels on CPU tensors (only meaningful with ``TRITON_INTERPRET=1``)."""
    if enabled and not triton_available():
        raise RuntimeError(
            "triton_on_cpu() needs Triton: pip install triton (it has no torch dependency)"
        )
    previous = _state["triton_on_cpu"]
    _state["triton_on_cpu"] = enabled
    try:
        yield
    finally:
        _state["triton_on_cpu"] = previous


def _use_triton(t: torch.Tensor) -> bool:
    if t.device.type == "cuda":
        return triton_available()
    if t.device.type != "cpu" or not _state["triton_on_cpu"]:
        return False
    # The interpreter launches kernels eagerly (wrap_triton cannot trace an interpreted kernel):
    # traced CPU tensors keep using the reference.
    from fxopt.compat import is_fake

    return not is_fake(t) and not _is_functional(t)


def _is_functional(t: torch.Tensor) -> bool:
    from fxopt.compat import functional_tensor_type

    FunctionalTensor = functional_tensor_type()

    return isinstance(t, FunctionalTensor)


@_define("fxopt::quantize")
def quantize(x: torch.Tensor, fmt: str, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` to ``fmt`` with ``granularity`` scales; returns ``(payload, scales)``."""
    ref.check_input(x, fmt, granularity)
    if _use_triton(x):
        from . import triton_quant

        return triton_quant.quantize(x, fmt, granularity)
    return ref.quantize(x, fmt, granularity)


@_define("fxopt::dequantize")
def dequantize(
    payload: torch.Tensor, scales: torch.Tensor, granularity: str, dtype: torch.dtype
) -> torch.Tensor:
    """Dequantise ``(payload, scales)`` from :func:`quantize` back to a ``dtype`` tensor."""
    ref.check_payload(payload, scales, granularity, dtype)
    if _use_triton(payload) and not _is_functional(payload):
        from . import triton_quant

        return triton_quant.dequantize(payload, scales, granularity, dtype)
    return ref.dequantize(payload, scales, granularity, dtype)
