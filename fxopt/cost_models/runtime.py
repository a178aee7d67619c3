"""Runtime estimates: a roofline per node or per fused kernel, transfers, low-bit casts, and a
measured mode that times a graph's ops on the real device.

Roofline: ``max(flops / peak_flops(dtype), bytes / bandwidth) + overhead``.  FLOPs come from
PyTorch's flop-counter rules (``torch.utils.flop_counter``; recorded on each node by
``fxopt.graph``); pointwise and reduction nodes count one FLOP per output element, which never
dominates their memory traffic.  Bytes are what a kernel reads and writes: for a single node
its tensor inputs and outputs; for a fused kernel only the buffers Inductor materialises.
"""

from __future__ import annotations

from fxopt.cost_models.device import Hardware
from fxopt.cost_models.fusion import FusionRules, Kernel, kernels_of
from fxopt.graph import GraphView, OpKind
from fxopt.plan import LOWBIT_BLOCK

__all__ = ["node_seconds", "per_node_seconds", "kernel_seconds", "graph_seconds",
           "transfer_seconds", "cast_seconds"]


def _roofline(flops: float, nbytes: float, dtype: str, profile: Hardware) -> float:
    return max(flops / profile.peak_flops(dtype), nbytes / profile.mem_bandwidth) \
        + profile.overhead_s


def node_seconds(view: GraphView, name: str, profile: Hardware) -> float:
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


def kernel_seconds(view: GraphView, kernel: Kernel, profile: Hardware) -> float:
    """Time of one Inductor kernel: the fused nodes' FLOPs over its materialised traffic."""
    nbytes = sum(view.storage_bytes(w) for w in kernel.writes)
    nbytes += sum(view.storage_bytes(r) for r in kernel.reads)
    node = view[kernel.name]
    flops = kernel.flops
    if not flops:
        flops = sum(sum(t.numel_hint for t in view[n].outputs) for n in kernel.nodes)
    dtype = node.outputs[0].dtype if node.outputs else "float32"
    return _roofline(flops, nbytes, dtype, profile)


def graph_seconds(view: GraphView, profile: Hardware, rules: FusionRules = FusionRules()
                  ) -> float:
    """Estimated time of one graph as Inductor runs it (sum over its kernels)."""
    return sum(kernel_seconds(view, k, profile) for k in kernels_of(view, rules))


def transfer_seconds(nbytes: int, profile: Hardware) -> float:
    """One copy of ``nbytes`` over the host link in one direction."""
    return nbytes / profile.host_link + profile.overhead_s


def cast_seconds(numel: int, src_itemsize: int, dst_itemsize: int, profile: Hardware,
                 block: int = LOWBIT_BLOCK) -> float:
    """A quantise or dequantise kernel: memory-bound, one scale (4 bytes) per ``block``."""
    nbytes = numel * (src_itemsize + dst_itemsize) + 4 * (numel // max(block, 1) + 1)
    return nbytes / profile.mem_bandwidth + profile.overhead_s


def per_node_seconds(view: GraphView, profile: Hardware) -> dict[str, float]:
    """:func:`node_seconds` for every compute node of ``view`` (views excluded)."""
    return {n.name: node_seconds(view, n.name, profile) for n in view.nodes
            if n.kind not in (OpKind.PLACEHOLDER, OpKind.OUTPUT, OpKind.VIEW, OpKind.OTHER)}
