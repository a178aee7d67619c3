"""fxopt demo: compile a small GPT under a memory budget, train a few steps, and show what fxopt
did and the measured peak memory of one training step against plain torch.compile.

    make demo        (or: python -m examples.demo --budget 0.5)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# The CPU peak is the process's resident-set high-water mark; glibc must return freed tensors
# to the kernel at once for it to be exact, which is set before the process starts.
if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, "-m", "examples.demo", *sys.argv[1:]])

import torch  # noqa: E402

import fxopt  # noqa: E402
from benchmarks.measure import measure_step  # noqa: E402
from examples.gpt import GPT, GPTConfig, synthetic_batch  # noqa: E402
from fxopt.config import format_bytes  # noqa: E402


def run(label: str, backend: object, cfg: GPTConfig, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = GPT(cfg)
    compiled = torch.compile(model, backend=backend)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    idx, targets = synthetic_batch(cfg, batch, gen)
    compiled(idx, targets).backward()  # first call compiles
    compile_s = time.perf_counter() - t0
    losses, times = [], []
    for _ in range(steps):
        idx, targets = synthetic_batch(cfg, batch, gen)
        opt.zero_grad(set_to_none=True)
        t = time.perf_counter()
        loss = compiled(idx, targets)
        loss.backward()
        times.append(time.perf_counter() - t)
        opt.step()
        losses.append(loss.item())
    idx, targets = synthetic_batch(cfg, batch, gen)
    peak = measure_step(lambda: compiled(idx, targets).backward(),
                        lambda: opt.zero_grad(set_to_none=True), warmup=1)
    times.sort()
    median = times[len(times) // 2] * 1e3
    print(f"{label:>16}: compile {compile_s:5.1f} s, median step {median:7.1f}"
          f" ms, loss {losses[0]:.3f} -> {losses[-1]:.3f}, measured peak "
          f"{format_bytes(peak.peak_bytes)}")
    return {"peak": peak.peak_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="0.5", help="fraction (0.5) or size ('200MiB')")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cfg = GPTConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.1)
    batch = 16
    print(f"GPT: {cfg.n_layer} layers, d={cfg.n_embd}, seq {cfg.block_size}, batch {batch}, "
          f"{sum(p.numel() for p in GPT(cfg).parameters()) / 1e6:.2f} M parameters\n")
    base = run("torch.compile", "inductor", cfg, batch, args.steps)
    ours = run(f"fxopt {args.budget}", fxopt.backend(budget=args.budget), cfg, batch, args.steps)
    print("\nWhat fxopt did:")
    for report in fxopt.reports():
        print(" ", report.summary())
        if report.plan is not None:
            counts = ", ".join(f"{n} {k}" for k, n in report.plan.counts().items() if n)
            print(f"  plan: {counts}; solver {report.status} in {report.solve_seconds:.2f} s; "
                  f"estimated extra time {report.extra_time_us / 1e3:.2f} ms per step")
            for row in sorted(report.tensors, key=lambda r: -r.nbytes)[:5]:
                print(f"    {row.name:>24} {format_bytes(row.nbytes):>11}  {row.choice:<9} "
                      f"{row.reason}")
    change = (ours["peak"] - base["peak"]) / base["peak"] * 100
    print(f"\nmeasured peak: torch.compile {format_bytes(base['peak'])}, fxopt "
          f"{format_bytes(ours['peak'])} ({change:+.1f}%)")


if __name__ == "__main__":
    main()
