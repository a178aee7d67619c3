"""Bandwidth of the low-bit storage ops (``torch.ops.fxopt.quantize`` / ``dequantize``).

    python benchmarks/bench_kernels.py            # CUDA if available (Triton kernels), else CPU
    python benchmarks/bench_kernels.py --device cpu --compile   # CPU, Inductor-compiled reference

Prints GB/s per op, format, granularity and size, and writes
``benchmarks/results/kernels_<device>.csv``. Bytes counted are the bytes an ideal kernel must move:
quantise reads the input and writes payload + scales; dequantise reads payload + scales and writes
the output. Each row is compared with ``clone()`` of the input-sized tensor (a read and a write,
the practical bandwidth ceiling) and, on known GPUs, with the datasheet bandwidth.

On CUDA the ops run the Triton kernels; on CPU they run the pure-torch reference (eager: one
aten kernel per step, so far from the memory bound; ``--compile``: what Inductor makes of it).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import fxopt.ops  # noqa: F401  (registers torch.ops.fxopt.*)
from fxopt.ops.reference import group_shape

# Datasheet HBM bandwidth in GB/s (NVIDIA H100 / H200 / A100 product pages and datasheets:
# H100 SXM5 80GB 3.35 TB/s, H100 PCIe 2.0 TB/s, H200 SXM 4.8 TB/s, A100 SXM 80GB 2.039 TB/s).
PEAK_GBPS = {
    "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H200": 4800.0, "A100-SXM4-80GB": 2039.0,
}
COLUMNS = ["device", "impl", "op", "fmt", "granularity", "dtype", "shape", "numel", "bytes",
           "median_ms", "gb_s", "clone_gb_s", "frac_of_clone", "frac_of_peak"]


def peak_gbps(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_GBPS.items() if k in name), None)


def time_ms(fn: Callable[[], object], device: str, repeat: int) -> float:
    """Median wall time of ``fn`` in ms (CUDA events on GPU), after warm-up."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeat):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def make_ops(compile_: bool) -> tuple[Callable, Callable]:
    def quant(x: torch.Tensor, fmt: str, gran: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.fxopt.quantize(x, fmt, gran)

    def dequant(p: torch.Tensor, s: torch.Tensor, gran: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.ops.fxopt.dequantize(p, s, gran, dtype)

    if compile_:
        return torch.compile(quant, dynamic=False), torch.compile(dequant, dynamic=False)
    return quant, dequant


def bench(device: str, numels: list[int], cols: int, dtype: torch.dtype, repeat: int,
          compile_: bool) -> list[dict[str, object]]:
    quant, dequant = make_ops(compile_)
    impl = ("triton" if device == "cuda" else "reference") + ("+inductor" if compile_ else "")
    peak = peak_gbps(device)
    rows = []
    for numel in numels:
        shape = (numel // cols, cols)
        x = torch.randn(shape, device=device).to(dtype)
        n = x.numel()
        clone_ms = time_ms(lambda: x.clone(), device, repeat)
        clone_gbps = 2 * n * x.element_size() / clone_ms / 1e6
        for fmt in ("fp8", "int8"):
            for gran in ("row", "block"):
                groups = group_shape(x.shape, gran)[0]
                p, s = quant(x, fmt, gran)
                low_bytes = n + 4 * groups  # payload + scales
                cases = {
                    "quantize": (lambda: quant(x, fmt, gran), n * x.element_size() + low_bytes),
                    "dequantize": (lambda: dequant(p, s, gran, dtype),
                                   low_bytes + n * x.element_size()),
                }
                for op, (fn, nbytes) in cases.items():
                    ms = time_ms(fn, device, repeat)
                    gbps = nbytes / ms / 1e6
                    rows.append({
                        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                        "impl": impl, "op": op, "fmt": fmt, "granularity": gran,
                        "dtype": str(dtype).removeprefix("torch."),
                        "shape": "x".join(map(str, shape)),
                        "numel": n, "bytes": nbytes, "median_ms": round(ms, 4),
                        "gb_s": round(gbps, 2), "clone_gb_s": round(clone_gbps, 2),
                        "frac_of_clone": round(gbps / clone_gbps, 3),
                        "frac_of_peak": round(gbps / peak, 3) if peak else "",
                    })
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    shown = ["op", "fmt", "granularity", "dtype", "shape", "median_ms", "gb_s", "frac_of_clone",
             "frac_of_peak"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in shown}
    print("  ".join(c.ljust(widths[c]) for c in shown))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in shown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--numels", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="comma-separated element counts "
                             "(default: up to 2**28 on CUDA, 2**22 on CPU)")
    parser.add_argument("--cols", type=int, default=4096, help="last dimension (row length)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the ops first")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU intra-op threads (default 1: stable numbers on a shared machine)")
    parser.add_argument("--out", type=Path, default=None, help="CSV path")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device; use --device cpu")
    gpu = args.device == "cuda"
    if not gpu:
        torch.set_num_threads(args.threads)
    default_numels = [1 << 20, 1 << 24, 1 << 26, 1 << 28] if gpu else [1 << 16, 1 << 20, 1 << 22]
    numels = args.numels or default_numels
    repeat = args.repeat or (50 if gpu else 5)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    rows = bench(args.device, numels, args.cols, getattr(torch, args.dtype), repeat, args.compile)
    print_table(rows)
    suffix = "_compiled" if args.compile else ""
    out = args.out or Path(__file__).parent / "results" / f"kernels_{args.device}{suffix}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
