"""Step budgets on real models: the measured peak of a whole training step against the budget.

For each case of ``tests/zoo.py`` (neuraloperator's FNO with one graph and with ten, HF GPT-2)
and each budget (fractions 0.8 / 0.5 / 0.3, sizes between the smallest reachable step peak and
keep-everything), one row:

* the budget in bytes (a fraction: of the step's keep-everything peak, from ``fxopt.explain``);
* fxopt's predicted step peak after the step settled (``backend.step_report()``): every graph on
  top of what the others hold, and the memory outside the graphs once it was measured;
* the measured peak of one step after warm-up (``benchmarks.measure.measure_step``: RSS high-water
  mark with glibc returning freed blocks, one thread) and measured / budget (target <= 1.05);
* what fxopt measured outside the graphs (the eager loss on the model's output) and how many
  graphs were recompiled for the step's budget;
* plain ``torch.compile`` measured the same way, and fxopt without a budget (row "none"), which
  must measure no higher (+2%).

Every run is a fresh process (``--child``) started with ``benchmarks.measure.MEASURE_ENV``. Run from
the repository root::

    python -m benchmarks.bench_step            # fno, fno_opt_einsum, hf_gpt2
    python -m benchmarks.bench_step --cases fno --batch 64

Results: ``benchmarks/results/step_budget_<device>.csv`` and ``.md``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from benchmarks import bench_zoo, child
from benchmarks.csv_out import write_csv

MiB = 2**20
BATCH = 256
CASES = ("fno", "fno_opt_einsum", "hf_gpt2")
FRACTIONS = (0.8, 0.5, 0.3)
SIZE_POINTS = (0.75, 0.35)  # sizes at min + p * (keep - min) of the predicted step peaks
WARM_STEPS = 8  # steps before the measured one: re-plans and fxopt's own measurements settle
ACCURACY = 0.05


# ---- child processes ---------------------------------------------------------------------------

def _build(name: str, batch: int) -> tuple[Any, Any, dict, dict]:
    case, model, inputs, targets = bench_zoo._case_inputs(name, batch, "cpu")
    bench_zoo._warm(case, model, inputs, targets, "cpu")
    return case, model, inputs, targets


def child_explain(job: dict[str, Any]) -> dict[str, Any]:
    """The step's keep-everything and smallest reachable predicted peaks."""
    import logging

    import fxopt

    logging.getLogger("fxopt").setLevel(logging.ERROR)
    case, model, inputs, targets = _build(job["case"], job["batch"])
    keys = list(targets)
    step = fxopt.explain(model, kwargs=inputs, targets=tuple(targets.values()),
                         loss_fn=lambda out, *t: case.loss(out, dict(zip(keys, t))), budget=0.01)
    return {"keep": step.baseline_peak_bytes, "min": step.peak_bytes,
            "default": step.default_peak_bytes, "graphs": len(step)}


def child_measure(job: dict[str, Any]) -> dict[str, Any]:
    """Train a few steps under one budget, then measure one step."""
    import logging

    import torch

    import fxopt
    from benchmarks.measure import measure_step
    from tests.zoo import forward_loss

    logging.getLogger("fxopt").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    case, model, inputs, targets = _build(job["case"], job["batch"])
    backend = None
    if job["budget"] is None:
        compiled = torch.compile(model)
    else:  # "none": fxopt without a budget
        backend = fxopt.backend(budget=None if job["budget"] == "none" else job["budget"])
        compiled = torch.compile(model, backend=backend)

    def zero() -> None:
        model.zero_grad(set_to_none=True)

    def step() -> None:
        forward_loss(case, compiled, inputs, targets).backward()

    t0 = time.perf_counter()
    m = measure_step(step, zero, warmup=WARM_STEPS)
    out: dict[str, Any] = {"measured": m.peak_bytes, "seconds": time.perf_counter() - t0}
    if backend is not None:
        report = backend.step_report()
        out.update(predicted=report.peak_bytes, unplanned=report.unplanned_bytes,
                   fxopt_measured=report.measured_peak_bytes, graphs=len(report),
                   compiles=len(fxopt.reports()), note=report.note,
                   budget_bytes=next((r.step_budget_bytes for r in report.graphs
                                      if r.step_budget_bytes is not None), None),
                   fallbacks=len(report.fallbacks))
    return out


HANDLERS = {"explain": child_explain, "measure": child_measure}  # a child's jobs, by kind


def run_child(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    return child.run_child(job, timeout_s, "benchmarks.bench_step")[0]


# ---- parent ------------------------------------------------------------------------------------

@dataclass
class Row:
    case: str
    budget: str  # as given: "0.5" or "12.3 MiB"
    budget_mib: float | None = None  # the step's budget in bytes, as fxopt resolved it
    graphs: int | None = None
    compiles: int | None = None  # graphs compiled in all: more than graphs = re-planned
    predicted_mib: float | None = None
    measured_mib: float | None = None
    measured_over_budget: float | None = None
    unplanned_mib: float | None = None  # measured by fxopt outside the graphs
    compile_measured_mib: float | None = None  # plain torch.compile
    keep_mib: float | None = None  # predicted keep-everything step peak
    min_mib: float | None = None  # predicted smallest reachable step peak
    error: str = ""


COLUMNS = tuple(f.name for f in fields(Row))


def _mib(v: int | None) -> float | None:
    return None if v is None else round(v / MiB, 3)


def bench_case(name: str, batch: int, timeout_s: float, log: Any) -> list[Row]:
    ex = run_child({"kind": "explain", "case": name, "batch": batch}, timeout_s)
    plain = run_child({"kind": "measure", "case": name, "batch": batch, "budget": None},
                      timeout_s)
    rows = []
    budgets: list[float | int | str] = ["none", *FRACTIONS]
    if "error" not in ex:
        budgets += [int(ex["min"] + p * (ex["keep"] - ex["min"])) for p in SIZE_POINTS]
    for budget in budgets:
        label = (budget if isinstance(budget, str) else f"{budget:g}"
                 if isinstance(budget, float) else f"{budget / MiB:.2f} MiB")
        row = Row(name, label, keep_mib=_mib(ex.get("keep")), min_mib=_mib(ex.get("min")),
                  compile_measured_mib=_mib(plain.get("measured")),
                  error="; ".join(e for e in (ex.get("error"), plain.get("error")) if e))
        r = run_child({"kind": "measure", "case": name, "batch": batch, "budget": budget},
                      timeout_s)
        if "error" in r:
            row.error = "; ".join(e for e in (row.error, r["error"]) if e)
        else:
            row.budget_mib = _mib(r["budget_bytes"])
            row.graphs, row.compiles = r["graphs"], r["compiles"]
            row.predicted_mib, row.measured_mib = _mib(r["predicted"]), _mib(r["measured"])
            row.unplanned_mib = _mib(r["unplanned"])
            if r["budget_bytes"]:
                row.measured_over_budget = round(r["measured"] / r["budget_bytes"], 3)
        log(f"  {name:16s} budget {label:>10s}: measured {row.measured_mib} MiB, "
            f"budget {row.budget_mib} MiB, ratio {row.measured_over_budget}"
            + (f"; error {row.error}" if row.error else ""))
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown(rows: list[Row], header: str) -> str:
    cols = ("case", "budget", "budget_mib", "graphs", "compiles", "predicted_mib", "measured_mib",
            "measured_over_budget", "unplanned_mib", "compile_measured_mib", "keep_mib",
            "min_mib", "error")
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        d = asdict(r)
        lines.append("| " + " | ".join(_fmt(d[c]) for c in cols) + " |")
    sizes = [r for r in rows if r.budget.endswith("MiB")]
    over = [r for r in sizes if r.measured_over_budget and r.measured_over_budget > 1 + ACCURACY]
    below = [r for r in rows if not r.budget.endswith("MiB") and r.budget_mib is not None
             and r.min_mib is not None and r.budget_mib < r.min_mib]
    lines += ["", f"- Sizes (promises): {len(over)} of {len(sizes)} runs measured more than "
                  f"{ACCURACY:.0%} above their budget"
                  + (": " + ", ".join(f"{r.case} {r.budget}" for r in over) if over else ".")]
    none = [r for r in rows if r.budget == "none" and r.measured_mib and r.compile_measured_mib]
    for r in none:
        lines.append(f"- {r.case}: fxopt without a budget measures {r.measured_mib:.2f} MiB, "
                     f"plain torch.compile {r.compile_measured_mib:.2f} MiB "
                     f"({r.measured_mib / r.compile_measured_mib:.3f}x).")
    if below:
        lines.append("- Fractions below the smallest reachable step peak (best effort: the "
                     "smallest reachable plan is used, with a warning): "
                     + ", ".join(f"{r.case} {r.budget}" for r in below) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = child.parser(__doc__)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default="benchmarks/results/")
    args = child.parse_or_run(parser, argv, HANDLERS)
    if args is None:  # a child process: its job is done
        return

    import torch

    from benchmarks.plot import machine_text

    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    rows: list[Row] = []
    for name in args.cases.split(","):
        rows += bench_case(name, args.batch, args.timeout, log=lambda s: print(s, flush=True))
    command = " ".join(["python -m benchmarks.bench_step",
                        *(argv if argv is not None else sys.argv[1:])])
    header = (f"# Step budgets: measured step peak against the budget (`{command}`)\n\n"
              f"{machine_text(device, 'full')}- batch {args.batch}; {WARM_STEPS} steps before "
              f"the measured one; {len(rows)} runs in {time.perf_counter() - t0:.0f} s\n")
    csv_path = os.path.join(args.out, f"step_budget_{device}.csv")
    write_csv(csv_path, COLUMNS, (asdict(r) for r in rows))
    md_path = os.path.join(args.out, f"step_budget_{device}.md")
    with open(md_path, "w") as f:
        f.write(markdown(rows, header))
    print(markdown(rows, header))
    print(f"wrote {csv_path}, {md_path}")


if __name__ == "__main__":
    main()
