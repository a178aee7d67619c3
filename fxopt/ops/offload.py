"""`torch.ops.fxopt.offload / prefetch / wait_`: move a saved tensor to host memory and back.

    host = offload(x)            # forward, after x's last forward use
    y = prefetch(host, device)   # backward, at the planned prefetch point
    wait_(y)                     # backward, right before y's first use

On CUDA, both copies run on one side stream, so they overlap with compute on the main stream:
offload waits for x to be produced, copies it into pinned host memory and tells the caching
allocator (`record_stream`) that x's device memory is free once the copy is done; prefetch
copies back into a fresh device buffer; `wait_` makes the main stream wait for that copy (an
asynchronous wait, the host never blocks). The same stream for both directions orders each
prefetch after its offload. On CPU the same graph runs: offload copies into a separate host
buffer and the rest are plain copies and no-ops, so tests cover the rewrite without a GPU.
"""

from __future__ import annotations

import threading

import torch
from torch.library import custom_op

_streams: dict[int, torch.cuda.Stream] = {}
_events: dict[int, torch.cuda.Event] = {}  # prefetched buffer's data_ptr -> copy-done event
_lock = threading.Lock()


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _lock:
        if index not in _streams:
            _streams[index] = torch.cuda.Stream(device=index)
        return _streams[index]


def _empty_like(x: torch.Tensor, device: torch.device | str, pin: bool = False) -> torch.Tensor:
    """An empty tensor with `x`'s size and strides where `x` is dense (a transposed attention
    output stays transposed: the backward kernels behind the prefetch were traced with those
    strides), contiguous otherwise."""
    from fxopt.compat import is_dense as dense

    if dense(x):
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=device,
                                   pin_memory=pin)
    return torch.empty(x.shape, dtype=x.dtype, device=device, pin_memory=pin)


@custom_op("fxopt::offload", mutates_args=())
def offload(x: torch.Tensor) -> torch.Tensor:
    """A host copy of `x` (pinned on CUDA, copied on the side stream)."""
    if x.device.type != "cuda":
        return _empty_like(x, "cpu").copy_(x)
    side = _side_stream(x.device)
    host = _empty_like(x, "cpu", pin=True)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        host.copy_(x, non_blocking=True)
    x.record_stream(side)  # x's memory is reused only after the copy has read it
    return host


@offload.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return _empty_like(x, "cpu")


@custom_op("fxopt::prefetch", mutates_args=())
def prefetch(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A device copy of `host`, started on the side stream; `wait_` before reading it."""
    if device.type != "cuda":
        return _empty_like(host, device).copy_(host)
    side = _side_stream(device)
    out = _empty_like(host, device)
    side.wait_stream(torch.cuda.current_stream(device))  # `out` may reuse freed memory
    with torch.cuda.stream(side):
        out.copy_(host, non_blocking=True)
        done = torch.cuda.Event()
        done.record(side)
    out.record_stream(side)
    with _lock:
        _events[out.data_ptr()] = done
    return out


@prefetch.register_fake
def _(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    return _empty_like(host, device)


@custom_op("fxopt::wait_", mutates_args=("x",))
def wait_(x: torch.Tensor) -> None:
    """Orders the current stream after the prefetch that filled `x` (no-op off CUDA)."""
    if x.device.type != "cuda":
        return
    with _lock:
        done = _events.pop(x.data_ptr(), None)
    if done is not None:
        torch.cuda.current_stream(x.device).wait_event(done)


@wait_.register_fake
def _(x: torch.Tensor) -> None:
    return None
