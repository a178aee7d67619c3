"""fxopt on third-party models: the zoo of ``tests/zoo.py`` (Hugging Face transformers,
neuraloperator and the training patterns users write), predicted against measured.

For every case one row:

* graphs: how many graphs Dynamo built for one training step and how many reached fxopt (the
  training graphs), and the fallbacks (reports with a ``fallback_reason``), which must be 0;
* predicted step peaks from ``fxopt.explain`` (``StepReport`` semantics: each graph's peak on top
  of the saved bytes of the graphs before it): keep everything, PyTorch's default partition,
  fxopt at budget 0.5 and fxopt at the smallest reachable budget (a fraction of 0.01, below
  reach, plans the smallest reachable peak);
* measured peak of one training step (forward + loss + backward, gradients starting as None;
  ``benchmarks.measure.measure_step``) and the median and fastest of ``--steps`` timed steps for
  plain
  ``torch.compile`` (Inductor), fxopt with no budget and fxopt at 0.5;
* predicted / measured for fxopt at 0.5 (the cost model's accuracy on real models; target within
  5%), and the same for PyTorch's default partition against plain ``torch.compile``.

Each child first runs one eager forward (``_warm``), so that a model that caches state on its
first call (neuralop's positional-embedding grid) does not make Dynamo recompile on the second
step: the graph that is explained and compiled is the one every measured step runs.  Graphs
Dynamo builds after the first step are still counted (``recompiles``).

Every explain and every measurement runs in a fresh Python process (``--child '<json>'``,
``benchmarks/child.py``) started with ``benchmarks.measure.MEASURE_ENV`` (glibc ``mmap``
threshold so the RSS peak is exact, one thread, no FX-graph / AOTAutograd cache) and a timeout;
a failing part leaves its error in the row and the benchmark goes on.  Results:
``benchmarks/results/zoo_<device>.csv`` and ``.md``.

Run from the repository root::

    python -m benchmarks.bench_zoo --quick          # 5 representative cases, ~10 min on 2 cores
    python -m benchmarks.bench_zoo                  # the whole zoo
    python -m benchmarks.bench_zoo --cases hf_gpt2,fno --batch 64
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from benchmarks import child
from benchmarks.csv_out import write_csv

MiB = 2**20
BATCH = 256  # the zoo's models are tiny (width 32, sequence 16): this makes activations MiBs
STEPS = 5  # timed steps after warm-up
BUDGET = 0.5
MIN_FRACTION = 0.01  # below reach everywhere: plans the smallest reachable peak
ACCURACY = 0.05  # predicted / measured target
SLOWER = 1.10  # a note when fxopt's median and fastest step are both this much slower
QUICK = ("hf_gpt2", "hf_llama", "fno", "graph_break", "hf_llama_checkpointing")
METHODS = ("compile", "fxopt", "fxopt_0.5")  # measured configurations
METHOD_NAMES = {"compile": "torch.compile", "fxopt": "fxopt", "fxopt_0.5": "fxopt 0.5"}


# ---- child processes ----------------------------------------------------------------------------

def _case_inputs(name: str, batch: int, device: str) -> tuple[Any, Any, dict, dict]:
    import torch

    from tests.zoo import ZOO

    case = ZOO[name]
    model, inputs, targets = case.build(batch=batch)
    model = model.to(device)
    move = lambda d: {k: (v.to(device) if isinstance(v, torch.Tensor) else v)  # noqa: E731
                      for k, v in d.items()}
    return case, model, move(inputs), move(targets)


def _warm(case: Any, model: Any, inputs: dict, targets: dict, device: str) -> None:
    """One eager forward before anything is compiled or explained: a model that caches state on
    its first call (neuralop's positional embedding keeps its grid) would otherwise make Dynamo
    build a first-call graph and recompile on the second step; warmed, the graph explained and
    compiled first is the one every later step runs."""
    import torch

    from tests.zoo import forward_loss

    with torch.no_grad():
        forward_loss(case, model, inputs, targets, device=device)


def _report_row(r: Any) -> dict[str, Any]:
    return {"peak": r.peak_bytes, "keep": r.baseline_peak_bytes, "default": r.default_peak_bytes,
            "budget": r.budget_bytes, "saved": r.saved_bytes, "status": r.status,
            "fallback": r.fallback_reason,
            "warnings": list(getattr(r.plan, "warnings", ()) or ())}


def _step_peaks(step: Any) -> dict[str, int | None]:
    """The predicted peaks of a StepReport (fxopt.explain's, or a backend's step_report())."""
    return {"peak": step.peak_bytes, "keep": step.baseline_peak_bytes,
            "default": step.default_peak_bytes,
            "budget": sum(r.budget_bytes or 0 for r in step.graphs) or None}


def _fallbacks(reports: Any) -> list[str]:
    return [f"graph {i}: {r.fallback_reason}" for i, r in enumerate(reports)
            if r.fallback_reason is not None]


def child_explain(job: dict[str, Any]) -> dict[str, Any]:
    """fxopt.explain at budget 0.5 and at the smallest reachable budget."""
    import logging

    import fxopt
    from tests.zoo import autocast_context

    logging.getLogger("fxopt").setLevel(logging.ERROR)  # "below reach" warnings are expected
    case, model, inputs, targets = _case_inputs(job["case"], job["batch"], job["device"])
    _warm(case, model, inputs, targets, job["device"])
    keys = list(targets)

    def loss_fn(out: Any, *t: Any) -> Any:
        return case.loss(out, dict(zip(keys, t)))

    out: dict[str, Any] = {}
    for label, budget in (("half", BUDGET), ("min", MIN_FRACTION)):
        t0 = time.perf_counter()
        with autocast_context(case, job["device"]):  # forward + loss as forward_loss runs them
            step = fxopt.explain(model, kwargs=inputs, loss_fn=loss_fn,
                                 targets=tuple(targets.values()), budget=budget)
        out[label] = dict(_step_peaks(step),
                          graph_count=step.graph_count, reports=len(step.graphs),
                          fallbacks=_fallbacks(step.graphs), seconds=time.perf_counter() - t0,
                          graphs=[_report_row(r) for r in step.graphs])
    return out


def child_measure(job: dict[str, Any]) -> dict[str, Any]:
    """Compile one case with one method, measure the peak of a step and time a few steps."""
    import torch
    from torch._dynamo.utils import counters

    import fxopt
    from benchmarks.measure import allocated_peak, measure_step
    from tests.zoo import forward_loss, mark_dynamic_batch

    torch.set_num_threads(1)
    device = job["device"]
    case, model, inputs, targets = _case_inputs(job["case"], job["batch"], device)
    if case.dynamic_batch:
        mark_dynamic_batch(inputs)
    _warm(case, model, inputs, targets, device)
    method = job["method"]
    backend = None
    if method == "compile":
        compiled = torch.compile(model)
    else:
        budget = None if method == "fxopt" else float(method.split("_", 1)[1])
        backend = fxopt.backend(budget=budget)
        compiled = torch.compile(model, backend=backend)
    cuda = device.startswith("cuda")
    losses: list[float] = []

    def zero() -> None:
        model.zero_grad(set_to_none=True)

    def step() -> None:
        loss = forward_loss(case, compiled, inputs, targets, device=device)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        losses.append(loss.detach())

    fxopt.clear_reports()
    counters.clear()
    t0 = time.perf_counter()
    zero()
    step()
    compile_s = time.perf_counter() - t0
    first_graphs = int(counters["stats"]["unique_graphs"])
    # the training graphs of the step (a graph re-planned for the step has a report per plan)
    first_reports = len(backend.step_report().graphs) if backend else len(fxopt.reports())
    m = measure_step(step, zero, device=device, warmup=1)
    times = []
    for _ in range(job["steps"]):
        zero()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    # the allocator's own peak (NOTE [Allocated bytes on the CPU]); on CUDA it is the peak
    alloc = m.peak_bytes if cuda else allocated_peak(step, zero)
    reports = list(fxopt.reports())
    graphs = int(counters["stats"]["unique_graphs"])
    recompiles = graphs - first_graphs  # graphs Dynamo built after the first step
    out = dict(peak_bytes=m.peak_bytes, alloc_bytes=alloc, baseline_bytes=m.baseline_bytes,
               compile_s=compile_s,
               step_s=times[len(times) // 2], step_min_s=times[0], step_times_s=times,
               loss=float(losses[0]), dynamo_graphs=first_graphs, fxopt_graphs=first_reports,
               recompiles=recompiles, graphs=[_report_row(r) for r in reports],
               fallbacks=_fallbacks(reports), status=[r.status for r in reports],
               solve_s=sum(r.solve_seconds for r in reports))
    if backend is not None:  # the step as the backend planned it, each graph once
        out["predicted"] = _step_peaks(backend.step_report())
    return out


HANDLERS = {"explain": child_explain, "measure": child_measure}  # a child's jobs, by kind
MODULE = "benchmarks.bench_zoo"  # what a child process runs


# ---- parent ------------------------------------------------------------------------------------

@dataclass
class Row:
    """One case; one CSV row (bytes in MiB, times in ms)."""

    case: str
    tags: str
    batch: int
    status: str = "ok"  # "ok" or "error" (see errors)
    dynamo_graphs: int | None = None  # in the fxopt 0.5 compile (explain's count if it failed)
    fxopt_graphs: int | None = None
    fallbacks: int | None = None  # over explain and both fxopt compiles
    recompiles: int | None = None  # graphs Dynamo built after the first step, most of any run
    pred_keep_mib: float | None = None
    pred_default_mib: float | None = None
    pred_fxopt_0_5_mib: float | None = None
    budget_0_5_mib: float | None = None
    pred_fxopt_min_mib: float | None = None
    pred_fxopt_mib: float | None = None  # fxopt with no budget, from its compile's reports
    meas_compile_mib: float | None = None
    meas_fxopt_mib: float | None = None
    meas_fxopt_0_5_mib: float | None = None
    alloc_compile_mib: float | None = None  # the allocator's peak (CPU: profiler events)
    alloc_fxopt_mib: float | None = None
    alloc_fxopt_0_5_mib: float | None = None
    ratio_fxopt_0_5_alloc: float | None = None  # predicted (explain) / allocator peak
    ratio_fxopt_alloc: float | None = None  # fxopt with no budget, its reports / allocator peak
    ratio_fxopt_0_5: float | None = None  # predicted (explain) / measured, fxopt 0.5
    ratio_fxopt_0_5_compiled: float | None = None  # predicted by the compile's own reports
    ratio_fxopt: float | None = None  # fxopt with no budget, its reports / measured
    ratio_default: float | None = None  # PyTorch default partition / measured torch.compile
    step_compile_ms: float | None = None  # median
    step_compile_min_ms: float | None = None  # fastest
    step_fxopt_ms: float | None = None
    step_fxopt_min_ms: float | None = None
    step_fxopt_0_5_ms: float | None = None
    step_fxopt_0_5_min_ms: float | None = None
    compile_s_compile: float | None = None  # wall time of the first step
    compile_s_fxopt: float | None = None
    compile_s_fxopt_0_5: float | None = None
    solve_s_fxopt_0_5: float | None = None
    explain_s: float | None = None
    wall_s: float = 0.0  # all child processes of this case
    loss_compile: float | None = None
    loss_fxopt_0_5: float | None = None
    errors: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


COLUMNS = tuple(f.name for f in fields(Row) if f.name != "extra")


def _mib(v: int | None) -> float | None:
    return None if v is None else round(v / MiB, 3)


def _ratio(a: int | None, b: int | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


def _key(method: str) -> str:
    return method.replace(".", "_")


def bench_case(name: str, batch: int, steps: int, device: str, timeout_s: float,
               log: Any = print) -> Row:
    from tests.zoo import ZOO

    case = ZOO[name]
    row = Row(name, " ".join(case.tags), batch)
    errors: list[str] = []
    base = dict(case=name, batch=batch, device=device, steps=steps)

    ex, wall = child.run_child(dict(base, kind="explain"), timeout_s, MODULE)
    row.wall_s += wall
    row.extra["explain"] = ex
    fallbacks = 0
    if "error" in ex:
        errors.append(f"explain: {ex['error']}")
    else:
        half, low = ex["half"], ex["min"]
        row.pred_keep_mib = _mib(half["keep"])
        row.pred_default_mib = _mib(half["default"])
        row.pred_fxopt_0_5_mib = _mib(half["peak"])
        row.budget_0_5_mib = _mib(half["budget"])
        row.pred_fxopt_min_mib = _mib(low["peak"])
        row.dynamo_graphs, row.fxopt_graphs = half["graph_count"], half["reports"]
        row.explain_s = round(half["seconds"] + low["seconds"], 1)
        fallbacks += len(half["fallbacks"]) + len(low["fallbacks"])
        errors += [f"explain fallback {f}" for f in half["fallbacks"] + low["fallbacks"]]
    log(f"  {name:24s} explain    {wall:6.1f} s  " + (
        f"keep {row.pred_keep_mib} default {row.pred_default_mib} 0.5 {row.pred_fxopt_0_5_mib}"
        f" min {row.pred_fxopt_min_mib} MiB, graphs {row.dynamo_graphs}/{row.fxopt_graphs}"
        if "error" not in ex else ex["error"]))

    measured: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        r, wall = child.run_child(dict(base, kind="measure", method=method), timeout_s, MODULE)
        row.wall_s += wall
        row.extra[method] = r
        k = _key(method)
        if "error" in r:
            errors.append(f"{METHOD_NAMES[method]}: {r['error']}")
            log(f"  {name:24s} {method:10s} {wall:6.1f} s  {r['error']}")
            continue
        measured[method] = r
        setattr(row, f"meas_{k}_mib", _mib(r["peak_bytes"]))
        setattr(row, f"alloc_{k}_mib", _mib(r.get("alloc_bytes")))
        setattr(row, f"step_{k}_ms", round(r["step_s"] * 1e3, 2))
        setattr(row, f"step_{k}_min_ms", round(r["step_min_s"] * 1e3, 2))
        setattr(row, f"compile_s_{k}", round(r["compile_s"], 1))
        row.recompiles = max(row.recompiles or 0, r["recompiles"])
        if r["recompiles"]:
            row.notes += f"{METHOD_NAMES[method]}: {r['recompiles']} recompile(s); "
        if method != "compile":
            fallbacks += len(r["fallbacks"])
            errors += [f"{METHOD_NAMES[method]} fallback {f}" for f in r["fallbacks"]]
        log(f"  {name:24s} {method:10s} {wall:6.1f} s  peak {r['peak_bytes'] / MiB:7.2f} MiB  "
            f"step {r['step_s'] * 1e3:7.1f} ms (fastest {r['step_min_s'] * 1e3:7.1f})  "
            f"compile {r['compile_s']:5.1f} s  graphs {r['dynamo_graphs']}/{r['fxopt_graphs']}")

    half = measured.get("fxopt_0.5")
    if half is not None:
        row.dynamo_graphs, row.fxopt_graphs = half["dynamo_graphs"], half["fxopt_graphs"]
        row.solve_s_fxopt_0_5 = round(half["solve_s"], 2)
        row.loss_fxopt_0_5 = half["loss"]
        if "error" not in ex:
            row.ratio_fxopt_0_5 = _ratio(ex["half"]["peak"], half["peak_bytes"])
            row.ratio_fxopt_0_5_alloc = _ratio(ex["half"]["peak"], half.get("alloc_bytes"))
            if (ex["half"]["graph_count"], ex["half"]["reports"]) != (
                    half["dynamo_graphs"], half["fxopt_graphs"]):
                row.notes += (f"explain built {ex['half']['graph_count']}/"
                              f"{ex['half']['reports']} graphs, the compile "
                              f"{half['dynamo_graphs']}/{half['fxopt_graphs']}; ")
        pred = half.get("predicted") or {}
        row.ratio_fxopt_0_5_compiled = _ratio(pred.get("peak"), half["peak_bytes"])
    if "fxopt" in measured:
        pred = measured["fxopt"].get("predicted") or {}
        row.pred_fxopt_mib = _mib(pred.get("peak"))
        row.ratio_fxopt = _ratio(pred.get("peak"), measured["fxopt"]["peak_bytes"])
        row.ratio_fxopt_alloc = _ratio(pred.get("peak"), measured["fxopt"].get("alloc_bytes"))
    if "compile" in measured:
        row.loss_compile = measured["compile"]["loss"]
        if "error" not in ex:
            row.ratio_default = _ratio(ex["half"]["default"], measured["compile"]["peak_bytes"])
    row.fallbacks = fallbacks
    row.errors = "; ".join(errors)
    if any("fallback" not in e for e in errors):
        row.status = "error"
    row.notes += notes_for(row)
    row.wall_s = round(row.wall_s, 1)
    return row


def notes_for(row: Row) -> str:
    """What is surprising in a row (fxopt above torch.compile, prediction off, fallbacks)."""
    out = []
    if row.fallbacks:
        out.append(f"{row.fallbacks} fallback(s)")
    if row.ratio_fxopt_0_5 is not None and abs(row.ratio_fxopt_0_5 - 1) > ACCURACY:
        out.append(f"fxopt 0.5 predicted/measured {row.ratio_fxopt_0_5:.2f}")
    if row.ratio_fxopt_0_5_alloc is not None and abs(row.ratio_fxopt_0_5_alloc - 1) > ACCURACY:
        out.append(f"fxopt 0.5 predicted/allocated {row.ratio_fxopt_0_5_alloc:.2f}")
    if row.ratio_default is not None and abs(row.ratio_default - 1) > ACCURACY:
        out.append(f"PyTorch default predicted / torch.compile measured {row.ratio_default:.2f}")
    if (row.pred_fxopt_min_mib and row.pred_default_mib
            and row.pred_fxopt_min_mib > row.pred_default_mib * 1.01):
        out.append(f"fxopt's smallest reachable {row.pred_fxopt_min_mib:.2f} MiB > PyTorch "
                   f"default {row.pred_default_mib:.2f} MiB (predicted)")
    c = row.meas_compile_mib
    for k, name in (("fxopt", "fxopt"), ("fxopt_0_5", "fxopt 0.5")):
        v = getattr(row, f"meas_{k}_mib")
        if c and v and v > c * 1.02:
            out.append(f"{name} measured {v:.1f} MiB > torch.compile {c:.1f} MiB")
        t, t0 = getattr(row, f"step_{k}_ms"), row.step_compile_ms
        tm, tm0 = getattr(row, f"step_{k}_min_ms"), row.step_compile_min_ms
        if t and t0 and tm and tm0 and t > t0 * SLOWER and tm > tm0 * SLOWER:
            out.append(f"{name} step x{t / t0:.2f} (fastest x{tm / tm0:.2f}) of torch.compile")
    if (row.meas_fxopt_0_5_mib and row.budget_0_5_mib
            and row.meas_fxopt_0_5_mib > row.budget_0_5_mib * (1 + ACCURACY)):
        out.append(f"fxopt 0.5 measured {row.meas_fxopt_0_5_mib:.1f} MiB > budget "
                   f"{row.budget_0_5_mib:.1f} MiB")
    if c is not None and c < 2:
        out.append("peaks under 2 MiB: RSS noise dominates, raise --batch")
    return "; ".join(out)


# ---- outputs -----------------------------------------------------------------------------------

def _fmt(v: Any, spec: str = ".1f") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def markdown(rows: list[Row], header: str, device: str = "cpu") -> str:
    measured = ("the allocator's high-water mark (`torch.cuda.max_memory_allocated`) over one "
                "step" if device.startswith("cuda") else "the RSS high-water mark of one step")
    lines = [header.rstrip(), "",
             f"Peaks in MiB (predicted by `fxopt.explain`, measured as {measured}); "
             "step times in ms, median / fastest of the timed steps; "
             "pred/meas: fxopt 0.5 predicted / measured; alloc: the allocator's own peak "
             "(NOTE [Allocated bytes on the CPU] in benchmarks/measure.py), pred/alloc: fxopt "
             "0.5 predicted / that.", "",
             "| case | graphs (Dynamo/fxopt) | fallbacks | pred keep | pred default | pred 0.5 "
             "| pred min | meas torch.compile | meas fxopt | meas fxopt 0.5 | pred/meas 0.5 "
             "| alloc fxopt 0.5 | pred/alloc 0.5 "
             "| step torch.compile | step fxopt | step fxopt 0.5 | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        graphs = "" if r.dynamo_graphs is None else f"{r.dynamo_graphs}/{r.fxopt_graphs}"
        steps = [f"{_fmt(getattr(r, f'step_{k}_ms'))} / {_fmt(getattr(r, f'step_{k}_min_ms'))}"
                 if getattr(r, f"step_{k}_ms") is not None else ""
                 for k in ("compile", "fxopt", "fxopt_0_5")]
        note = "; ".join(x for x in (r.notes, r.errors if r.status != "ok" else "") if x)
        lines.append(
            f"| {r.case} | {graphs} | {_fmt(r.fallbacks)} | {_fmt(r.pred_keep_mib)} "
            f"| {_fmt(r.pred_default_mib)} | {_fmt(r.pred_fxopt_0_5_mib)} "
            f"| {_fmt(r.pred_fxopt_min_mib)} | {_fmt(r.meas_compile_mib)} "
            f"| {_fmt(r.meas_fxopt_mib)} | {_fmt(r.meas_fxopt_0_5_mib)} "
            f"| {_fmt(r.ratio_fxopt_0_5, '.3f')} | {_fmt(r.alloc_fxopt_0_5_mib)} "
            f"| {_fmt(r.ratio_fxopt_0_5_alloc, '.3f')} | {steps[0]} | {steps[1]} | {steps[2]} "
            f"| {note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[Row], out_dir: str, device: str, header: str) -> tuple[str, str]:
    csv_path = os.path.join(out_dir, f"zoo_{device}.csv")
    write_csv(csv_path, COLUMNS, (asdict(r) for r in rows), extra="ignore")  # not "extra"
    md_path = os.path.join(out_dir, f"zoo_{device}.md")
    with open(md_path, "w") as f:
        f.write(markdown(rows, header, device))
    return csv_path, md_path


def _source_version() -> str:
    """The commit the benchmark ran on, and whether fxopt/ differed from it (edited meanwhile)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "fxopt", "tests/zoo.py")
    return commit + (" with uncommitted changes in fxopt/ or tests/zoo.py" if dirty else "")


def main(argv: list[str] | None = None) -> None:
    parser = child.parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="cases: " + ",".join(QUICK))
    parser.add_argument("--cases", default=None, help="comma-separated zoo case names")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--steps", type=int, default=STEPS, help="timed steps per run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    parser.add_argument("--out", default="benchmarks/results/")
    args = child.parse_or_run(parser, argv, HANDLERS)
    if args is None:  # a child process: its job is done
        return

    import torch

    from benchmarks.plot import machine_text
    from tests.zoo import ZOO

    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = (args.cases.split(",") if args.cases else list(QUICK) if args.quick else list(ZOO))
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; the zoo has {', '.join(ZOO)}")
    mode = "quick" if args.quick and not args.cases else "cases" if args.cases else "full"
    print(f"{len(names)} case(s), batch {args.batch}, {args.steps} timed steps, device {device}",
          flush=True)
    rows: list[Row] = []
    version_start = _source_version()
    t_start = time.perf_counter()
    for name in names:
        rows.append(bench_case(name, args.batch, args.steps, device, args.timeout,
                               log=lambda s: print(s, flush=True)))
        r = rows[-1]
        print(f"  {name:24s} -> {r.status}, pred/meas 0.5 {_fmt(r.ratio_fxopt_0_5, '.3f')}, "
              f"{r.wall_s:.0f} s" + (f"; {r.notes}" if r.notes else "")
              + (f"; errors: {r.errors}" if r.errors else ""), flush=True)
    total = time.perf_counter() - t_start
    version = _source_version()
    if version != version_start:
        version = f"{version_start} at the start, {version} at the end (edited during the run)"
    command = " ".join(["python -m benchmarks.bench_zoo",
                        *(argv if argv is not None else sys.argv[1:])])
    header = (f"# fxopt on the model zoo (`{command}`)\n\n"
              f"{machine_text(device, mode)}- fxopt source: {version}\n"
              f"- batch {args.batch}, {args.steps} timed steps after "
              f"warm-up, budget {BUDGET} and {MIN_FRACTION} (smallest reachable); "
              f"{len(rows)} case(s) in {total:.0f} s\n")
    csv_path, md_path = write_outputs(rows, args.out, device, header)
    print(f"\n{markdown(rows, header, device)}\n{len(rows)} case(s) in {total:.0f} s; "
          f"wrote {csv_path}, "
          f"{md_path}")


if __name__ == "__main__":
    main()
