"""Store chosen saved tensors in fp8 / int8: quantise in forward, dequantise before first use."""

from __future__ import annotations

import torch
import torch.fx as fx

import fxopt.ops  # noqa: F401 - registers torch.ops.fxopt.quantize / dequantize
from fxopt.ops import reference as ref
from fxopt.passes.boundary import call, getitem, inline, replace_saved
from fxopt.plan import LowbitFormat

GRANULARITY = "block"  # one scale per 128 consecutive elements: any shape, robust to outliers


def apply_lowbit(fwd: fx.GraphModule, bwd: fx.GraphModule, name: str, fmt: LowbitFormat,
                 num_fwd_outputs: int) -> tuple[str, ...]:
    """Stores saved tensor `name` in `fmt`; returns the names of its forward stand-ins (the
    payload, then the scales).
    The graphs hold the format as its plain string (the ops' schema takes a `str`)."""
    fmt_name = fmt.value
    dtype: torch.dtype | None = None
    order: list[int] = []  # x as a permutation of a contiguous tensor (NOTE [Low-bit layout])

    def quantise(graph: fx.Graph, x: fx.Node) -> list[fx.Node]:
        nonlocal dtype, order
        dtype = x.meta["val"].dtype
        order = memory_order(x.meta["val"])
        if order != sorted(order):
            x = call(graph, torch.ops.aten.permute.default, (x, order), f"{name}_in_memory_order")
        if x.meta["val"].device.type != "cuda":
            return inline(graph, ref.quantize, (x, fmt_name, GRANULARITY),
                          ("lowbit", name, "lowbit"))
        q = call(graph, torch.ops.fxopt.quantize.default, (x, fmt_name, GRANULARITY),
                 f"{name}_{fmt_name}")
        return [getitem(graph, q, 0, f"{name}_payload"), getitem(graph, q, 1, f"{name}_scales")]

    def dequantise(graph: fx.Graph, inputs: list[fx.Node]) -> fx.Node:
        payload, scales = inputs
        if payload.meta["val"].device.type != "cuda":
            out = inline(graph, ref.dequantize, (payload, scales, GRANULARITY, dtype),
                         ("lowbit", name, "lowbit"))[0]
        else:
            out = call(graph, torch.ops.fxopt.dequantize.default,
                       (payload, scales, GRANULARITY, dtype), f"{name}_dequantized")
        if order != sorted(order):
            inverse = sorted(range(len(order)), key=order.__getitem__)
            out = call(graph, torch.ops.aten.permute.default, (out, inverse), f"{name}_restrided")
        return out

    stand_ins = replace_saved(fwd, bwd, name, num_fwd_outputs, quantise, dequantise, "lowbit",
                              f"lowbit-{fmt_name}")
    return tuple(n.name for n in stand_ins)


# NOTE [Low-bit layout]
# A saved tensor may be a permutation of a dense buffer (attention outputs are saved transposed)
# and the backward kernels that read it were traced with its strides. The payload is quantised
# in memory order (x permuted so that it is contiguous, so each block of scales covers
# consecutive bytes) and the dequantised tensor is permuted back: same shape, same strides.
def memory_order(t: torch.Tensor) -> list[int]:
    """The dimensions of `t` from outermost to innermost in memory (identity when contiguous
    or when the layout is not a plain permutation of a dense buffer)."""
    from fxopt.compat import is_dense as dense

    dims = list(range(t.dim()))
    if not dims or not dense(t):
        return dims
    return sorted(dims, key=lambda d: (-t.stride(d), d))
