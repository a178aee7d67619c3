"""Memory an op holds that its output tensors do not show: host copies, scratch space, layout
copies and fallback outputs wider than their shape. Each rule states what was measured."""

from __future__ import annotations

import dataclasses

import sympy
import torch
import torch.fx as fx

from fxopt.compat import is_dense
from fxopt.tensor_meta import TensorMeta, size_hint, storage_of, tensor_meta

__all__ = ["channels_last_copy", "channels_last_outputs", "fallback_storage", "on_host",
           "workspace_bytes"]

aten = torch.ops.aten


# NOTE [Fallback outputs that keep their input's strides]
# An eager fallback allocates what the ATen kernel allocates, which is not always a dense
# buffer of its output's size. The functional `copy(self, src)` is `clone_preserve_strides(self)`
# then `copy_`: for `self` a slice of a larger tensor it allocates the whole span of that
# tensor's storage and returns a view into it. FNO's spectral layers write their truncated modes
# into a zero spectrum this way (`out_fft[slices] = ...`, functionalised to copy + slice_scatter
# on a complex tensor, an eager fallback): the copy holds the full 4 MiB spectrum, not the
# 2.25 MiB slice (measured, RSS per wrapper line). The fake tensor of the output has the same
# storage, so an extern node counts its output's storage where that is larger.
def fallback_storage(val: torch.Tensor, meta: TensorMeta) -> TensorMeta:
    storage = storage_of(val)
    if storage is None:  # a tensor subclass, a functional wrapper: only its shape is known
        return meta
    try:
        span = size_hint(storage.nbytes())
    except ValueError:  # a size without a hint (unbacked): the shape's bytes stand
        return meta
    if span <= meta.nbytes_hint:
        return meta
    return dataclasses.replace(meta, nbytes=sympy.Integer(span), nbytes_hint=span)

_HOST_OPS = ("fxopt.offload.default",)


# NOTE [Host copies hold no device memory]
# The memory model counts device memory. An offloaded tensor's host copy (the output of
# `fxopt::offload` in forward, and the backward placeholder that only `fxopt::prefetch` reads)
# lives in pinned host memory, so it counts zero bytes; its device memory is counted where
# `prefetch` allocates it again. Known by the op rather than the tensor's device, because a
# step traced on the CPU may be planned as a CUDA step (fxopt.explain with a GPU profile).
def on_host(n: fx.Node) -> bool:
    """Whether the node's value is a host copy (NOTE [Host copies hold no device memory])."""
    if n.op == "call_function":
        return str(n.target) in _HOST_OPS
    return n.op == "placeholder" and bool(n.users) and all(
        str(u.target) == "fxopt.prefetch.default" for u in n.users)

# NOTE [Op workspace]
# Some extern kernels allocate scratch memory that no graph value shows. Measured on the CPU
# (RSS high-water mark of one call, `MALLOC_MMAP_THRESHOLD_=65536`): a complex-to-real FFT over
# more than one dimension (`irfft2`, `irfftn`: the spectral layers of every FNO) copies its input
# and transforms the leading dimensions into a second complex buffer before the last one, so it
# holds twice its input besides its output (6.5 MiB for a 2.25 MiB input and a 2 MiB output).
# Over one dimension, and real-to-complex or complex-to-complex transforms, hold nothing extra.
#
# A CPU convolution (oneDNN, `mkldnn_convolution`) reorders its activations into a blocked layout
# whose channel dimension is padded to a multiple of the vector width (16 floats with AVX-512):
# the forward holds a blocked input and a blocked output, then the plain output and the blocked
# one; `convolution_backward` holds a blocked grad_output and a blocked input besides its
# outputs. Measured for groups=1 (1-d and 2-d, 1x1 and 3x3, 1 to 128 channels): the peak of one
# call above its arguments is P(out) + max(P(in), out) for the forward and grad_input + P(in) +
# P(grad_out) for the backward, P(t) being t's bytes with its channels padded. With few
# channels this is many times the activations (FNO's 8-channel channel-MLPs: 8 MiB on top of a
# 2 MiB output at batch 256), and it is where the step peaks. This holds for 1-d convolutions
# only: Inductor lays out 2-d ones channels-last on the CPU (NOTE [Channels-last copies]), and
# oneDNN runs those in place, with nothing above the arguments (measured: hf_resnet's 3x3 and
# 7x7 convolutions and their backward, 3 to 16 channels; ViT's patch embedding).
#
# On CUDA, the backward of SDPA's fused kernels accumulates the query's gradient in fp32 scratch
# memory that no graph value shows. Measured on an H200 (allocator history of one step, zoo's
# HF Llama, fp32, batch 256, 4 heads, sequence 16, head size 8): the memory-efficient backward
# allocated 16 MiB while it ran, above everything the graph holds, and it set the step's peak.
# That is its `workspace_size()`: batch x heads x fp32 tiles of the query block by the
# gradient's column block, both 64 for head sizes up to 64 and 128 above (the kernel's block
# shapes). The flash backward allocates `dq_accum` (batch x sequence rounded up to 128 x heads x
# head size rounded up to 32, fp32) and the softmax sums (batch x heads x rounded sequence).
def workspace_bytes(n: fx.Node) -> int:
    if n.op != "call_function":
        return 0
    if n.target in (aten.convolution.default, aten.convolution_backward.default):
        return _conv_workspace(n)
    if n.target in _CUDA_ATTENTION_BACKWARD:
        return _attention_backward_workspace(n)
    if n.target is not aten._fft_c2r.default:
        return 0
    src, dims = n.args[0], n.args[1]
    if not isinstance(src, fx.Node) or len(dims) < 2:
        return 0
    val = src.meta.get("val")
    return 2 * tensor_meta(val).nbytes_hint if isinstance(val, torch.Tensor) else 0

_CUDA_ATTENTION_BACKWARD = (aten._scaled_dot_product_efficient_attention_backward.default,
                            aten._scaled_dot_product_flash_attention_backward.default)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _attention_backward_workspace(n: fx.Node) -> int:
    """fp32 scratch of a CUDA SDPA backward (NOTE [Op workspace]); 0 off CUDA."""
    q = n.args[1].meta.get("val") if isinstance(n.args[1], fx.Node) else None
    if not isinstance(q, torch.Tensor) or q.device.type != "cuda" or q.dim() != 4:
        return 0
    b, h, s, d = (size_hint(x) for x in q.shape)
    if n.target is aten._scaled_dot_product_flash_attention_backward.default:
        s = _round_up(s, 128)
        return 4 * b * h * s * (_round_up(d, 32) + 1)
    tile = 64 if d <= 64 else 128
    return 4 * b * h * _round_up(s, tile) * _round_up(d, tile)


def _conv_workspace(n: fx.Node) -> int:
    """oneDNN's blocked copies of a CPU convolution's activations (NOTE [Op workspace])."""
    forward = n.target is aten.convolution.default
    transposed, groups = (n.args[6], n.args[8]) if forward else (n.args[7], n.args[9])
    vals = [a.meta.get("val") if isinstance(a, fx.Node) else None for a in n.args[:2]]
    out = n.meta.get("val")
    if forward:
        vals = [vals[0], out]  # input, output
    else:
        vals = [vals[1], vals[0]]  # input, grad_output
    if (transposed or groups != 1 or not all(isinstance(v, torch.Tensor) for v in vals)
            or vals[0].device.type != "cpu" or not vals[0].is_floating_point()
            or vals[0].dim() < 3 or _inductor_channels_last(vals[0])):
        return 0
    block = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8

    def padded(t: torch.Tensor) -> int:
        c = size_hint(t.shape[1])
        return tensor_meta(t).nbytes_hint // max(c, 1) * _round_up(c, block)

    if forward:
        inp, res = vals
        return padded(res) + max(padded(inp), tensor_meta(res).nbytes_hint) \
            - tensor_meta(res).nbytes_hint
    inp, grad_out = vals
    return padded(inp) + padded(grad_out)

# NOTE [Channels-last copies]
# On the CPU with oneDNN, Inductor's layout optimisation (`GraphLowering.decide_layout_opt`)
# is on for every graph with a convolution, and it makes each 2-d convolution read its input
# and weight channels-last (`require_channels_last`). A parameter or user input in the default
# layout is therefore copied once, at the start of the forward, and the copy is what the
# backward receives in its place: hf_resnet's `pixel_values` (256x3x32x32, 3 MiB) is held from
# the first kernel of the forward to the last `convolution_backward`, on top of everything the
# graphs show (measured, RSS per wrapper line; its 7x7 weight's copy too, a few KiB). The copy
# counts as a buffer of the placeholder's size wherever the placeholder is read.
def _onednn() -> bool:
    """Whether Inductor's CPU layout optimisation can run (it needs oneDNN)."""
    return torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()


def _inductor_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.device.type == "cpu" and _onednn()


def channels_last_copy(n: fx.Node) -> int:
    """Bytes of the channels-last copy Inductor makes of a placeholder that a 2-d CPU
    convolution reads as input or weight (NOTE [Channels-last copies]); 0 otherwise."""
    val = n.meta.get("val")
    if n.op != "placeholder" or not isinstance(val, torch.Tensor) \
            or not _inductor_channels_last(val) or not val.is_floating_point() \
            or val.is_contiguous(memory_format=torch.channels_last):
        return 0
    if any(u.op == "call_function" and u.target is aten.convolution.default
           and n in u.args[:2] for u in n.users):
        return tensor_meta(val).nbytes_hint
    return 0


# NOTE [Channels-last saved tensors]
# Inductor's layout optimisation (on for every CPU graph with a convolution when oneDNN is
# there, `GraphLowering.decide_layout_opt`) also picks the layout of the tensors a forward
# returns: a dense 4-d value that "prefers channels last" (`find_nodes_prefer_channels_last`:
# it feeds a convolution, directly or through other nodes but not through a bmm, or follows one
# up to the last convolution) is stored channels-last when the graph returns it
# (`maybe_apply_channels_last_stride_order`), whatever its rank where it is used. A reshape of
# it to another rank is then no view: every extern kernel that reads the reshape gets a dense
# copy. Measured on neuraloperator's FNO at budget 0.5 (RSS per line of the generated code,
# `python -m benchmarks.line_peaks fno --budget 0.5`): its channel MLPs are 1-d convolutions
# of `x.reshape(b, c, -1)` where x is 4-d, so each saved 4-d activation (2 MiB at batch 256)
# is written twice in the forward (channels-last for the backward, dense for the convolution),
# and in the backward the one read by two convolutions is copied for both (2 x 2 MiB), copies
# held until Inductor reuses their storage.
def channels_last_outputs(nodes: list[fx.Node]) -> set[fx.Node]:
    """Forward nodes that Inductor stores channels-last if the graph returns them (NOTE
    [Channels-last saved tensors])."""
    convs = [n for n in nodes if n.op == "call_function" and n.target is aten.convolution.default]
    if not convs or not _onednn():
        return set()
    for c in convs:
        for a in c.args[:2]:
            val = a.meta.get("val") if isinstance(a, fx.Node) else None
            if not isinstance(val, torch.Tensor) or val.device.type != "cpu":
                return set()
    members = set(nodes)
    prefer: set[fx.Node] = set()
    last_conv = None
    for n in reversed(nodes):
        if n.op == "call_function" and n.target is aten.convolution.default:
            prefer.add(n)
            last_conv = last_conv or n
        elif n.target is not aten.bmm.default and any(u in prefer for u in n.users):
            prefer.add(n)
    for n in nodes:
        if n is last_conv:
            break
        if n in prefer:
            prefer.update(u for u in n.users if u in members and u.target is not aten.bmm.default)
    out = set()
    for n in prefer:
        val = n.meta.get("val")
        if (isinstance(val, torch.Tensor) and val.dim() == 4 and n.op == "call_function"
                and is_dense(val)):
            out.add(n)
    return out
