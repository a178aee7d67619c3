"""The planner on real traced graphs: speed at scale, and fxopt against PyTorch's knapsack.

    python -m benchmarks.bench_planner            # 12, 48, 96 layers and the knapsack comparison
    python -m benchmarks.bench_planner --quick    # 12 layers and the knapsack comparison, no CSV
    python -m benchmarks.bench_planner --skip-knapsack --layers 12

Scale (benchmarks/results/planner.csv): GPT-like models built on the meta device (d=768,
seq 1024, batch 8, 12 heads, vocab 50304, no dropout), traced on fake tensors, planned with the
h100 cost profile (offload allowed) and fp8 low-bit storage allowed, at several budget
fractions and at the smallest feasible budget (the peak the `InfeasibleBudgetError` of a size
of 1% of keep-everything names: asking for it must give a plan). The solver's work limit is
its default, which grows with the graph (NOTE [Work limit and safety net] in
fxopt/solver/options.py). Per row: the plan's status and what it means (`Plan.quality()`: the
greedy plan or an improved one, optimal or how far from the bound, over which choice set), the
proven gap (objective - bound) / objective, the greedy plan's objective, the work spent, the
solver's own time (`plan.solve_seconds`, the last solve of the closing loop), the stages of
`fxopt.explain` (trace, PyTorch's default partition, cost models, every solve with the passes
and checks), the Problem's size, and the plan's hash from `--repeat` runs, each in a fresh
plan cache (the search stops on deterministic work, so they must agree).

Knapsack (benchmarks/results/planner_vs_knapsack.csv): for the example GPT and FNO and the
12-layer GPT of the scale rows (d=768, seq 1024, batch 8), PyTorch's
`min_cut_rematerialization_partition` with `activation_memory_budget = f` for several f; its
true peak (fxopt's memory simulator on its forward and backward graphs) becomes fxopt's budget
in bytes. Both partitions' recompute time is measured the same way, as per-node roofline time
(`per_node_seconds`, h100 profile) summed over backward-graph compute nodes:
  *_recompute_us: nodes that the partition's forward graph computes too (work done twice);
  *_bwd_fwdnodes_us: nodes of the joint graph's forward part; this also counts forward-part nodes
    that only the backward needs and that a partition moves into the backward graph (computed
    once, so no extra work; fxopt moves all of them, PyTorch some).
fxopt's own estimate (`plan.extra_time_us`, per fused kernel) is reported beside them.

Each model is traced once: every planning run of that model is `fxopt.partition.partition_joint`
(what `fxopt.explain` calls) on a copy of the same joint graph, inside the trace's partition hook,
so the trace time is reported once per model. The plan cache is pointed at an empty temporary
folder for every run, so every solve is cold. Timings on a shared 2-core machine are noisy; the
work spent and the plans are not.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.csv_out import write_csv

RESULTS = Path(__file__).parent / "results"
GIB, MIB = 2**30, 2**20
FRACTIONS = (0.8, 0.6, 0.5, 0.4)
LOWBIT = "fp8"
KNAPSACK_BUDGETS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
PROFILE = "h100"

# Called inside the trace's partition hook with (joint graph, joint inputs, partitioner kwargs).
JointFn = Callable[[fx.GraphModule, Any, dict[str, Any]], None]


@dataclass(frozen=True)
class Traced:
    seconds: float  # tracing alone (the hook's own time left out)


def with_joint(model: nn.Module, inputs: tuple[Any, ...], fn: JointFn) -> Traced:
    """Traces the training step as `fxopt.explain` does and calls `fn` on its joint graph."""
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    from fxopt.capture import capture_step, fake_device
    from fxopt.partition import copy_graph

    hook_s = 0.0

    def partition(gm: fx.GraphModule, joint_inputs: Any, **kwargs: Any
                  ) -> tuple[fx.GraphModule, fx.GraphModule]:
        nonlocal hook_s
        t0 = time.perf_counter()
        fn(gm, joint_inputs, kwargs)
        out = min_cut_rematerialization_partition(copy_graph(gm), joint_inputs, **kwargs)
        hook_s += time.perf_counter() - t0
        return out

    t0 = time.perf_counter()
    capture_step(model, inputs, {}, None, (), partition,
                 device=fake_device(model, gpu_profile=True))
    return Traced(time.perf_counter() - t0 - hook_s)


def plan_copy(gm: fx.GraphModule, joint_inputs: Any, kwargs: dict[str, Any], budget: float | int,
              lowbit: str | None = None) -> tuple[Any, float]:
    """(fxopt's Report for `budget`, wall seconds of partition_joint) on a copy of `gm`, with a
    cold plan cache."""
    from fxopt.config import CACHE_ENV, Options
    from fxopt.partition import copy_graph, partition_joint

    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="fxopt-bench-cache-")
    opts = Options(budget=budget, device=PROFILE, lowbit=lowbit)
    t0 = time.perf_counter()
    _, _, report = partition_joint(copy_graph(gm), joint_inputs, opts, **kwargs)
    return report, time.perf_counter() - t0


# --------------------------------------------------------------------------- scale
def gpt_meta(layers: int) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    from examples.gpt import GPT, GPTConfig

    cfg = GPTConfig(n_layer=layers, n_embd=768, n_head=12, block_size=1024, vocab_size=50304,
                    dropout=0.0)
    with torch.device("meta"):
        model = GPT(cfg)
    idx = torch.zeros(8, 1024, dtype=torch.long, device="meta")
    return model, (idx, idx)


def _stage(report: Any, name: str) -> float:
    return round(sum(s.seconds for s in report.stages if s.name == name), 2)


def scale_row(layers: int, label: str, reports: list[Any], walls: list[float],
              trace_s: float) -> dict:
    report, wall_s = reports[0], walls[0]
    plan, problem = report.plan, report.problem
    row: dict[str, object] = {
        "layers": layers, "budget": label,
        "budget_gib": round(report.budget_bytes / GIB, 3) if report.budget_bytes else "",
        "baseline_gib": round(report.baseline_peak_bytes / GIB, 3)
        if report.baseline_peak_bytes else "",
        "pytorch_default_gib": round(report.default_peak_bytes / GIB, 3)
        if report.default_peak_bytes else ""}
    if plan is None:
        row.update(status=f"FALLBACK ({report.fallback_reason})")
        return row
    gap = plan.gap
    hashes = [r.plan.content_hash if r.plan is not None else "none" for r in reports]
    row.update(
        status=plan.status, gap_pct="" if gap is None else round(100 * gap, 2),
        quality=plan.quality(), peak_gib=round(report.peak_bytes / GIB, 3),
        objective_us=plan.objective_us, bound_us=plan.objective_bound_us
        if plan.objective_bound_us is not None else "",
        greedy_us=plan.greedy_objective_us if plan.greedy_objective_us is not None else "",
        work=plan.work, solve_s=plan.solve_seconds,
        solve_passes_check_s=_stage(report, "solve, passes and check"),
        explain_s=round(trace_s + wall_s, 2), trace_s=round(trace_s, 2),
        pytorch_partition_s=_stage(report, "PyTorch partition"),
        cost_models_s=_stage(report, "cost models"),
        candidates=len(problem.candidates), steps=problem.num_steps,
        recompute=plan.counts()["recompute"], lowbit=plan.counts()["lowbit"],
        offload=plan.counts()["offload"] + plan.counts()["lowbit_offload"],
        extra_time_us=plan.extra_time_us, plan_hash=hashes[0][:12],
        runs=len(hashes), same_hash=len(set(hashes)) == 1,
        explain_s_runs=" ".join(f"{trace_s + w:.1f}" for w in walls))
    return row


def run_scale(layers: int, fractions: tuple[float, ...], repeat: int) -> list[dict]:
    from fxopt.solver import InfeasibleBudgetError

    model, inputs = gpt_meta(layers)
    found: list[tuple[str, list[Any], list[float]]] = []

    def plan_all(gm: fx.GraphModule, joint_inputs: Any, kwargs: dict[str, Any]) -> None:
        def runs(budget: float | int) -> tuple[list[Any], list[float]]:
            out = [plan_copy(gm, joint_inputs, kwargs, budget, LOWBIT) for _ in range(repeat)]
            return [r for r, _ in out], [w for _, w in out]

        for f in fractions:
            reports, walls = runs(f)
            found.append((str(f), reports, walls))
            print(f"  {layers} layers, budget {f}: {reports[0].plan.quality()} in "
                  f"{' / '.join(f'{w:.1f}' for w in walls)} s", flush=True)
        tiny = int(0.01 * found[-1][1][0].baseline_peak_bytes)  # a size: refused, not met
        try:
            plan_copy(gm, joint_inputs, kwargs, tiny, LOWBIT)
        except InfeasibleBudgetError as err:
            proven = "proven" if err.min_peak_proven else "not proven"
            reports, walls = runs(err.min_peak_bytes)
            found.append((f"min {err.min_peak_bytes / err.baseline_peak_bytes:.3f} ({proven})",
                          reports, walls))
            print(f"  {layers} layers, smallest feasible {err.min_peak_bytes / GIB:.3f} GiB "
                  f"({proven}): {reports[0].plan.quality()} in {walls[0]:.1f} s", flush=True)

    traced = with_joint(model, inputs, plan_all)
    return [scale_row(layers, label, r, w, traced.seconds) for label, r, w in found]


# --------------------------------------------------------------------------- knapsack
class WithMSE(nn.Module):
    """model(x) and its mean squared error against y: the FNO's training loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.model(x), y)


def knapsack_models() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    from examples.fno import FNO2d, FNOConfig
    from examples.gpt import GPT, GPTConfig

    cfg = GPTConfig(n_layer=4, n_embd=256, n_head=4, block_size=256, vocab_size=256, dropout=0.0)
    with torch.device("meta"):
        gpt = GPT(cfg)
        fno = WithMSE(FNO2d(FNOConfig()))
    idx = torch.zeros(8, 256, dtype=torch.long, device="meta")
    x = torch.empty(8, 64, 64, 3, device="meta")
    y = torch.empty(8, 64, 64, 1, device="meta")
    # and the scale benchmark's GPT at the planner benchmark's size (issue: d=768, seq 1024)
    return {"gpt-4x256-seq256-b8": (gpt, (idx, idx)), "fno-64x64-b8": (fno, (x, y)),
            "gpt-12x768-seq1024-b8": gpt_meta(12)}


def compute_names(gm: fx.GraphModule) -> set[str]:
    return {n.name for n in gm.graph.nodes if n.op == "call_function"}


def recompute_us(names: set[str], bwd: fx.GraphModule) -> float:
    """Per-node roofline time (µs) of the backward graph's compute nodes named in `names`."""
    from fxopt.cost_models.device import get_profile
    from fxopt.cost_models.runtime import per_node_seconds
    from fxopt.graph import GraphView, Side

    times = per_node_seconds(GraphView.from_fx(bwd, side=Side.BWD), get_profile(PROFILE))
    return round(1e6 * sum(t for name, t in times.items() if name in names), 1)


def true_peak(fwd: fx.GraphModule, bwd: fx.GraphModule) -> int:
    from fxopt.cost_models.memory import simulate_partition
    from fxopt.graph import GraphView, Side

    return simulate_partition(GraphView.from_fx(fwd, side=Side.FWD),
                              GraphView.from_fx(bwd, side=Side.BWD)).peak_bytes


def run_knapsack(name: str, model: nn.Module, inputs: tuple[Any, ...]) -> list[dict]:
    from torch._functorch import config as functorch_config
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    from fxopt.graph import GraphView, OpKind, Side
    from fxopt.partition import copy_graph
    from fxopt.solver import InfeasibleBudgetError

    rows: list[dict] = []

    def compare(gm: fx.GraphModule, joint_inputs: Any, kwargs: dict[str, Any]) -> None:
        joint = GraphView.from_fx(gm, num_fwd_outputs=kwargs["num_fwd_outputs"])
        joint_fwd = {n.name for n in joint.nodes
                     if n.side is Side.FWD and n.kind is not OpKind.PLACEHOLDER}
        for f in KNAPSACK_BUDGETS:
            with functorch_config.patch(activation_memory_budget=f):
                fwd, bwd = min_cut_rematerialization_partition(copy_graph(gm), joint_inputs,
                                                               **kwargs)
            peak = true_peak(fwd, bwd)
            row: dict[str, object] = {
                "model": name, "f": f, "pytorch_peak_mib": round(peak / MIB, 2),
                "pytorch_recompute_us": recompute_us(compute_names(fwd), bwd),
                "pytorch_bwd_fwdnodes_us": recompute_us(joint_fwd, bwd)}
            try:
                report, _ = plan_copy(gm, joint_inputs, kwargs, int(peak))
            except InfeasibleBudgetError as err:
                row.update(fxopt_status="INFEASIBLE",
                           fxopt_peak_mib=f"min {err.min_peak_bytes / MIB:.2f}")
            else:
                ok = report.plan is not None
                fwd2, bwd2 = report.forward_graph, report.backward_graph
                row.update(
                    fxopt_status=report.plan.status if ok else "FALLBACK",
                    fxopt_peak_mib=round(report.peak_bytes / MIB, 2) if ok else "",
                    fxopt_recompute_us=recompute_us(compute_names(fwd2), bwd2),
                    fxopt_bwd_fwdnodes_us=recompute_us(joint_fwd, bwd2),
                    fxopt_plan_extra_us=report.plan.extra_time_us if ok else "",
                    fxopt_solve_s=report.plan.solve_seconds if ok else "",
                    baseline_mib=round(report.baseline_peak_bytes / MIB, 2) if ok else "")
            rows.append(row)
            print(f"  {name} f={f}: PyTorch {row['pytorch_peak_mib']} MiB "
                  f"{row['pytorch_recompute_us']} us; fxopt {row.get('fxopt_peak_mib')} MiB "
                  f"{row.get('fxopt_recompute_us', '')} us", flush=True)

    with_joint(model, inputs, compare)
    return rows


# --------------------------------------------------------------------------- output
def write(rows: list[dict], path: Path | None) -> None:
    """Prints `rows` as a table and writes them to `path` as CSV (when given)."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in fields}
    print("  ".join(k.ljust(widths[k]) for k in fields))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in fields))
    if path is None:
        print()
        return
    write_csv(path, fields, rows)
    print(f"wrote {path}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="12 layers only; prints the tables, writes CSVs only with --out-dir")
    ap.add_argument("--layers", type=int, nargs="+", default=None)
    ap.add_argument("--budgets", type=float, nargs="+", default=list(FRACTIONS))
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-knapsack", action="store_true")
    ap.add_argument("--repeat", type=int, default=2,
                    help="plan every row this many times, each with a cold plan cache")
    ap.add_argument("--out-dir", type=Path, default=None, help=f"default: {RESULTS}")
    args = ap.parse_args()
    layers = args.layers or ([12] if args.quick else [12, 48, 96])
    out_dir = args.out_dir or (None if args.quick else RESULTS)
    # A cold plan cache for every solve: the cache lives under ~/.cache/fxopt.
    os.environ["HOME"] = tempfile.mkdtemp(prefix="fxopt-bench-")
    torch.set_num_threads(1)
    if not args.skip_scale:
        rows = []
        for n in layers:
            rows += run_scale(n, tuple(args.budgets), args.repeat)
        write(rows, out_dir / "planner.csv" if out_dir else None)
    if not args.skip_knapsack:
        rows = []
        for name, (model, inputs) in knapsack_models().items():
            rows += run_knapsack(name, model, inputs)
        write(rows, out_dir / "planner_vs_knapsack.csv" if out_dir else None)


if __name__ == "__main__":
    main()
