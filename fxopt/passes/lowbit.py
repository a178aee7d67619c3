"""Store chosen saved tensors in fp8 / int8: quantise in forward, dequantise before first use."""

from __future__ import annotations

import torch
import torch.fx as fx

import fxopt.kernels  # noqa: F401 - registers torch.ops.fxopt.quantize / dequantize
from fxopt.kernels import reference as ref
from fxopt.passes.boundary import call, getitem, inline, replace_saved

GRANULARITY = "block"  # one scale per 128 consecutive elements: any shape, robust to outliers


def apply_lowbit(fwd: fx.GraphModule, bwd: fx.GraphModule, name: str, fmt: str,
                 num_fwd_outputs: int) -> str:
    """Stores saved tensor `name` in `fmt`; returns the name of the payload's forward node."""
    dtype: torch.dtype | None = None

    def quantise(graph: fx.Graph, x: fx.Node) -> list[fx.Node]:
        nonlocal dtype
        dtype = x.meta["val"].dtype
        if x.meta["val"].device.type != "cuda":
            return inline(graph, ref.quantize, (x, fmt, GRANULARITY), ("lowbit", name, "lowbit"))
        q = call(graph, torch.ops.fxopt.quantize.default, (x, fmt, GRANULARITY), f"{name}_{fmt}")
        return [getitem(graph, q, 0, f"{name}_payload"), getitem(graph, q, 1, f"{name}_scales")]

    def dequantise(graph: fx.Graph, inputs: list[fx.Node]) -> fx.Node:
        payload, scales = inputs
        if payload.meta["val"].device.type != "cuda":
            return inline(graph, ref.dequantize, (payload, scales, GRANULARITY, dtype),
                          ("lowbit", name, "lowbit"))[0]
        return call(graph, torch.ops.fxopt.dequantize.default,
                    (payload, scales, GRANULARITY, dtype), f"{name}_dequantized")

    stand_ins = replace_saved(fwd, bwd, name, num_fwd_outputs, quantise, dequantise, "lowbit",
                              f"lowbit-{fmt}")
    return stand_ins[0].name
