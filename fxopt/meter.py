"""Measuring the peak of a real training step while it trains, for the step budget.

NOTE [Measuring the step in training]
The step runs from the forward of its first graph (training or not: a graph without backward
may run first, and what it returns is the step's) to the end of the backward of its first
training graph, which is the last backward of the step. `StepMeter.start` is called just
before the first graph's forward and `stop` from a hook on the autograd node of the first
training graph's outputs, which runs when its backward is done (the optimizer, which runs
after, is not part of the step).

* CUDA: `max_memory_allocated` after `reset_peak_memory_stats`, less what was allocated at
  the start. This resets the process's peak statistics: it is done only for the few steps the
  step budget measures.
* CPU: the resident-set high-water mark, reset through /proc/self/clear_refs, less the RSS at
  the start. It counts freed memory that glibc keeps, so it is only trusted when glibc was told
  to return large blocks at once (`MALLOC_MMAP_THRESHOLD_`, see `benchmarks.measure`); otherwise
  nothing is measured and the report says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from fxopt.compat import tree_leaves
from fxopt.config import malloc_returns_memory

CPU_NEEDS = "MALLOC_MMAP_THRESHOLD_"


def cpu_unmeasurable_reason() -> str | None:
    """Why the CPU step cannot be measured here (None: it can)."""
    if not malloc_returns_memory():
        return (f"CPU peaks are measured only in a process started with {CPU_NEEDS}=65536 "
                "(freed memory otherwise stays resident)")
    if not os.access("/proc/self/clear_refs", os.W_OK):
        return "CPU peaks need Linux's /proc/self/clear_refs"
    return None


def status_bytes(field: str) -> int:
    """A size field of /proc/self/status ("VmRSS", "VmHWM") in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}; RSS measurement needs Linux")


def restart_rss_peak() -> int:
    """Resets the resident-set high-water mark to the current RSS; returns that RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_bytes("VmRSS")


class StepMeter:
    """One measurement of one step on `device` ('cuda' or 'cpu')."""

    def __init__(self, device: str, done: Callable[[int], None]) -> None:
        self.device = device
        self._done = done
        self._base = 0
        self.running = False

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = restart_rss_peak()
        self.running = True

    def stop_after_backward(self, outputs: Any) -> bool:
        """Ends the measurement when the backward of `outputs` is done; False if nothing in
        them needs a backward (the measurement is dropped)."""
        for out in tree_leaves(outputs):
            if isinstance(out, torch.Tensor) and out.grad_fn is not None:
                out.grad_fn.register_hook(lambda *_: self._stop())
                return True
        self.running = False
        return False

    def _stop(self) -> None:
        if not self.running:
            return
        self.running = False
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - self._base
        else:
            peak = status_bytes("VmHWM") - self._base
        self._done(max(peak, 0))
