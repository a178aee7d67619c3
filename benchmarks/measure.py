"""Measuring the real peak memory of one compiled training step.

Peak (DESIGN.md): the most bytes live at once during one training step (forward + loss +
backward) above what was live before it, with parameter gradients starting as ``None``.

* CPU: the process's resident-set high-water mark.  glibc is told to ``mmap`` every allocation
  above 64 KiB (``MALLOC_MMAP_THRESHOLD_=65536``) so that a freed tensor returns its pages to
  the kernel at once, and the heap's free pages are returned just before the step (NOTE [Free
  heap pages hide allocations]); the high-water mark is reset through ``/proc/self/clear_refs``
  just before the step, and the peak is ``VmHWM`` after it minus ``VmRSS`` before it.  The
  environment variable only takes effect at process start, so each measurement runs in a fresh
  subprocess (:func:`measure_in_subprocess`).
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the step.

:func:`measure_in_subprocess` also compiles the step with a chosen partitioner and returns
the graphs that partitioner produced (as :class:`~fxopt.graph.GraphView`), so that a test can
compare a prediction with the measurement of exactly the graphs that ran.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._inductor.custom_graph_pass
import torch.fx as fx

from fxopt.config import malloc_returns_memory
from fxopt.graph import GraphView, Side
from fxopt.meter import restart_rss_peak, status_bytes

__all__ = ["StepMeasurement", "CapturingPartitioner", "allocated_peak", "cpu_memory_events",
           "measure_step",
           "measure_in_subprocess",
           "MEASURE_ENV", "measure_node_times", "spearman"]

# Environment for a measurement process (set before it starts).  The FX graph and AOTAutograd
# caches are off so that the partitioner really runs (a cache hit would skip it and capture
# nothing); Inductor's compiled-kernel cache stays on, since it is keyed by the kernel source.
# One thread keeps the RSS free of per-thread scratch buffers and the timings stable.
MEASURE_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "TORCHINDUCTOR_COMPILE_THREADS": "1",
    "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
    "TORCHINDUCTOR_AUTOGRAD_CACHE": "0",
    "OMP_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class StepMeasurement:
    peak_bytes: int  # high-water mark during the step minus what was live before it
    baseline_bytes: int  # RSS (CPU) or allocated bytes (CUDA) before the step
    step_seconds: float
    device: str
    views: dict[str, GraphView] = field(default_factory=dict)  # "joint", "fwd", "bwd"
    extra: dict[str, Any] = field(default_factory=dict)


# NOTE [Free heap pages hide allocations]
# The mmap threshold only decides where glibc gets *new* memory: a request above 64 KiB is
# first served from a free chunk of the heap, and the heap keeps the pages of freed chunks
# (only its top is trimmed). After compiling and warming up, the heap holds megabytes of such
# chunks, so a step's tensors land on pages that were resident before it and the RSS does not
# grow: hf_t5 at batch 256 (fxopt, budget 0.5) had 10.3 MiB free in the heap before the step
# (mallinfo2) and measured 7.9 to 10.6 MiB from run to run, against 13.6 to 14.0 MiB live in
# the allocator at its peak (torch.profiler's memory timeline); hf_bert 4.3 MiB free, 7.3 MiB
# measured, 8.6 MiB in the allocator. `malloc_trim(0)` just before the step gives those pages
# back (it also releases free chunks below the top), after which the RSS peak is stable and
# matches the allocator: 14.2 MiB (hf_t5) and 8.5 MiB (hf_bert), every run.
def _trim_heap() -> None:
    """Return glibc's free heap pages to the kernel (NOTE [Free heap pages hide allocations])."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: MALLOC_MMAP_THRESHOLD_ means nothing there either
        return
    libc.malloc_trim(0)


# NOTE [Allocated bytes on the CPU]
# The RSS peak is what a CPU process really holds, but it also holds glibc's heap: tensors under
# the 64 KiB mmap threshold (a norm's per-row statistics, small gradients) and Python objects
# live in heap pages that a step grows and fragments. For the zoo's small models that is 1 to
# 2 MiB of a 12 MiB step (HF Llama at budget 0.5: RSS peak 13.2 MiB after `malloc_trim`, 11.6
# without it, 12.5 in the allocator). The memory model predicts tensor bytes, the quantity
# CUDA's `max_memory_allocated` measures, so the CPU measurement reports the allocator's peak
# too: torch.profiler's memory events (every allocation and free of PyTorch's CPU allocator,
# with its size) summed in time order over one step. Scratch memory a library takes from malloc
# directly (oneDNN's, pocketfft's) is not in it; the RSS peak has it.
def cpu_memory_events(prof: Any) -> list[tuple[int, int]]:
    """(time in ns, bytes: + allocated, - freed) of every CPU allocator event a
    `torch.profiler.profile(profile_memory=True)` recorded, in time order."""
    return sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))


def allocated_peak(step: Callable[[], object], zero_grad: Callable[[], None]) -> int:
    """Most bytes PyTorch's CPU allocator held at once during one ``step`` above what it held
    before (NOTE [Allocated bytes on the CPU])."""
    from torch.profiler import ProfilerActivity, profile

    zero_grad()
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    now = peak = 0
    for _, nbytes in cpu_memory_events(prof):
        now += nbytes
        peak = max(peak, now)
    return peak


def measure_step(step: Callable[[], object], zero_grad: Callable[[], None], *,
                 device: str = "cpu", warmup: int = 2) -> StepMeasurement:
    """Run ``step`` ``warmup`` times, then measure one more run of it (see module docstring).

    ``step`` runs forward, loss and backward; ``zero_grad`` sets gradients to None.  On CPU the
    calling process must have been started with ``MALLOC_MMAP_THRESHOLD_`` set (see
    :data:`MEASURE_ENV`), otherwise freed memory stays resident and the peak is overstated.
    """
    for _ in range(warmup):
        step()
    zero_grad()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        return StepMeasurement(torch.cuda.max_memory_allocated() - base, base, dt, device)
    if not malloc_returns_memory():
        raise RuntimeError("CPU peak measurement needs MALLOC_MMAP_THRESHOLD_=65536 set before "
                           "the process starts; use benchmarks.measure.measure_in_subprocess")
    _trim_heap()
    base = restart_rss_peak()
    t0 = time.perf_counter()
    step()
    dt = time.perf_counter() - t0
    return StepMeasurement(status_bytes("VmHWM") - base, base, dt, device)


class CapturingPartitioner(torch._inductor.custom_graph_pass.CustomPartitionerFn):
    """Runs PyTorch's ``min_cut`` (Inductor's default) or ``default`` (save everything)
    partitioner and keeps views of the joint graph and of the graphs it returns."""

    def __init__(self, which: str) -> None:
        if which not in ("min_cut", "default"):
            raise ValueError(f"partitioner {which!r}: use 'min_cut' or 'default'")
        self.which = which
        self.captured: list[dict[str, GraphView]] = []

    def __call__(self, gm: torch.fx.GraphModule, joint_inputs: Sequence[object], **kwargs: Any
                 ) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
        from torch._functorch import partitioners

        joint = GraphView.from_fx(gm, **kwargs)
        if self.which == "min_cut":
            fwd, bwd = partitioners.min_cut_rematerialization_partition(gm, joint_inputs,
                                                                        **kwargs)
        else:
            kwargs.pop("compiler", None)
            fwd, bwd = partitioners.default_partition(gm, joint_inputs, **kwargs)
        self.captured.append({"joint": joint, "fwd": GraphView.from_fx(fwd, side=Side.FWD),
                              "bwd": GraphView.from_fx(bwd, side=Side.BWD)})
        self.graphs = (fwd, bwd)
        return fwd, bwd

    def uuid(self) -> Any:
        return ("benchmarks.measure.CapturingPartitioner", self.which)


def _compile_and_measure(builder: str, kwargs: dict[str, Any], partitioner: str,
                         threads: int, device: str, with_op_times: bool) -> StepMeasurement:
    from torch._inductor.compile_fx import compile_fx

    torch.set_num_threads(threads)
    mod_name, fn_name = builder.split(":")
    model, args = getattr(importlib.import_module(mod_name), fn_name)(**kwargs)
    model = model.to(device)
    args = tuple(a.to(device) for a in args)
    cap = CapturingPartitioner(partitioner)
    backend = functools.partial(compile_fx, config_patches={"custom_partitioner_fn": cap})
    compiled = torch.compile(model, backend=backend)

    def step() -> None:
        compiled(*args).backward()

    m = measure_step(step, lambda: model.zero_grad(set_to_none=True), device=device)
    if len(cap.captured) != 1:
        raise RuntimeError(f"expected one compiled graph, got {len(cap.captured)} (a graph "
                           "break?); measurement needs a step that compiles to one graph")
    extra: dict[str, Any] = {}
    if with_op_times:
        extra["op_seconds"] = {side: measure_node_times(gm, device=device)
                               for side, gm in zip(("fwd", "bwd"), cap.graphs)}
    return StepMeasurement(m.peak_bytes, m.baseline_bytes, m.step_seconds, device,
                           cap.captured[0], extra)


def measure_in_subprocess(builder: str, kwargs: dict[str, Any] | None = None, *,
                          partitioner: str = "min_cut", threads: int = 1, device: str = "cpu",
                          with_op_times: bool = False, timeout_s: float = 600
                          ) -> StepMeasurement:
    """Compile and measure one training step in a fresh Python process.

    ``builder`` is ``"module:function"``; the function takes ``kwargs`` and returns
    ``(model, args)`` with ``model(*args)`` the scalar loss.  The child inherits the current
    working directory and ``sys.path`` entries through ``PYTHONPATH``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pkl")
        job = json.dumps({"builder": builder, "kwargs": kwargs or {}, "partitioner": partitioner,
                          "threads": threads, "device": device, "out": out,
                          "with_op_times": with_op_times})
        env = dict(os.environ, **MEASURE_ENV,
                   PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
        proc = subprocess.run([sys.executable, "-m", "benchmarks.measure", job], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"measurement of {builder}({kwargs}) with {partitioner} failed "
                               f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(out, "rb") as f:
            return pickle.load(f)


def _main(argv: list[str]) -> None:
    job = json.loads(argv[0])
    m = _compile_and_measure(job["builder"], job["kwargs"], job["partitioner"], job["threads"],
                             job["device"], job["with_op_times"])
    with open(job["out"], "wb") as f:
        pickle.dump(m, f)




# ---- measured op times: the cost models' roofline checked against the machine ---------------

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


if __name__ == "__main__":
    # Re-import so that pickled classes name ``benchmarks.measure``, not ``__main__``.
    importlib.import_module("benchmarks.measure")._main(sys.argv[1:])
