"""Memory / step-time Pareto benchmark: fxopt against eager, torch.compile, PyTorch's
``activation_memory_budget`` and per-block ``torch.utils.checkpoint``.

Every configuration runs in a fresh Python process (``--run '<json>'``) started with
``benchmarks.measure.MEASURE_ENV`` (glibc ``mmap`` threshold for an exact RSS peak, one thread, no
FX-graph / AOTAutograd cache so the partitioner really runs).  The child compiles one training
step (forward + loss + backward, no optimizer), measures its peak
(``benchmarks.measure.measure_step``),
the median step time, the compile time (wall time of the first step) and fxopt's solve time,
and compares every parameter gradient with an eager copy of the model.  This process collects
the records, writes ``benchmarks/results/pareto_<device>.csv``, ``MACHINE.md`` and the plot.

Run from the repository root::

    python -m benchmarks.bench_pareto --quick            # a few minutes on 2 cores
    python -m benchmarks.bench_pareto                    # the full sweep
    python -m benchmarks.bench_pareto --quick --models gpt --trace /tmp/traces
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MiB = 2**20
GRAD_TOL = 1e-3  # max relative gradient error for configurations that compute exactly

# Model sizes: activations dominate parameters, one step well under a second on one thread.
SIZES: dict[str, dict[str, dict[str, int]]] = {
    "quick": {
        "gpt": dict(n_layer=2, n_embd=128, n_head=4, block_size=128, batch=16),
        "fno": dict(width=16, modes=8, n_layers=2, size=48, batch=8),
    },
    "full": {
        "gpt": dict(n_layer=4, n_embd=256, n_head=8, block_size=256, batch=8),
        "fno": dict(width=32, modes=8, n_layers=4, size=64, batch=8),
        "gpt-large": dict(n_layer=12, n_embd=768, n_head=12, block_size=1024, batch=8),
    },
}
PT_FRACTIONS = {"quick": (0.5, 0.0), "full": (0.8, 0.6, 0.4, 0.2, 0.0)}
FXOPT_BUDGETS = {"quick": (0.9, 0.7, 0.5), "full": (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)}
STEPS = {"quick": 15, "full": 20}


@dataclass(frozen=True)
class Config:
    """One measured configuration (JSON-serialisable; the child's only input)."""

    model: str  # "gpt", "fno", "gpt-large"
    method: str  # "eager", "compile", "pt_budget", "checkpoint", "fxopt"
    mode: str  # "quick" or "full" (model size)
    device: str = "cpu"
    fraction: float | None = None  # activation_memory_budget (pt_budget)
    budget: float | int | None = None  # fxopt budget: fraction or bytes
    lowbit: str | None = None
    offload: bool = False
    steps: int = 5
    trace_dir: str | None = None

    @property
    def label(self) -> str:
        if self.method == "pt_budget":
            return f"pt_budget {self.fraction:g}"
        if self.method == "fxopt":
            b = "default" if self.budget is None else f"{self.budget:g}" \
                if isinstance(self.budget, float) else f"{self.budget / MiB:.1f}MiB"
            extra = (f" {self.lowbit}" if self.lowbit else "") + (" offload" if self.offload
                                                                   else "")
            return f"fxopt {b}{extra}"
        return self.method


@dataclass(frozen=True)
class Record:
    """What one configuration measured; one CSV row."""

    model: str
    label: str
    method: str
    mode: str
    device: str
    status: str  # "ok", "infeasible (min X MiB)", "error: ..."
    peak_bytes: int | None = None
    step_s: float | None = None  # median over `steps` steps
    step_min_s: float | None = None  # fastest of them (least disturbed by other processes)
    compile_s: float | None = None  # wall time of the first step
    solve_s: float | None = None  # fxopt: solver time summed over the graphs
    budget_bytes: int | None = None  # fxopt: the budget the plan was held to
    predicted_peak_bytes: int | None = None  # fxopt: predicted with the plan
    baseline_peak_bytes: int | None = None  # fxopt: predicted, keep everything
    grad_rel_err: float | None = None  # max over parameters of |g - g_eager| / |g_eager|
    grad_ok: bool | None = None
    min_peak_bytes: int | None = None  # infeasible: smallest reachable peak
    min_peak_fp8_bytes: int | None = None  # infeasible: the same with lowbit='fp8'
    graphs: int = 0
    trace: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---- models (built in the child) --------------------------------------------------------------

def _build(cfg: Config) -> tuple[Any, Any, tuple[Any, ...]]:
    """(base model, loss module, args): ``loss_module(*args)`` is the scalar loss; the
    checkpoint method gets a loss module that checkpoints every block of ``base``."""
    import torch

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    size = dict(SIZES["full" if cfg.model == "gpt-large" else cfg.mode][cfg.model])
    if cfg.model.startswith("gpt"):
        from examples.gpt import GPT, GPTConfig, synthetic_batch

        batch = size.pop("batch")
        gcfg = GPTConfig(vocab_size=256, dropout=0.0, **size)
        base = GPT(gcfg)
        args = synthetic_batch(gcfg, batch, gen)
    else:
        from examples.fno import FNO2d, FNOConfig, synthetic_batch

        base = FNO2d(FNOConfig(width=size["width"], modes1=size["modes"], modes2=size["modes"],
                               n_layers=size["n_layers"]))
        args = synthetic_batch(size["batch"], size["size"], gen)
    base = base.to(cfg.device)
    args = tuple(a.to(cfg.device) for a in args)
    return base, _loss_module(base, cfg.method == "checkpoint"), args


def _loss_module(base: Any, checkpointed: bool) -> Any:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from examples.gpt import GPT

    def call(fn: Any, *xs: Any) -> Any:
        return checkpoint(fn, *xs, use_reentrant=False) if checkpointed else fn(*xs)

    class GPTLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = base

        def forward(self, idx: Any, targets: Any) -> Any:  # GPT.forward, blocks wrapped
            m = self.m
            pos = torch.arange(idx.size(1), device=idx.device)
            x = m.drop(m.wte(idx) + m.wpe(pos))
            for block in m.blocks:
                x = call(block, x)
            logits = m.lm_head(m.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    class FNOLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = base

        @staticmethod
        def layer(spec: Any, pw: Any, last: bool, x: Any) -> Any:
            x = spec(x) + pw(x)
            return x if last else F.gelu(x)

        def forward(self, x: Any, y: Any) -> Any:  # FNO2d.forward, layers wrapped
            m = self.m
            x = m.lift(x).permute(0, 3, 1, 2)
            n = len(m.spectral)
            for i, (spec, pw) in enumerate(zip(m.spectral, m.pointwise)):
                x = call(lambda t, s=spec, p=pw, last=i == n - 1: self.layer(s, p, last, t), x)
            out = m.proj2(F.gelu(m.proj1(x.permute(0, 2, 3, 1))))
            return F.mse_loss(out, y)

    return GPTLoss() if isinstance(base, GPT) else FNOLoss()


# ---- child: one configuration -----------------------------------------------------------------

def _compiled(cfg: Config, loss_module: Any) -> Any:
    import torch

    if cfg.method == "eager":
        return loss_module
    if cfg.method == "pt_budget":
        torch._functorch.config.activation_memory_budget = cfg.fraction
    if cfg.method == "fxopt":
        import fxopt

        return torch.compile(loss_module, backend=fxopt.backend(
            budget=cfg.budget, lowbit=cfg.lowbit, offload=cfg.offload))
    return torch.compile(loss_module)  # compile, pt_budget, checkpoint: Inductor, min-cut


def _infeasible(err: BaseException) -> Any:
    from fxopt.solver.errors import InfeasibleBudgetError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, InfeasibleBudgetError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _grad_error(base: Any, grads: dict[str, Any], cfg: Config, args: tuple[Any, ...]) -> float:
    """Max over parameters of the relative L2 error against an eager copy of ``base``."""
    ref = copy.deepcopy(base)
    ref.zero_grad(set_to_none=True)
    _loss_module(ref, False)(*args).backward()
    worst = 0.0
    for name, p in ref.named_parameters():
        g, r = grads[name], p.grad
        if r is None or g is None:
            if (r is None) != (g is None):
                return float("inf")
            continue
        rel = (g.float() - r.float()).norm() / r.float().norm().clamp_min(1e-30)
        worst = max(worst, float(rel))
    return worst


def run_config(cfg: Config) -> Record:
    """Compile and measure one configuration in this process (the child's work)."""
    import torch

    import fxopt
    from benchmarks.measure import measure_step

    torch.set_num_threads(1)
    base, loss_module, args = _build(cfg)
    fn = _compiled(cfg, loss_module)
    cuda = cfg.device.startswith("cuda")

    def zero() -> None:
        base.zero_grad(set_to_none=True)

    def step() -> None:
        fn(*args).backward()
        if cuda:
            torch.cuda.synchronize()

    common = dict(model=cfg.model, label=cfg.label, method=cfg.method, mode=cfg.mode,
                  device=cfg.device)
    fxopt.clear_reports()
    t0 = time.perf_counter()
    try:
        step()
    except Exception as err:  # noqa: BLE001 - classified below, re-raised when not a budget error
        inf = _infeasible(err)
        if inf is None:
            raise
        return Record(**common, status=f"infeasible (min {inf.min_peak_bytes / MiB:.1f} MiB)",
                      budget_bytes=inf.budget_bytes, baseline_peak_bytes=inf.baseline_peak_bytes,
                      min_peak_bytes=inf.min_peak_bytes,
                      min_peak_fp8_bytes=inf.alternatives.get("lowbit='fp8'"))
    compile_s = time.perf_counter() - t0
    m = measure_step(step, zero, device=cfg.device, warmup=1)
    times = []
    for _ in range(cfg.steps):
        zero()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    trace = None
    if cfg.trace_dir:
        trace = _trace(cfg, step, zero)
    zero()
    step()
    grads = {n: (p.grad.detach().clone() if p.grad is not None else None)
             for n, p in base.named_parameters()}
    zero()
    err = _grad_error(base, grads, cfg, args)
    reports = list(fxopt.reports())
    fx_fields: dict[str, Any] = {}
    if reports:
        fx_fields = dict(
            solve_s=sum(r.solve_seconds for r in reports),
            budget_bytes=sum(r.budget_bytes or 0 for r in reports) or None,
            predicted_peak_bytes=max((r.peak_bytes or 0) for r in reports) or None,
            baseline_peak_bytes=max((r.baseline_peak_bytes or 0) for r in reports) or None)
    exact = cfg.lowbit is None
    return Record(**common, status="ok", peak_bytes=m.peak_bytes,
                  step_s=times[len(times) // 2], step_min_s=times[0], compile_s=compile_s,
                  grad_rel_err=err,
                  grad_ok=(err <= GRAD_TOL) if exact else None, graphs=len(reports),
                  trace=trace, extra={"strategies": [r.strategy for r in reports],
                                      "status": [r.status for r in reports],
                                      "step_times_s": times}, **fx_fields)


def _trace(cfg: Config, step: Any, zero: Any) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if cfg.device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    os.makedirs(cfg.trace_dir or ".", exist_ok=True)
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(2):
            zero()
            with torch.profiler.record_function("train_step"):
                step()
    name = f"{cfg.model}-{cfg.label}".replace(" ", "_").replace("/", "_")
    path = os.path.join(cfg.trace_dir or ".", f"{name}.json")
    prof.export_chrome_trace(path)
    return path


# ---- parent: the sweep ------------------------------------------------------------------------

def run_in_subprocess(cfg: Config, timeout_s: float = 900) -> Record:
    from benchmarks.measure import MEASURE_ENV

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "record.json")
        env = dict(os.environ, **MEASURE_ENV, PYTHONPATH=os.getcwd())
        job = json.dumps({"config": asdict(cfg), "out": out})
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_pareto", "--run", job],
                                  env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return Record(cfg.model, cfg.label, cfg.method, cfg.mode, cfg.device,
                          status=f"error: timed out after {timeout_s:.0f} s")
        if proc.returncode != 0 or not os.path.exists(out):
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            sys.stderr.write(proc.stderr[-3000:])
            return Record(cfg.model, cfg.label, cfg.method, cfg.mode, cfg.device,
                          status=f"error: exit {proc.returncode}: {last[:200]}")
        with open(out) as f:
            return Record(**json.load(f))


def configs_for(model: str, mode: str, device: str, trace_dir: str | None) -> list[Config]:
    """Every configuration of one model except the low-bit one, which depends on the results."""
    steps = STEPS[mode]
    c = dict(model=model, mode=mode, device=device, steps=steps, trace_dir=trace_dir)
    out = [Config(method="eager", **c), Config(method="compile", **c)]
    out += [Config(method="pt_budget", fraction=f, **c) for f in PT_FRACTIONS[mode]]
    out.append(Config(method="checkpoint", **c))
    # budget None: fxopt's default, no tighter than PyTorch's partition at the least time
    out += [Config(method="fxopt", budget=b, **c) for b in (None, *FXOPT_BUDGETS[mode])]
    if device.startswith("cuda"):
        out += [Config(method="fxopt", budget=b, offload=True, **c)
                for b in FXOPT_BUDGETS[mode][-2:]]
    return out


def lowbit_config(done: list[Record], model: str, mode: str, device: str,
                  trace_dir: str | None) -> Config | None:
    """fp8 at a budget below the recompute-only minimum, taken from an infeasible run (a probe
    at 5% of the keep-everything peak is run first when the sweep had none)."""
    c = dict(model=model, mode=mode, device=device, steps=STEPS[mode], trace_dir=trace_dir)
    inf = [r for r in done if r.min_peak_bytes is not None and r.method == "fxopt"
           and "fp8" not in r.label]
    if not inf:
        probe = run_in_subprocess(Config(method="fxopt", budget=0.05, **c))
        _print_record(probe)
        done.append(probe)
        inf = [probe] if probe.min_peak_bytes is not None else []
    if not inf or inf[0].min_peak_fp8_bytes is None:
        return None
    lo, hi = inf[0].min_peak_fp8_bytes, inf[0].min_peak_bytes or 0
    if lo >= hi:
        return None
    return Config(method="fxopt", budget=int((lo + hi) // 2), lowbit="fp8", **c)


def _print_record(r: Record) -> None:
    peak = f"{r.peak_bytes / MiB:8.1f} MiB" if r.peak_bytes is not None else " " * 12
    step = f"{r.step_s * 1e3:8.1f} ms" if r.step_s is not None else " " * 11
    comp = f"compile {r.compile_s:5.1f} s" if r.compile_s is not None else ""
    print(f"  {r.model:9s} {r.label:22s} {peak} {step}  {comp}  {r.status}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small models, fewer points")
    parser.add_argument("--models", default=None, help="comma-separated: gpt,fno[,gpt-large]")
    parser.add_argument("--trace", default=None, metavar="DIR",
                        help="save a torch.profiler Chrome trace of 2 steps per configuration")
    parser.add_argument("--out", default="benchmarks/results/")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.run is not None:
        job = json.loads(args.run)
        record = run_config(Config(**job["config"]))
        with open(job["out"], "w") as f:
            json.dump(asdict(record), f)
        return

    import torch

    from benchmarks.plot import write_outputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mode = "quick" if args.quick else "full"
    default = ["gpt", "fno"] + (["gpt-large"] if device == "cuda" and mode == "full" else [])
    models = args.models.split(",") if args.models else default
    trace = os.path.abspath(args.trace) if args.trace else None
    if device == "cpu":
        print("CPU: offload is skipped (host memory is the device memory, it saves nothing)")
    records: list[Record] = []
    t_start = time.perf_counter()
    for model in models:
        done: list[Record] = []
        for cfg in configs_for(model, mode, device, trace):
            done.append(run_in_subprocess(cfg))
            _print_record(done[-1])
        low = lowbit_config(done, model, mode, device, trace)
        if low is not None:
            done.append(run_in_subprocess(low))
            _print_record(done[-1])
        records += done
    print(f"\n{len(records)} configurations in {time.perf_counter() - t_start:.0f} s")
    write_outputs(records, args.out, device, mode)


if __name__ == "__main__":
    main()
