"""Where a compiled step peaks: the measured RSS peak of every line of Inductor's generated code
next to the memory model's prediction for the same kernels (CPU only).

Every generated module's ``call`` is rewritten, before Inductor loads it, so that the resident
set's high-water mark is read and reset (``/proc/self/clear_refs``) around each statement. One
training step of a zoo case then gives, per line, the most bytes held while it ran above the
RSS before the step (``benchmarks.measure``'s peak, line by line), and the lines are printed
with the predicted live bytes of the kernel that line runs (``simulate_partition`` of the
graphs the backend compiled, matched by the FX node names Inductor writes in its comments).

    python -m benchmarks.line_peaks fno --budget 0.5 [--batch 256] [--all]

Runs itself in a fresh process with ``benchmarks.measure.MEASURE_ENV`` (the RSS is exact only
with glibc's mmap threshold set at process start).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

MiB = 2**20


def _instrument(source: str) -> str:
    """``source`` with a `_fxopt_mark(line)` after every statement of ``call``'s body."""
    tree = ast.parse(source)
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name == "call":
            body: list[ast.stmt] = []
            for stmt in fn.body:
                body.append(stmt)
                mark = ast.parse(f"_fxopt_mark({stmt.lineno})").body[0]
                if isinstance(stmt, ast.Return):
                    body.insert(len(body) - 1, mark)
                else:
                    body.append(mark)
            fn.body = body
    tree.body.insert(0, ast.parse("from benchmarks.line_peaks import _fxopt_mark").body[0])
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


RECORD: list[tuple[str, int, int, int]] = []  # (module path, line, hwm, rss)
_ON = [False]
_ALLOC = [False]  # --alloc: mark the line in the profiler's trace instead of reading the RSS


def _fxopt_mark(line: int) -> None:
    if not _ON[0]:
        return
    path = sys._getframe(1).f_globals.get("__file__", "?")
    if _ALLOC[0]:
        import time

        RECORD.append((path, line, time.time_ns(), 0))
        return
    from fxopt.meter import restart_rss_peak, status_bytes

    RECORD.append((path, line, status_bytes("VmHWM"), status_bytes("VmRSS")))
    restart_rss_peak()


def _alloc_per_line(events: list[tuple[int, int]]) -> None:
    """Turn RECORD's time stamps into the allocator's peak and final bytes over each line
    (NOTE [Allocated bytes on the CPU] in benchmarks/measure.py): the profiler's memory events
    (in time order, `cpu_memory_events`) between one mark and the next belong to the
    statement that ran there."""
    i = now = 0
    for j, (path, line, t, _) in enumerate(RECORD):
        peak = now
        while i < len(events) and events[i][0] <= t:
            now += events[i][1]
            peak = max(peak, now)
            i += 1
        RECORD[j] = (path, line, peak, now)


def _patch_loader() -> dict[str, str]:
    """Instrument every Python module Inductor loads; returns {instrumented path: original}."""
    from torch._inductor import codecache

    originals: dict[str, str] = {}
    load = codecache.PyCodeCache.load_by_key_path.__func__

    def patched(cls: Any, key: str, path: str, *args: Any, **kwargs: Any) -> Any:
        with open(path) as f:
            src = f.read()
        if "def call(" in src and path not in originals.values():
            new = path[:-3] + "_lines.py"
            with open(new, "w") as f:
                f.write(_instrument(src))
            originals[new] = path
            path = new
        return load(cls, key, path, *args, **kwargs)

    codecache.PyCodeCache.load_by_key_path = classmethod(patched)
    return originals


def _comments(path: str) -> dict[int, tuple[str, list[str]]]:
    """For each line of the original module, its text and the FX nodes named in the last
    ``Topologically Sorted Source Nodes`` comment above it (``config.comment_origin``)."""
    with open(path) as f:
        lines = f.read().splitlines()
    out: dict[int, tuple[str, list[str]]] = {}
    nodes: list[str] = []
    for i, text in enumerate(lines, start=1):
        text = text.strip()
        if text.startswith("# Topologically Sorted Source Nodes: ["):
            nodes = text.split("[", 1)[1].split("]", 1)[0].replace(" ", "").split(",")
        out[i] = (text, nodes)
    return out


def _child(args: argparse.Namespace) -> None:
    import torch
    import torch._inductor.config as iconf

    import fxopt
    from benchmarks.bench_zoo import _case_inputs, _warm

    # The generated code imports this module by name; under `-m` this file is __main__.
    from benchmarks.line_peaks import _ALLOC, _ON, RECORD, _alloc_per_line, _patch_loader
    from benchmarks.measure import _trim_heap, cpu_memory_events
    from fxopt.cost_models.memory import simulate_partition
    from fxopt.graph import GraphView, Side
    from fxopt.meter import restart_rss_peak, status_bytes
    from tests.zoo import forward_loss

    torch.set_num_threads(1)
    iconf.comment_origin = True
    originals = _patch_loader()
    case, model, inputs, targets = _case_inputs(args.case, args.batch, "cpu")
    _warm(case, model, inputs, targets, "cpu")
    if args.backend == "compile":
        compiled = torch.compile(model)
    else:
        compiled = torch.compile(model, backend=fxopt.backend(budget=args.budget))

    def step() -> None:
        loss = forward_loss(case, compiled, inputs, targets)
        loss.backward()

    for _ in range(2):
        model.zero_grad(set_to_none=True)
        step()
    model.zero_grad(set_to_none=True)
    import gc
    gc.collect()
    _trim_heap()
    base = restart_rss_peak()
    _ON[0] = True
    if args.alloc:
        from torch.profiler import ProfilerActivity, profile

        _ALLOC[0], base = True, 0
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        _ON[0] = False
        _alloc_per_line(cpu_memory_events(prof))
        hwm = max(r[2] for r in RECORD)
    else:
        step()
    _ON[0] = False
    hwm = hwm if args.alloc else status_bytes("VmHWM")
    predicted = []
    for r in fxopt.reports()[-1:] if args.backend != "compile" else []:
        sim = simulate_partition(GraphView.from_fx(r.forward_graph, side=Side.FWD),
                                 GraphView.from_fx(r.backward_graph, side=Side.BWD))
        predicted = [(s.name, s.side.name, s.live_bytes, s.after_bytes) for s in sim.steps]
        if args.live:
            _print_live(r, args.live)
        print(json.dumps({"predicted_peak": sim.peak_bytes / MiB, "at": sim.peak_step,
                          "report_peak": (r.peak_bytes or 0) / MiB}))
    sources = {p: _comments(originals.get(p, p)) for p in {r[0] for r in RECORD}}
    rows = [{"module": os.path.basename(p), "line": ln, "peak": (h - base) / MiB,
             "after": (rss - base) / MiB, "src": sources[p].get(ln, ("", []))[0],
             "nodes": sources[p].get(ln, ("", []))[1]}
            for p, ln, h, rss in RECORD]
    print(json.dumps({"measured_peak": max([r["peak"] for r in rows] + [(hwm - base) / MiB])}))
    print(json.dumps({"rows": rows, "predicted": predicted}))


def _print_live(report: Any, at: str) -> None:
    """The buffers the model holds live while step ``at`` (a backward kernel) runs."""
    from fxopt.cost_models.fusion import FusionRules
    from fxopt.cost_models.memory import steps_of_partition
    from fxopt.graph import GraphView, Side

    steps, initial, keep, _ = steps_of_partition(
        GraphView.from_fx(report.forward_graph, side=Side.FWD),
        GraphView.from_fx(report.backward_graph, side=Side.BWD), FusionRules())
    size = dict(initial)
    born = {k: -1 for k in initial}
    last = {k: -1 for k in initial}
    for i, s in enumerate(steps):
        for k, b in s.writes:
            size[k], born[k], last[k] = b, i, i
        for k in s.reads:
            if k in size:
                last[k] = max(last[k], i)
    idx = max(i for i, s in enumerate(steps) if s.name == at)
    with open(os.path.join(tempfile.gettempdir(), "line_peaks_steps.txt"), "w") as f:
        for i, s in enumerate(steps):
            f.write(f"{i} {s.side.name} {s.name} writes={[(k[1], b) for k, b in s.writes]} "
                    f"reads={sorted(k[0] + ':' + k[1] for k in s.reads)} inplace={s.inplace}\n")
        f.write(report.forward_graph.print_readable(print_output=False))
        f.write(report.backward_graph.print_readable(print_output=False))
    live = sorted((k for k in size if born[k] <= idx and (last[k] >= idx or k in keep)),
                  key=lambda k: -size[k])
    print(json.dumps({"live_at": at, "buffers": [f"{k[0]}:{k[1]} {size[k] / MiB:.2f}"
                                                  f"{' kept' if k in keep else ''}"
                                                  for k in live if size[k] > 2**16]}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--backend", default="fxopt", choices=("fxopt", "compile"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--live", default="", help="print the predicted live buffers at a step")
    ap.add_argument("--kernels", action="store_true", help="only lines that run a kernel")
    ap.add_argument("--alloc", action="store_true",
                    help="the allocator's bytes per line (torch.profiler) instead of the RSS")
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return
    from benchmarks.measure import MEASURE_ENV

    env = dict(os.environ, **MEASURE_ENV)
    cmd = [sys.executable, "-m", "benchmarks.line_peaks", *(argv or sys.argv[1:]), "--child"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(out.stderr[-4000:])
    for line in out.stdout.splitlines():
        if not line.startswith("{"):
            continue
        data = json.loads(line)
        if "rows" not in data:
            print(data)
            continue
        side_of: dict[str, str] = {}
        for r in data["rows"]:  # the first module to run is the forward
            side_of.setdefault(r["module"], "FWD" if not side_of else "BWD")
        pred = {(side, name): (live, after) for name, side, live, after in data["predicted"]}
        for r in data["rows"]:
            if args.kernels and (r["src"].startswith(("del ", "assert_")) or " = buf" in r["src"]
                                 and "(" not in r["src"]):
                continue
            side = side_of[r["module"]]
            hit = [n for n in r["nodes"] if (side, n) in pred]
            p = f"{pred[(side, hit[-1])][0] / MiB:7.2f} {pred[(side, hit[-1])][1] / MiB:7.2f}" \
                f" {hit[-1][:22]:22s}" if hit and "(" in r["src"] else " " * 39
            print(f"{side} {r['line']:5d} {r['peak']:7.2f} {r['after']:7.2f} | {p} | "
                  f"{r['src'][:90]}")
        print("predicted:")
        for name, side, live, after in data["predicted"]:
            print(f"  {side} {name:40s} {live / MiB:7.2f} {after / MiB:7.2f}")


if __name__ == "__main__":
    main()
