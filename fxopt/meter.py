"""Measuring the peak of a real training step while it trains, for the step budget.

NOTE [Measuring the step in training]
The step runs from the forward of its first graph (training or not: a graph without backward
may run first, and what it returns is the step's), called with no run in flight, to the end of
the last backward in flight (NOTE [Counting runs] in fxopt/runs.py): blocks sharing one
graph and microbatches of a pipeline stage are all inside it. `StepMeter.start` is called just
before the first graph's forward and `stop` from the hook that counts the last run's backward
as done (the optimizer, which runs after, is not part of the step).

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

import torch

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

    def stop(self) -> None:
        """Ends the measurement now (the step's last backward has run)."""
        self._stop()

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
