"""The GPU check: what offload, planned budgets and the low-bit kernels do on a CUDA device.

    python -m benchmarks.gpu_check                          # every part, on CUDA (< 6 minutes)
    python -m benchmarks.gpu_check --parts forced,kernels   # some parts
    python -m benchmarks.gpu_check --device cpu --parts forced --small   # the CPU-safe part

Parts:

* ``forced``: every eligible saved tensor of a GPT offloaded (then: stored in fp8 and offloaded),
  compiled by Inductor; loss and every gradient against eager over several steps with different
  data (a copy racing a buffer reuse shows as a mismatch), and Inductor's generated forward
  checked never to recycle an offloaded buffer before the join of its copy
  (NOTE [Offload invariants] in ``fxopt/ops/offload.py``).
* ``overlap``: a profiler trace of one forced-offload step of a larger GPT: how much of the time
  the copies ran, a compute kernel ran on the main stream, and the step time against keeping.
* ``kernels``: the fp8 / int8 Triton quantise and dequantise against the pure-torch reference,
  bit for bit, eagerly and under ``torch.compile``; GB/s against a clone's and the datasheet.
* ``planned``: a 12-layer GPT (d=768, seq 1024, batch 8, bf16): plain ``torch.compile``, PyTorch's
  ``activation_memory_budget`` at 0.5 / 0.2 / 0.0 and fxopt at 0.5 / 0.3 with and without
  offload; the measured ``max_memory_allocated`` of one step above what was allocated before it
  (fxopt's peaks are above parameters and inputs), fxopt's budget and prediction, and the
  median step time. Each configuration runs in its own process: they compile at once and are
  measured one at a time.

Results: ``benchmarks/results/gpu_check_<device>.json`` and ``.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.offload_reading import (
    copy_overlap,
    kernels_before_join,
    kernels_before_wait,
    reused_before_join,
    summary,
)
from fxopt.plan import Kind

RESULTS = Path(__file__).parent / "results"
MiB = 2**20


# ---- models --------------------------------------------------------------------------------------

def gpt(layers: int, width: int, seq: int, vocab: int, device: str, dtype: torch.dtype) -> Any:
    from examples.gpt import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=vocab, block_size=seq, n_layer=layers, n_head=max(1, width // 64),
                    n_embd=width, dropout=0.0)
    torch.manual_seed(0)
    return GPT(cfg).to(device=device, dtype=dtype)


def batch(model: Any, size: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cfg.vocab_size, (size, cfg.block_size + 1), generator=gen)
    return idx[:, :-1].contiguous().to(device), idx[:, 1:].contiguous().to(device)


def grads(model: Any, data: tuple[torch.Tensor, torch.Tensor]
          ) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(*data)
    loss.backward()
    return float(loss.detach()), {n.removeprefix("_orig_mod."): p.grad.detach().float().clone()
                         for n, p in model.named_parameters() if p.grad is not None}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---- forced offload through Inductor ------------------------------------------------------------

# Norm-wise relative error of a gradient against eager's: an offload is a copy (fp32: Inductor's
# own reordering only); fp8 storage keeps 3 mantissa bits.
FORCED_RTOL = {"offload": 1e-4, "lowbit_offload": 0.15}


def part_forced(device: str, small: bool) -> dict[str, Any]:
    from torch._inductor.utils import run_and_get_code

    from benchmarks.forced import ForcedPartitioner, inductor_backend

    layers, width, seq, size = (2, 64, 32, 4) if small else (4, 256, 256, 8)
    kinds = [("offload", Kind.OFFLOAD, None)] if small else \
        [("offload", Kind.OFFLOAD, None), ("lowbit_offload", Kind.LOWBIT_OFFLOAD, "fp8")]
    out: dict[str, Any] = {}
    for label, kind, fmt in kinds:
        torch._dynamo.reset()
        model = gpt(layers, width, seq, 512, device, torch.float32)
        twin = copy.deepcopy(model)
        compiled = torch.compile(twin, backend=inductor_backend(ForcedPartitioner(kind, fmt)))
        data = batch(model, size, 0, device)
        (_, codes) = run_and_get_code(lambda: grads(compiled, data))
        code = "\n".join(codes)
        errors, loss_errors = [], []
        for seed in range(4):  # fresh data each step: a race reads another step's values
            data = batch(model, size, seed, device)
            le, ge = grads(model, data)
            lc, gc = grads(compiled, data)
            loss_errors.append(abs(lc - le) / max(abs(le), 1e-12))
            errors.append(max(float((gc[n] - g).norm() / g.norm().clamp_min(1e-12))
                              for n, g in ge.items()))
        sync(device)
        offloads, reused = code.count("fxopt.offload.default("), reused_before_join(code)
        out[label] = {
            "offloads": offloads,
            "joins": code.count("fxopt.offload_join.default("),
            "prefetches": code.count("fxopt.prefetch.default("),
            "waits": code.count("fxopt.wait_.default("),
            "reused_before_join": reused,
            "kernels_before_join": summary(kernels_before_join(code)),
            "kernels_before_wait": summary(kernels_before_wait(code)),
            "max_grad_rel_err": max(errors), "max_loss_rel_err": max(loss_errors),
            "rtol": FORCED_RTOL[label],
            "ok": max(errors) < FORCED_RTOL[label] and not reused and offloads > 0,
        }
    return out


# ---- copy / compute overlap ----------------------------------------------------------------------

def step_ms(fn: Callable[[], object], device: str, repeat: int = 10) -> float:
    for _ in range(2):
        fn()
    sync(device)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def part_overlap(device: str, small: bool, out_dir: Path) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.forced import ForcedPartitioner, inductor_backend

    layers, width, seq, size = (2, 64, 32, 4) if small else (4, 1024, 1024, 8)
    torch._dynamo.reset()
    model = gpt(layers, width, seq, 8192, device, torch.bfloat16)
    data = batch(model, size, 0, device)
    offloaded = torch.compile(copy.deepcopy(model),
                              backend=inductor_backend(ForcedPartitioner(Kind.OFFLOAD)))
    kept = torch.compile(copy.deepcopy(model),
                         backend=inductor_backend(ForcedPartitioner(Kind.KEEP)))
    ms_off = step_ms(lambda: grads(offloaded, data), device)
    ms_keep = step_ms(lambda: grads(kept, data), device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        grads(offloaded, data)
        sync(device)
    path = out_dir / f"offload_trace_{device}.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    if path.stat().st_size > 12 * MiB:
        path.unlink()  # too large to keep; the numbers below are what it showed
    return {"model": f"GPT {layers}x{width}, seq {seq}, batch {size}, bf16",
            "step_ms_offload_all": ms_off, "step_ms_keep_all": ms_keep,
            **copy_overlap(trace)}


# ---- low-bit kernels -----------------------------------------------------------------------------

def mismatch(x: torch.Tensor, fmt: str, gran: str, got: tuple[torch.Tensor, torch.Tensor],
             want: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Where the kernels' (payload, scales) differ from the reference's, and whether the
    reference on this device agrees with the CPU's (the spec)."""
    from fxopt.ops import reference as ref

    (p_t, s_t), (p_r, s_r) = got, want
    out: dict[str, Any] = {
        "shapes": [list(t.shape) for t in (p_t, s_t, p_r, s_r)],
        "strides": [list(t.stride()) for t in (p_t, p_r)],
        "dtypes": [str(t.dtype) for t in (p_t, s_t, p_r, s_r)]}
    if s_t.shape == s_r.shape:
        bad = (s_t != s_r) & ~(s_t.isnan() & s_r.isnan())
        out["scale_mismatches"] = int(bad.sum())
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            out["scale_first"] = [i, float(s_t[i]), float(s_r[i])]
    if p_t.shape == p_r.shape:
        a, b = p_t.contiguous().view(torch.uint8), p_r.contiguous().view(torch.uint8)
        bad = a != b
        out["payload_mismatches"] = int(bad.sum())
        if bad.any():
            idx = bad.reshape(-1).nonzero()[:4, 0].tolist()
            flat = x.reshape(-1)
            out["payload_first"] = [[i, float(flat[i]), int(a.reshape(-1)[i]),
                                     int(b.reshape(-1)[i])] for i in idx]
    p_c, s_c = ref.quantize(x.cpu(), fmt, gran)
    out["device_ref_equals_cpu_ref"] = torch.equal(p_c.view(torch.uint8),
                                                   p_r.cpu().view(torch.uint8)) and \
        torch.equal(s_c, s_r.cpu())
    out["kernel_equals_cpu_ref"] = torch.equal(p_c.view(torch.uint8),
                                               p_t.cpu().contiguous().view(torch.uint8)) and \
        torch.equal(s_c, s_t.cpu())
    return out


def part_kernels(device: str, small: bool) -> dict[str, Any]:
    import fxopt.ops  # noqa: F401  (registers torch.ops.fxopt.*)
    from benchmarks.bench_kernels import peak_gbps
    from fxopt.ops import reference as ref

    rows = []
    n = (256, 512) if small else (8192, 8192)
    gen = torch.Generator(device=device).manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(n, device=device, dtype=dtype, generator=gen) * 3
        x[0, :8] = torch.tensor([0.0, -0.0, 1e-30, -1e30, 448.0, -448.0, 7.0, 1e-3])
        clone_ms = step_ms(lambda: x.clone(), device, 20)
        for fmt in ("fp8", "int8"):
            for gran in ("block", "row"):
                p_t, s_t = torch.ops.fxopt.quantize(x, fmt, gran)
                p_r, s_r = ref.quantize(x, fmt, gran)
                same_q = torch.equal(p_t.view(torch.uint8), p_r.view(torch.uint8)) and \
                    torch.equal(s_t, s_r)
                y_t = torch.ops.fxopt.dequantize(p_t, s_t, gran, dtype)
                y_r = ref.dequantize(p_r, s_r, gran, dtype)
                same_dq = torch.equal(y_t, y_r)

                def round_trip(t: torch.Tensor, fmt: str = fmt, gran: str = gran
                               ) -> torch.Tensor:
                    p, s = torch.ops.fxopt.quantize(t, fmt, gran)
                    return torch.ops.fxopt.dequantize(p, s, gran, t.dtype)

                diag = {} if same_q and same_dq else mismatch(x, fmt, gran, (p_t, s_t),
                                                               (p_r, s_r))
                compiled = torch.compile(round_trip)
                # the spec is the reference on the CPU (NOTE [Low-bit quantisation semantics])
                p_c, s_c = ref.quantize(x.cpu(), fmt, gran)
                y_c = ref.dequantize(p_c, s_c, gran, dtype)
                same_compiled = torch.equal(compiled(x).cpu(), y_c)
                same_spec = torch.equal(p_t.cpu().view(torch.uint8), p_c.view(torch.uint8)) \
                    and torch.equal(s_t.cpu(), s_c) and torch.equal(y_t.cpu(), y_c)
                q_ms = step_ms(lambda: torch.ops.fxopt.quantize(x, fmt, gran), device, 20)
                d_ms = step_ms(lambda: torch.ops.fxopt.dequantize(p_t, s_t, gran, dtype),
                               device, 20)
                moved = x.numel() * (x.element_size() + 1) + s_t.numel() * 4
                rows.append({
                    "dtype": str(dtype).removeprefix("torch."), "fmt": fmt, "granularity": gran,
                    "shape": list(n), "kernels_equal_spec": same_spec,
                    "quantize_identical": same_q,
                    "dequantize_identical": same_dq, "compiled_identical": same_compiled,
                    "quantize_gb_s": moved / q_ms / 1e6, "dequantize_gb_s": moved / d_ms / 1e6,
                    "clone_gb_s": 2 * x.numel() * x.element_size() / clone_ms / 1e6,
                    "peak_gb_s": peak_gbps(device), **diag})
    return {"rows": rows, "ok": all(r["kernels_equal_spec"] and r["quantize_identical"]
                                    and r["dequantize_identical"] and r["compiled_identical"]
                                    for r in rows)}


# ---- planned budgets (one process per configuration) ---------------------------------------------

PLANNED = ("inductor", "amb0.5", "amb0.2", "amb0.0", "fxopt0.5", "fxopt0.3", "fxopt0.3-nooffload")


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def planned_child(config: str, device: str, small: bool, lock: Path) -> dict[str, Any]:
    import fxopt
    from fxopt.compat import functorch_config

    layers, width, seq, size = (2, 64, 64, 4) if small else (12, 768, 1024, 8)
    model = gpt(layers, width, seq, 512 if small else 50304, device,
                torch.bfloat16 if device == "cuda" else torch.float32)
    data = batch(model, size, 0, device)
    row: dict[str, Any] = {"config": config}
    backend: Any = "inductor"
    if config.startswith("amb"):
        functorch_config().activation_memory_budget = float(config[3:])
    elif config.startswith("fxopt"):
        budget = float(config[5:8])
        backend = fxopt.backend(budget=budget, offload="nooffload" not in config)
    compiled = torch.compile(model, backend=backend)
    from torch._inductor.utils import run_and_get_code

    t0 = time.perf_counter()
    (_, codes) = run_and_get_code(lambda: grads(compiled, data))  # compiles
    sync(device)
    row["compile_s"] = time.perf_counter() - t0
    code = "\n".join(codes)
    if "fxopt.offload.default(" in code:
        row["kernels_before_join"] = summary(kernels_before_join(code))
        row["kernels_before_wait"] = summary(kernels_before_wait(code))
    for _ in range(3):  # re-plans settle (NOTE [Measuring the step in training])
        grads(compiled, data)
    with exclusive(lock):
        sync(device)
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        grads(compiled, data)
        sync(device)
        if device == "cuda":
            row["peak_above_start_mib"] = (torch.cuda.max_memory_allocated() - before) / MiB
            row["allocated_before_mib"] = before / MiB
        row["step_ms"] = step_ms(lambda: grads(compiled, data), device)
    if config.startswith("fxopt"):
        report = backend.step_report()
        plans = [r.plan for r in report.graphs if r.plan is not None]
        kinds: dict[str, int] = {}
        for plan in plans:
            for d in plan.decisions:
                kinds[d.kind.value] = kinds.get(d.kind.value, 0) + 1
        row.update({
            "graphs": len(report.graphs), "fallbacks": len(report.fallbacks),
            "budget_mib": (report.graphs[0].step_budget_bytes or 0) / MiB if report.graphs
            else None,
            "predicted_peak_mib": (report.peak_bytes or 0) / MiB,
            "keep_everything_mib": (report.baseline_peak_bytes or 0) / MiB,
            "statuses": [str(r.status) for r in report.graphs], "decisions": kinds,
            "extra_time_us": sum(p.extra_time_us for p in plans)})
    return row


def start_planned(device: str, small: bool, out_dir: Path) -> dict[str, subprocess.Popen]:
    """The planned configurations' processes: they compile while the other parts run (those
    hold the measuring lock, so nothing is timed at once)."""
    procs = {}
    for config in PLANNED:
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", config,
               "--device", device, "--out", str(out_dir)] + (["--small"] if small else [])
        procs[config] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
    return procs


def part_planned(device: str, small: bool, procs: dict[str, subprocess.Popen]
                 ) -> dict[str, Any]:
    rows = []
    for config, proc in procs.items():
        stdout, stderr = proc.communicate()
        last = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and last:
            rows.append(json.loads(last[-1]))
        else:
            rows.append({"config": config, "error": stderr[-2000:]})
    return {"model": "example GPT " + ("2x64, seq 64, batch 4" if small else
                                       "12x768, seq 1024, batch 8, bf16"), "rows": rows}


# ---- driver --------------------------------------------------------------------------------------

PARTS = ("kernels", "forced", "overlap", "planned")


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    return env


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return f"{v:.1f}" if isinstance(v, float) else "" if v is None else str(v)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows), ""]


def markdown(results: dict[str, Any]) -> str:
    """The results as the tables the README quotes (every number is in the .json beside)."""
    env = results["env"]
    lines = [f"# GPU check: {env.get('gpu', results['device'])}", "",
             f"torch {env['torch']}, Triton {env.get('triton')}, run {results['date']} "
             "(`python -m benchmarks.gpu_check`).", ""]
    kernels = results.get("kernels", {})
    if "rows" in kernels:
        lines += ["## Low-bit kernels (8192 x 8192)", ""]
        lines += _table(["input", "format", "scales", "equal to the spec", "compiled equal",
                         "quantise GB/s", "dequantise GB/s", "clone GB/s"],
                        [[r["dtype"], r["fmt"], r["granularity"],
                          r.get("kernels_equal_spec", r["quantize_identical"]),
                          r["compiled_identical"], r["quantize_gb_s"], r["dequantize_gb_s"],
                          r["clone_gb_s"]] for r in kernels["rows"]])
    forced = results.get("forced", {})
    if "offload" in forced:
        lines += ["## Every eligible saved tensor offloaded, through Inductor", ""]
        lines += _table(["kind", "tensors", "largest gradient error vs eager", "bound",
                         "buffers reused before their join", "kernels between copy and join "
                         "(median)"],
                        [[k, v["offloads"], f"{v['max_grad_rel_err']:.2e}", f"{v['rtol']:g}",
                          len(v["reused_before_join"]),
                          v.get("kernels_before_join", {}).get("median")]
                         for k, v in forced.items() if isinstance(v, dict)])
    overlap = results.get("overlap", {})
    if "copy_us" in overlap:
        lines += [f"## Copies and compute ({overlap['model']}, every tensor offloaded)", "",
                  f"{overlap['copy_gb']:.2f} GB copied in {overlap['copy_us'] / 1e3:.1f} ms "
                  f"({overlap['copy_gb'] / overlap['copy_us'] * 1e6:.1f} GB/s); compute kernels "
                  f"{overlap['compute_us'] / 1e3:.1f} ms, of which "
                  f"{overlap['copy_overlapped_us'] / 1e3:.1f} ms ran beside a copy; step "
                  f"{overlap['step_ms_offload_all']:.1f} ms against "
                  f"{overlap['step_ms_keep_all']:.1f} ms keeping everything.", ""]
    planned = results.get("planned", {})
    if "rows" in planned:
        lines += [f"## Budgets on {planned['model']}", "",
                  "Peak: `max_memory_allocated` during one step above what was allocated "
                  "before it (parameters, inputs).", ""]
        lines += _table(["configuration", "measured peak MiB", "step ms", "fxopt budget MiB",
                         "fxopt predicted MiB", "decisions", "status"],
                        [[r["config"], r.get("peak_above_start_mib"), r.get("step_ms"),
                          r.get("budget_mib"), r.get("predicted_peak_mib"),
                          ", ".join(f"{k} {v}" for k, v in r.get("decisions", {}).items()),
                          ", ".join(r.get("statuses", [])) or r.get("error", "")[-200:]]
                         for r in planned["rows"]])
    for part in PARTS:
        if "error" in results.get(part, {}):
            lines += [f"## {part}: failed", "", "```", results[part]["error"], "```", ""]
    return "\n".join(lines)


def run_part(part: str, device: str, small: bool, out_dir: Path) -> dict[str, Any]:
    if part == "kernels":
        return part_kernels(device, small)
    if part == "forced":
        return part_forced(device, small)
    if part == "overlap":
        return part_overlap(device, small, out_dir)
    raise SystemExit(f"unknown part {part!r}; choose from {', '.join(PARTS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny models (the CPU check)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(planned_child(args.child, args.device, args.small,
                                       out_dir / ".measure.lock")), flush=True)
        return
    results: dict[str, Any] = {"device": args.device, "env": environment(args.device),
                               "date": time.strftime("%Y-%m-%d")}
    stem = out_dir / f"gpu_check_{args.device}"
    parts = args.parts.split(",")
    lock = out_dir / ".measure.lock"
    procs = start_planned(args.device, args.small, out_dir) if "planned" in parts else {}
    t_start = time.perf_counter()
    for part in sorted(parts, key=lambda p: p == "planned"):  # planned last: it waits
        t0 = time.perf_counter()
        try:
            if part == "planned":
                results[part] = part_planned(args.device, args.small, procs)
                t0 = t_start  # it ran beside the others
            else:
                with exclusive(lock):
                    results[part] = run_part(part, args.device, args.small, out_dir)
        except Exception:  # one part failing must not lose the others' numbers
            results[part] = {"error": traceback.format_exc()[-3000:]}
        results[part]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_check] {part}: {json.dumps(results[part])[:3000]}", flush=True)
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
        stem.with_suffix(".md").write_text(markdown(results))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
