"""One job in a fresh Python process, for the benchmarks that measure in children (bench_zoo,
bench_step): the parent's side (`run_child`) and the child's (`child_main`).

A job is a JSON object whose "kind" names the child's handler; the child writes the handler's
result, or {"error": ...}, to the file the parent named in "out". The parent starts the child
with ``benchmarks.measure.MEASURE_ENV`` and a timeout, so one failing job leaves its error in the
benchmark's row and the benchmark goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

Job = dict[str, Any]
Handler = Callable[[Job], dict[str, Any]]


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser, with the hidden ``--child <job>`` its children are run
    with (`run_child`); a benchmark adds its own arguments and reads them with
    `parse_or_run`."""
    out = argparse.ArgumentParser(description=doc,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    out.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return out


def parse_or_run(parser: argparse.ArgumentParser, argv: list[str] | None,
                 handlers: Mapping[str, Handler]) -> argparse.Namespace | None:
    """The benchmark's arguments; None when this process is a child, which has then run its
    job with `handlers`."""
    args = parser.parse_args(argv)
    if args.child is None:
        return args
    child_main(args.child, handlers)
    return None


def child_main(arg: str, handlers: Mapping[str, Handler]) -> None:
    """Runs the job `arg` (JSON) with the handler its "kind" names, in this process."""
    job = json.loads(arg)
    try:
        result = handlers[job["kind"]](job)
    except Exception as err:  # noqa: BLE001 - the parent records it in the row
        traceback.print_exc()
        text = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
        result = {"error": text[:400]}
    with open(job["out"], "w") as f:
        json.dump(result, f)


def run_child(job: Job, timeout_s: float, module: str) -> tuple[dict[str, Any], float]:
    """Runs one job in a fresh process (`python -m <module> --child <job>`); (its result or
    {"error": ...}, wall seconds)."""
    from benchmarks.measure import MEASURE_ENV

    with tempfile.TemporaryDirectory() as tmp:
        job = dict(job, out=os.path.join(tmp, "result.json"))
        env = dict(os.environ, **MEASURE_ENV,
                   PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", module, "--child", json.dumps(job)],
                                  env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}, time.perf_counter() - t0
        wall = time.perf_counter() - t0
        if os.path.exists(job["out"]):
            with open(job["out"]) as f:
                result = json.load(f)
            if "error" in result:
                sys.stderr.write(proc.stderr[-3000:])
            return result, wall
        sys.stderr.write(proc.stderr[-3000:])
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {last[:300]}"}, wall
