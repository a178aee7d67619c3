"""Planner speed and quality on synthetic GPT-like problems (no graph, no torch).

    python -m benchmarks.bench_solver                      # 12 and 48 layers, several budgets
    python -m benchmarks.bench_solver --layers 12 --budgets 0.5

For each problem, budget and solver configuration it reports the solve time, the plan's status,
its simulated peak, the estimated extra step time, CP-SAT's proven bound and the optimality gap
(objective - bound) / objective, and the greedy plan's objective for comparison. Prints a table
and writes benchmarks/results/solver.csv.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.csv_out import write_csv
from benchmarks.synthetic import GPTShape, gpt_problem
from fxopt.solver import (
    InfeasibleBudgetError,
    SolverOptions,
    baseline_peak,
    greedy,
    simulate,
    solve,
)
from fxopt.solver.problem import budget_bytes

RESULTS = Path(__file__).parent / "results" / "solver.csv"
GIB = 2**30
CONFIGS = {  # name -> (workers, deterministic)
    "1w-det": (1, True),
    "2w": (2, False),
}


def run_one(layers: int, fraction: float, config: str, time_limit: float, offload: bool,
            lowbit: str | None) -> dict[str, object]:
    shape = GPTShape(layers=layers, d_model=768, seq=1024, batch=8, heads=12)
    problem = gpt_problem(shape)
    workers, det = CONFIGS[config]
    opts = SolverOptions(time_limit_s=time_limit, workers=workers, deterministic=det,
                         allow_offload=offload, allow_lowbit=lowbit)
    base = baseline_peak(problem)
    budget = budget_bytes(fraction, base)
    row: dict[str, object] = {
        "layers": layers, "candidates": len(problem.candidates), "steps": problem.num_steps,
        "budget_frac": fraction, "choices": "+".join(["keep", "recompute"]
                                                     + (["offload"] if offload else [])
                                                     + ([lowbit] if lowbit else [])),
        "config": config, "time_limit_s": time_limit, "baseline_gib": round(base / GIB, 3),
        "budget_gib": round(budget / GIB, 3)}
    g = greedy(problem, budget, opts)
    row["greedy_obj_us"] = g[1].objective(opts.lowbit_penalty_us) if g else ""
    t0 = time.perf_counter()
    try:
        plan = solve(problem, fraction, opts, cache_dir=None)
    except InfeasibleBudgetError as err:
        row.update(status="INFEASIBLE", solve_s=round(time.perf_counter() - t0, 2),
                   peak_gib=round(err.min_peak_bytes / GIB, 3), obj_us="", bound_us="",
                   gap_pct="", recompute="", offload="", lowbit="")
        return row
    elapsed = time.perf_counter() - t0
    sim = simulate(problem, plan.decisions)
    obj = sim.objective(opts.lowbit_penalty_us)
    bound = plan.objective_bound_us
    counts = plan.counts()
    row.update(
        status=plan.status, solve_s=round(elapsed, 2), peak_gib=round(plan.peak_bytes / GIB, 3),
        obj_us=obj, bound_us="" if bound is None else bound,
        gap_pct="" if bound is None else round(100 * max(obj - bound, 0) / max(obj, 1), 3),
        recompute=counts["recompute"], offload=counts["offload"] + counts["lowbit_offload"],
        lowbit=counts["lowbit"] + counts["lowbit_offload"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[12, 48])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.35, 0.5, 0.7])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds per solve (default: 10 for <= 12 layers, else 60)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows = []
    for layers in args.layers:
        limit = args.time_limit or (10.0 if layers <= 12 else 60.0)
        cases = [(b, False, None) for b in args.budgets] + [(min(args.budgets), True, "fp8")]
        for fraction, offload, lowbit in cases:
            for config in args.configs:
                row = run_one(layers, fraction, config, limit, offload, lowbit)
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    cols = list(rows[0])
    write_csv(args.out, cols, rows)
    show = ["layers", "budget_frac", "choices", "config", "status", "solve_s", "peak_gib",
            "budget_gib", "obj_us", "bound_us", "gap_pct", "greedy_obj_us"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in show}
    print("\n" + " | ".join(c.ljust(widths[c]) for c in show))
    print("-+-".join("-" * widths[c] for c in show))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(widths[c]) for c in show))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
