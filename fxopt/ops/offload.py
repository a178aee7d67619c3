"""`torch.ops.fxopt.offload / offload_join / prefetch / wait_`: move a saved tensor to host
memory and back.

    host = offload(x)            # forward, right after x is produced: the copy starts
    offload_join(x, host)        # forward, where the plan has the copy done (after x's last use)
    y = prefetch(host, device)   # backward, at the planned prefetch point
    wait_(y)                     # backward, right before y's first use

NOTE [Offload invariants]
1. x's storage is never reused before its copy has read it. `offload_join` reads x, so no
   scheduler, buffer-reuse or in-place pass can recycle x's buffer before the join (Inductor
   reuses freed buffers in its generated code without the caching allocator, so
   `record_stream` alone would not protect it); at the join the main stream waits for the copy
   (an asynchronous wait, the host never blocks), so whatever reuses x afterwards runs after
   the copy. `record_stream` still covers buffers the caching allocator frees.
2. The join sits where the cost model has the copy done (NOTE [Copy exposure model],
   `solver/validate.py`): x's device memory lives from its production to the join, as modelled,
   and a copy that outlasts the forward is joined before the forward returns, so its exposed
   time is what the model charges.
3. Device-to-host and host-to-device copies run on two side streams, one per direction, as
   the model has them (one link per direction). A prefetch waits for the main stream, which has
   joined the copy out, so it never reads a host buffer still being filled.
4. `wait_` makes the main stream wait for the prefetch before the first read of its output;
   the output's memory is allocated on the main stream and marked used by the copy stream.
5. A low-bit payload and its scales are offloaded and prefetched together (both stand-ins).
6. The ops keep Python-side state (side streams, copy events): they are `cudagraph_unsafe`, so
   CUDA-graph trees split the graph around them instead of capturing a frozen event.
7. The graph's order is the schedule: Inductor's reordering for peak memory is off where
   offload may be planned (`fxopt.compiler.offload_patches`). It would move each join up to its
   copy's start (the join frees x) and each prefetch down to its first use (the prefetch
   allocates), and the main stream would then wait for every copy: measured on an H200, not
   one copy of a forced-offload GPT step overlapped a compute kernel with it on.
NOTE [Offload is opt-in]
Offload is planned only where the user allows it (`offload=True`, `FXOPT_OFFLOAD=1`). On an H200
(benchmarks/results/gpu_check_cuda.md) it is correct: 84 tensors of a GPT offloaded through
Inductor give eager's gradients to 1e-6, and no buffer is reused before its copy is joined.
But the plans it made cost more time than the model said: copies queue on one stream per
direction while the model gave each copy its own window, so a 12-layer GPT at 0.5 with 4
offloads ran at 45.9 ms against 30.5 ms for plain torch.compile (predicted: +3.5 ms), and
PyTorch's activation_memory_budget=0.2 reached a lower peak at 36.3 ms. The model now bounds
the queues (NOTE [Copy queues] in fxopt/solver/validate.py), which has not run on a GPU yet;
until it has, offload is the user's choice, for the memory it reaches (1475 MiB at 0.3, the
lowest of any configuration measured, at 172 ms a step).

On CPU the same graph runs: offload copies into a separate host buffer and the rest are plain
copies and no-ops, so tests cover the rewrite without a GPU.
"""

from __future__ import annotations

import threading

import torch
from torch.library import custom_op

# NOTE [Offload invariants] (6): keep the ops out of CUDA-graph capture (tag since torch 2.9).
_TAGS: tuple[torch.Tag, ...] = tuple(
    t for t in (getattr(torch.Tag, "cudagraph_unsafe", None),) if t is not None)

_streams: dict[tuple[int, str], torch.cuda.Stream] = {}
_copied: dict[int, torch.cuda.Event] = {}  # host buffer's data_ptr -> copy-out-done event
_fetched: dict[int, torch.cuda.Event] = {}  # prefetched buffer's data_ptr -> copy-in-done event
_lock = threading.Lock()


def _side_stream(device: torch.device, direction: str) -> torch.cuda.Stream:
    """The side stream of `direction` ("d2h" or "h2d") on `device`."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _lock:
        if (index, direction) not in _streams:
            _streams[(index, direction)] = torch.cuda.Stream(device=index)
        return _streams[(index, direction)]


def _wait_for(events: dict[int, torch.cuda.Event], key: int, device: torch.device) -> None:
    """The current stream of `device` waits for the copy event stored under `key` (consumed);
    nothing to wait for when no copy was recorded there."""
    with _lock:
        done = events.pop(key, None)
    if done is not None:
        torch.cuda.current_stream(device).wait_event(done)


def _empty_like(x: torch.Tensor, device: torch.device | str, pin: bool = False) -> torch.Tensor:
    """An empty tensor with `x`'s size and strides where `x` is dense (a transposed attention
    output stays transposed: the backward kernels behind the prefetch were traced with those
    strides), contiguous otherwise."""
    from fxopt.compat import is_dense as dense

    if dense(x):
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=device,
                                   pin_memory=pin)
    return torch.empty(x.shape, dtype=x.dtype, device=device, pin_memory=pin)


@custom_op("fxopt::offload", mutates_args=(), tags=_TAGS)
def offload(x: torch.Tensor) -> torch.Tensor:
    """A host copy of `x` (pinned on CUDA, copied on the device-to-host stream); joined by
    `offload_join` before x's memory may be reused."""
    if x.device.type != "cuda":
        return _empty_like(x, "cpu").copy_(x)
    side = _side_stream(x.device, "d2h")
    host = _empty_like(x, "cpu", pin=True)
    side.wait_stream(torch.cuda.current_stream(x.device))  # x has been produced
    with torch.cuda.stream(side):
        host.copy_(x, non_blocking=True)
        done = torch.cuda.Event()
        done.record(side)
    x.record_stream(side)
    with _lock:
        _copied[host.data_ptr()] = done
    return host


@offload.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return _empty_like(x, "cpu")


@custom_op("fxopt::offload_join", mutates_args=("host",), tags=_TAGS)
def offload_join(x: torch.Tensor, host: torch.Tensor) -> None:
    """The main stream waits for the copy of `x` into `host` (no-op off CUDA). Reading `x` keeps
    its storage alive until here; declaring `host` written orders the join before anything
    that reads the host copy, and keeps it from being dropped as dead code."""
    if x.device.type == "cuda":
        _wait_for(_copied, host.data_ptr(), x.device)


@offload_join.register_fake
def _(x: torch.Tensor, host: torch.Tensor) -> None:
    return None


@custom_op("fxopt::prefetch", mutates_args=(), tags=_TAGS)
def prefetch(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A device copy of `host`, started on the host-to-device stream; `wait_` before reading
    it."""
    if device.type != "cuda":
        return _empty_like(host, device).copy_(host)
    side = _side_stream(device, "h2d")
    out = _empty_like(host, device)
    side.wait_stream(torch.cuda.current_stream(device))  # `out` may reuse freed memory
    with torch.cuda.stream(side):
        out.copy_(host, non_blocking=True)
        done = torch.cuda.Event()
        done.record(side)
    out.record_stream(side)
    with _lock:
        _fetched[out.data_ptr()] = done
    return out


@prefetch.register_fake
def _(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    return _empty_like(host, device)


@custom_op("fxopt::wait_", mutates_args=("x",), tags=_TAGS)
def wait_(x: torch.Tensor) -> None:
    """Orders the current stream after the prefetch that filled `x` (no-op off CUDA)."""
    if x.device.type == "cuda":
        _wait_for(_fetched, x.data_ptr(), x.device)


@wait_.register_fake
def _(x: torch.Tensor) -> None:
    return None
