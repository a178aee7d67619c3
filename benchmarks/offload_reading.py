"""What Inductor's generated code and a profiler trace show about offload: buffers recycled
before their copy's join, kernels between a copy's start and the wait for it, and how much of
the copy time ran beside compute (read by `benchmarks.gpu_check` and `tests/test_offload.py`)."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from typing import Any


def summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# the buffer an op reads first, also through a reinterpreting view
_OFFLOAD = r"fxopt\.offload\.default\((?:reinterpret_tensor\()?(\w+)"
_JOIN = r"fxopt\.offload_join\.default\((?:reinterpret_tensor\()?(\w+)"
_WAIT = r"fxopt\.wait_\.default\((?:reinterpret_tensor\()?(\w+)"
_KERNEL_CALL = re.compile(r"\.run\(|extern_kernels\.|cpp_fused|torch\.ops\.aten\.")


def reused_before_join(code: str) -> list[str]:
    """Buffers of Inductor's generated forward that are freed or reused before the line that
    joins their copy to host memory (an offload race in the generated code)."""
    lines = code.splitlines()
    bad = []
    for i, line in enumerate(lines):
        m = re.search(_JOIN, line)
        if not m:
            continue
        buf = m.group(1)
        freed = re.compile(rf"(\bdel {buf}\b)|(= {buf}; del {buf})")
        if any(freed.search(earlier) for earlier in lines[:i]):
            bad.append(buf)
    return bad


def _kernels_between(code: str, started: Callable[[list[str], int], list[str]], end: str
                     ) -> list[int]:
    """For each buffer whose copy `started(lines, i)` names at line i and that `end` names
    later: the kernels run between those two lines."""
    lines = code.splitlines()
    starts: dict[str, int] = {}
    counts = []
    for i, line in enumerate(lines):
        for name in started(lines, i):
            starts[name] = i
        m = re.search(end, line)
        if m and m.group(1) in starts:
            between = lines[starts[m.group(1)] + 1:i]
            counts.append(sum(bool(_KERNEL_CALL.search(ln)) for ln in between))
    return counts


def _offloaded(lines: list[str], i: int) -> list[str]:
    m = re.search(_OFFLOAD, lines[i])
    return [m.group(1)] if m else []


def _prefetched(lines: list[str], i: int) -> list[str]:
    m = re.search(r"(\w+) = torch\.ops\.fxopt\.prefetch\.default\(", lines[i])
    if not m:
        return []
    # the op's output is the buffer Inductor checks next (a kernel node, then its output)
    for later in lines[i + 1:i + 4]:
        out = re.search(r"assert_size_stride\((\w+)", later)
        if out:
            return [m.group(1), out.group(1)]
    return [m.group(1)]


def kernels_before_join(code: str) -> list[int]:
    """For each offloaded buffer of Inductor's generated code: how many kernels run between the
    start of its copy and the join (0: the main stream waits for the copy at once)."""
    return _kernels_between(code, _offloaded, _JOIN)


def kernels_before_wait(code: str) -> list[int]:
    """For each prefetched buffer: how many kernels run between the prefetch and its wait."""
    return _kernels_between(code, _prefetched, _WAIT)


def _intervals(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events)
    merged: list[tuple[float, float]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    total = 0.0
    for lo, hi in a:
        for blo, bhi in b:
            total += max(0.0, min(hi, bhi) - max(lo, blo))
    return total


def copy_overlap(trace: dict[str, Any]) -> dict[str, float]:
    """From a Chrome trace: microseconds of host<->device copies, of compute kernels, and of the
    copies that ran while a compute kernel ran on another stream."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    # offload's copies: to and from pinned memory on the side streams (reading the loss also
    # copies, on the main stream)
    kernels = [e for e in events if e.get("cat") == "kernel"]
    compute_streams = {k.get("tid") for k in kernels}
    copies = [e for e in events if e.get("cat") == "gpu_memcpy" and "Pinned" in e.get("name", "")
              and e.get("tid") not in compute_streams]
    compute = _intervals(kernels)
    copy_spans = _intervals(copies)
    copy_us = sum(hi - lo for lo, hi in copy_spans)
    hidden = _overlap(copy_spans, compute)
    return {"copy_us": copy_us, "compute_us": sum(hi - lo for lo, hi in compute),
            "copy_overlapped_us": hidden, "overlap_fraction": hidden / copy_us if copy_us else 0.0,
            "copies": len(copies), "copy_gb": sum(e.get("args", {}).get("bytes", 0)
                                                  for e in copies) / 1e9}
