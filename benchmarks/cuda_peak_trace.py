"""What is live at a measured CUDA step's peak, by allocation, beside fxopt's prediction.

The zoo's CUDA peaks (``bench_zoo`` on a GPU) are the caching allocator's high-water mark over
one training step.  When a prediction misses it, this says which allocations make up the peak:
it records the allocator's history for one step after warm-up and, at the moment the live bytes
are highest, lists the live blocks with the Python frames that allocated them (generated
Inductor code, the autograd engine, a library).

Run on a CUDA machine from the repository root::

    python -m benchmarks.cuda_peak_trace --cases hf_llama,inplace_mlp --methods compile,fxopt_0.5

Writes one JSON object per (case, method) to ``--out`` (default: standard output).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

TOP = 12  # live blocks listed at the peak
FRAMES = 6  # frames kept per block, innermost first, torch's own allocator frames left out


def _frames(frames: list[dict[str, Any]]) -> list[str]:
    keep = [f for f in frames
            if "torch/cuda/memory.py" not in f["filename"] and f["filename"] != "??"]
    return [f"{f['filename'].rsplit('/', 2)[-1]}:{f['line']} {f['name']}" for f in keep][:FRAMES]


def live_at_peak(trace: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """The highest sum of bytes allocated during the trace and still live, and those blocks."""
    live: dict[int, dict[str, Any]] = {}
    now = peak = 0
    at_peak: list[dict[str, Any]] = []
    for ev in trace:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
            now += ev["size"]
            if now > peak:
                peak, at_peak = now, list(live.values())
        elif ev["action"] == "free_completed" and ev["addr"] in live:
            now -= live.pop(ev["addr"])["size"]
    return peak, at_peak


def trace_case(name: str, method: str, batch: int, top: int = TOP) -> dict[str, Any]:
    import torch

    import fxopt
    from benchmarks.bench_zoo import _case_inputs, _warm
    from tests.zoo import forward_loss

    torch._dynamo.reset()
    fxopt.clear_reports()
    case, model, inputs, targets = _case_inputs(name, batch, "cuda")
    _warm(case, model, inputs, targets, "cuda")
    if method == "compile":
        compiled = torch.compile(model)
    else:
        budget = None if method == "fxopt" else float(method.split("_", 1)[1])
        compiled = torch.compile(model, backend=fxopt.backend(budget=budget))

    def step() -> None:
        forward_loss(case, compiled, inputs, targets, device="cuda").backward()
        torch.cuda.synchronize()

    for _ in range(2):
        model.zero_grad(set_to_none=True)
        step()
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=200_000, stacks="python")
    step()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    measured = torch.cuda.max_memory_allocated() - base
    trace = [ev for dev in snapshot["device_traces"] for ev in dev]
    peak, blocks = live_at_peak(trace)
    blocks.sort(key=lambda ev: -ev["size"])
    reports = fxopt.reports()
    return {
        "case": name, "method": method, "batch": batch,
        "measured_mib": round(measured / 2**20, 3), "traced_peak_mib": round(peak / 2**20, 3),
        "predicted_mib": (round(sum(r.peak_bytes for r in reports) / 2**20, 3)
                          if reports else None),
        "live_blocks_at_peak": len(blocks),
        "top": [{"mib": round(ev["size"] / 2**20, 3), "frames": _frames(ev.get("frames", []))}
                for ev in blocks[:top]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="hf_llama")
    parser.add_argument("--methods", default="compile,fxopt_0.5")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--top", type=int, default=TOP, help="live blocks listed at the peak")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = []
    for name in args.cases.split(","):
        for method in args.methods.split(","):
            try:
                rows.append(trace_case(name, method, args.batch, args.top))
            except Exception as err:  # noqa: BLE001 - one failing case must not stop the rest
                rows.append({"case": name, "method": method, "error": f"{type(err).__name__}: "
                             f"{str(err)[:400]}"})
            print(json.dumps(rows[-1])[:600], flush=True)
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
