"""Runtime estimates: a roofline per node or per fused kernel, transfers, low-bit casts, and a
measured mode that times a graph's ops on the real device.

Roofline: ``max(flops / peak_flops(dtype), bytes / bandwidth) + overhead``.  FLOPs come from
PyTorch's flop-counter rules (``torch.utils.flop_counter``; recorded on each node by
``fxopt.graph``); pointwise and reduction nodes count one FLOP per output element, which never
dominates their memory traffic.  Bytes are what a kernel reads and writes: for a single node
its tensor inputs and outputs; for a fused kernel only the buffers Inductor materialises.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping

import torch
import torch.fx as fx

from fxopt.cost_models.device import DeviceProfile
from fxopt.cost_models.fusion import FusionRules, Kernel, kernels_of
from fxopt.graph import GraphView, OpKind

__all__ = ["node_seconds", "per_node_seconds", "kernel_seconds", "graph_seconds",
           "transfer_seconds", "cast_seconds", "measure_node_times", "spearman"]


def _roofline(flops: float, nbytes: float, dtype: str, profile: DeviceProfile) -> float:
    return max(flops / profile.peak_flops(dtype), nbytes / profile.mem_bandwidth) \
        + profile.overhead_s


def node_seconds(view: GraphView, name: str, profile: DeviceProfile) -> float:
    """Time of one node run on its own (as eager PyTorch would run it). Views cost nothing."""
    node = view[name]
    if node.kind in (OpKind.PLACEHOLDER, OpKind.OUTPUT, OpKind.VIEW, OpKind.OTHER):
        return 0.0
    out_bytes = node.nbytes_hint
    in_bytes = 0
    for i in node.inputs:
        src = view[i]
        if src.kind is OpKind.VIEW or not src.outputs:
            continue
        in_bytes += src.nbytes_hint
    for i in node.inputs:  # a view input reads only the viewed part
        src = view[i]
        if src.kind is OpKind.VIEW and src.outputs:
            in_bytes += src.outputs[0].nbytes_hint
    flops = node.flops or sum(t.numel_hint for t in node.outputs)
    dtype = node.outputs[0].dtype if node.outputs else "float32"
    return _roofline(flops, in_bytes + out_bytes, dtype, profile)


def kernel_seconds(view: GraphView, kernel: Kernel, profile: DeviceProfile) -> float:
    """Time of one Inductor kernel: the fused nodes' FLOPs over its materialised traffic."""
    nbytes = sum(view.storage_bytes(w) for w in kernel.writes)
    nbytes += sum(view.storage_bytes(r) for r in kernel.reads)
    node = view[kernel.name]
    flops = kernel.flops
    if not flops:
        flops = sum(sum(t.numel_hint for t in view[n].outputs) for n in kernel.nodes)
    dtype = node.outputs[0].dtype if node.outputs else "float32"
    return _roofline(flops, nbytes, dtype, profile)


def graph_seconds(view: GraphView, profile: DeviceProfile, rules: FusionRules = FusionRules()
                  ) -> float:
    """Estimated time of one graph as Inductor runs it (sum over its kernels)."""
    return sum(kernel_seconds(view, k, profile) for k in kernels_of(view, rules))


def transfer_seconds(nbytes: int, profile: DeviceProfile) -> float:
    """One copy of ``nbytes`` over the host link in one direction."""
    return nbytes / profile.host_link + profile.overhead_s


def cast_seconds(numel: int, src_itemsize: int, dst_itemsize: int, profile: DeviceProfile,
                 block: int = 128) -> float:
    """A quantise or dequantise kernel: memory-bound, one scale (4 bytes) per ``block``."""
    nbytes = numel * (src_itemsize + dst_itemsize) + 4 * (numel // max(block, 1) + 1)
    return nbytes / profile.mem_bandwidth + profile.overhead_s


# --------------------------------------------------------------------------- measured mode
def _real(val: object, device: str) -> object:
    """A real tensor with ``val``'s shape, strides (broadcast strides included) and dtype."""
    if not isinstance(val, torch.Tensor):
        return val
    size = [int(s) for s in val.shape]
    stride = [int(s) for s in val.stride()]
    storage = 1 + sum((n - 1) * st for n, st in zip(size, stride) if n > 0)
    if any(n == 0 for n in size):
        storage = 0
    flat = torch.empty(storage, dtype=val.dtype, device=device)
    if val.dtype.is_complex:
        flat.fill_(1.0)
    elif val.dtype.is_floating_point:
        flat.uniform_(0.5, 1.0)
    elif val.dtype == torch.bool:
        flat.fill_(True)
    else:
        flat.zero_()  # a valid index for every indexing op
    return flat.as_strided(size, stride)


def measure_node_times(gm: fx.GraphModule, *, device: str = "cpu", repeats: int = 3,
                       skip: Iterable[str] = ()) -> dict[str, float]:
    """Time each compute node of ``gm`` run eagerly on random inputs of its recorded shapes.

    Returns seconds per node name (the best of ``repeats``).  Views, placeholders and nodes
    whose op cannot run on made-up inputs (an error is raised by the op) are left out.
    """
    skip = set(skip)
    out: dict[str, float] = {}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.name in skip:
            continue
        if not isinstance(n.meta.get("val"), torch.Tensor):
            continue
        if not isinstance(n.target, torch._ops.OpOverload) or n.target.is_view:
            continue
        args, kwargs = fx.node.map_arg((n.args, n.kwargs),
                                       lambda a: _real(a.meta.get("val"), device))
        try:
            n.target(*args, **kwargs)
        except (RuntimeError, IndexError, ValueError, TypeError):
            continue
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            n.target(*args, **kwargs)
            sync()
            times.append(time.perf_counter() - t0)
        out[n.name] = min(times)
    return out


def spearman(xs: Mapping[str, float], ys: Mapping[str, float]) -> float:
    """Spearman rank correlation over the keys both mappings share (average ranks for ties)."""
    keys = sorted(set(xs) & set(ys))
    if len(keys) < 3:
        raise ValueError(f"rank correlation needs at least 3 common keys, got {len(keys)}")

    def ranks(vals: list[float]) -> list[float]:
        order = sorted(range(len(vals)), key=vals.__getitem__)
        r = [0.0] * len(vals)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and vals[order[j + 1]] == vals[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks([xs[k] for k in keys]), ranks([ys[k] for k in keys])
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else 0.0


def per_node_seconds(view: GraphView, profile: DeviceProfile) -> dict[str, float]:
    """:func:`node_seconds` for every compute node of ``view`` (views excluded)."""
    return {n.name: node_seconds(view, n.name, profile) for n in view.nodes
            if n.kind not in (OpKind.PLACEHOLDER, OpKind.OUTPUT, OpKind.VIEW, OpKind.OTHER)}
