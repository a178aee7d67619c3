"""Device profiles: peak compute, memory bandwidth and host-link bandwidth.

Every GPU number cites its source.  The CPU profile is not looked up but calibrated on the
machine it runs on by a short micro-benchmark (a matmul and a large copy, well under a
second), kept per thread count in `$FXOPT_CACHE_DIR/device` (else `~/.cache/fxopt/device`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fxopt.config import cache_root

__all__ = ["Hardware", "get_profile", "calibrate_cpu", "PROFILES"]

TB = 1e12
GB = 1e9


@dataclass(frozen=True)
class Hardware:
    """Throughputs in FLOP/s and bytes/s; ``overhead_s`` is the fixed cost of one kernel."""

    name: str
    flops: dict[str, float]  # dtype name ("float32", "bfloat16", ...) -> dense FLOP/s
    mem_bandwidth: float  # device memory bytes/s
    host_link: float  # bytes/s per direction between host and device memory
    overhead_s: float  # per-kernel launch/dispatch cost
    memory_bytes: int
    sources: dict[str, str] = field(default_factory=dict)

    def peak_flops(self, dtype: str) -> float:
        """Dense FLOP/s for ``dtype``; other dtypes fall back to the float32 rate."""
        return self.flops.get(dtype, self.flops["float32"])


# PCIe bandwidth per direction for an x16 link: 32 GT/s (gen5) or 16 GT/s (gen4) per lane,
# 128b/130b encoding: 16 * 32e9 * 128/130 / 8 = 63.0 GB/s; gen4 half of that, 31.5 GB/s.
# Source: PCI-SIG, PCI Express Base Specification 5.0 (2019) and 4.0 (2017), data rates per lane.
_PCIE4_X16 = 16 * 16e9 * 128 / 130 / 8
# What a pinned copy reaches over a Gen5 x16 link: measured on an H200 by benchmarks/gpu_check.py
# (overlap part: 7.59 GB each way in 137.6 ms device->host and 137.4 ms host->device, 55 GB/s),
# 87% of the link's 63.0 GB/s; the H100's link is the same Gen5 x16.
_PCIE5_PINNED = 55e9
# Per-kernel launch cost on a GPU: an assumption of a few microseconds (typical CUDA launch
# latency), not a datasheet number.
_GPU_LAUNCH_S = 5e-6

_H100_SRC = ("NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: FP32 67 TFLOPS, "
             "BF16/FP16 Tensor Core 1,979 TFLOPS with sparsity (989 dense), FP8 3,958 with "
             "sparsity (1,979 dense), GPU memory 80 GB, bandwidth 3.35 TB/s; host link PCIe Gen5")
_H200_SRC = ("NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column: FP32 67 TFLOPS, "
             "BF16/FP16 1,979 TFLOPS with sparsity (989 dense), FP8 3,958 with sparsity, "
             "GPU memory 141 GB, bandwidth 4.8 TB/s; host link PCIe Gen5")
_A100_SRC = ("NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column: FP32 19.5 TFLOPS, "
             "BF16/FP16 Tensor Core 312 TFLOPS (dense), GPU memory 80 GB HBM2e, bandwidth "
             "2,039 GB/s; host link PCIe Gen4")

PROFILES: dict[str, Hardware] = {
    "h100": Hardware(
        "h100", {"float32": 67 * TB, "bfloat16": 989 * TB, "float16": 989 * TB,
                 "float8_e4m3fn": 1979 * TB},
        3.35 * TB, _PCIE5_PINNED, _GPU_LAUNCH_S, 80 * 2**30,
        {"compute": _H100_SRC, "memory": _H100_SRC,
         "host_link": "PCIe 5.0 x16, pinned copies measured on an H200 (gpu_check)"}),
    "h200": Hardware(
        "h200", {"float32": 67 * TB, "bfloat16": 989 * TB, "float16": 989 * TB,
                 "float8_e4m3fn": 1979 * TB},
        4.8 * TB, _PCIE5_PINNED, _GPU_LAUNCH_S, 141 * 10**9,
        {"compute": _H200_SRC, "memory": _H200_SRC,
         "host_link": "PCIe 5.0 x16, pinned copies measured on an H200 (gpu_check)"}),
    "a100": Hardware(
        "a100", {"float32": 19.5 * TB, "bfloat16": 312 * TB, "float16": 312 * TB},
        2.039 * TB, _PCIE4_X16, _GPU_LAUNCH_S, 80 * 2**30,
        {"compute": _A100_SRC, "memory": _A100_SRC, "host_link": "PCI-SIG PCIe 4.0 x16"}),
}


def _best_time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# NOTE [Stable CPU calibration]
# The op runtimes decide which of several equally small plans the solver returns, and a
# micro-benchmark on a busy machine varies by 2x between runs. A profile measured afresh in
# every process would give every run a different Problem: a different plan, and a plan cache
# that never hits. So the first measurement on a machine (per thread count, torch version and
# CPU) is kept on disk, rounded to two significant digits, and later processes reuse it.
# Delete the file (or point FXOPT_CACHE_DIR elsewhere) to measure again.
def _calibration_file(threads: int) -> Path:
    return cache_root() / "device" / f"cpu-{threads}threads.json"


def _machine() -> dict[str, str]:
    return {"node": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cpus": str(os.cpu_count()), "torch": torch.__version__}


def _two_digits(x: float) -> float:
    return float(f"{x:.2g}") if x > 0 and math.isfinite(x) else x


def _load_calibration(path: Path) -> dict[str, float] | None:
    try:
        data = json.loads(path.read_text())
        if data.get("machine") != _machine():
            return None
        return {k: float(data[k]) for k in ("flops", "bandwidth", "overhead_s")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, unreadable or another machine: measure again


def _store_calibration(path: Path, values: dict[str, float]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"machine": _machine(), **values}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still plans; the next process measures again


@functools.lru_cache(maxsize=None)
def calibrate_cpu(threads: int | None = None) -> Hardware:
    """This machine's profile: fp32 matmul FLOP/s, copy bandwidth and per-op overhead.

    Uses ``threads`` (default: ``torch.get_num_threads()``). Measured once per machine and
    thread count, well under a second, then read back (NOTE [Stable CPU calibration]).
    Memory and host link are the machine's RAM (the host link is the memory itself).
    """
    threads = threads or torch.get_num_threads()
    path = _calibration_file(threads)
    values = _load_calibration(path)
    if values is None:
        values = {k: _two_digits(v) for k, v in _measure_cpu(threads).items()}
        _store_calibration(path, values)
    flops, bandwidth = values["flops"], values["bandwidth"]
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = 0
    how = f"calibrated on this machine with {threads} thread(s), kept in {path}"
    return Hardware("cpu", {"float32": flops, "bfloat16": flops / 2, "float16": flops / 2,
                                 "float64": flops / 2},
                         bandwidth, bandwidth, values["overhead_s"], mem,
                         {"compute": f"512x512 fp32 matmul, {how}",
                          "memory": f"32 MiB copy, {how}", "host_link": "same as memory"})


def _measure_cpu(threads: int) -> dict[str, float]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 512
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        mm_s = _best_time(lambda: torch.mm(a, b), 5)
        src = torch.ones(8 * 2**20)  # 32 MiB, larger than the caches
        dst = torch.empty_like(src)
        dst.copy_(src)
        copy_s = _best_time(lambda: dst.copy_(src), 5)
        tiny = torch.ones(8)
        overhead = _best_time(lambda: torch.add(tiny, tiny), 50)
    finally:
        torch.set_num_threads(old)
    return {"flops": 2 * n**3 / mm_s,
            "bandwidth": 2 * src.numel() * src.element_size() / copy_s,  # read + write
            "overhead_s": overhead}


def get_profile(name: str = "auto") -> Hardware:
    """``"h100"``, ``"h200"``, ``"a100"``, ``"cpu"`` or ``"auto"`` (the CUDA device if any,
    matched by name, else this CPU)."""
    key = name.lower()
    if key == "auto":
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name().lower()
            for k in ("h200", "h100", "a100"):
                if k in gpu:
                    return PROFILES[k]
            raise ValueError(f"no device profile for GPU {gpu!r}; pass device='h100', 'h200' "
                             "or 'a100' for the closest one")
        return calibrate_cpu()
    if key == "cpu":
        return calibrate_cpu()
    if key not in PROFILES:
        raise ValueError(f"unknown device profile {name!r}; choose one of "
                         f"{sorted([*PROFILES, 'cpu', 'auto'])}")
    return PROFILES[key]
