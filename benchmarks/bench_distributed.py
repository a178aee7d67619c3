"""Distributed training on this machine's CPU (gloo, 2 ranks): per-rank measured peak and step
time of the example GPT (examples/train_distributed.py) under FSDP2 with per-block compile and
under a two-stage 1F1B pipeline, for plain torch.compile, PyTorch's activation_memory_budget
(one ratio for every graph), per-block checkpointing, and fxopt with one byte budget per rank.

    .venv/bin/python -m benchmarks.bench_distributed [--modes fsdp pipeline]

Results: benchmarks/results/distributed_cpu.{csv,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = ["--layers", "4", "--width", "128", "--batch", "32", "--steps", "10"]
# (label, extra arguments); fxopt's budget per mode is below the single ratio's peaks
METHODS = [("torch.compile", ["--backend", "inductor"]),
           ("PyTorch ratio 0.5", ["--backend", "inductor", "--ratio", "0.5"]),
           ("PyTorch ratio 0.0", ["--backend", "inductor", "--ratio", "0.0"]),
           ("per-block checkpoint", ["--backend", "inductor", "--checkpoint"]),
           ("fxopt", ["--backend", "fxopt"])]
BUDGETS = {"fsdp": "45MiB", "pipeline": "17MiB"}


def run(mode: str, extra: list[str]) -> list[dict]:
    cmd = [str(ROOT / ".venv" / "bin" / "torchrun"), "--nproc_per_node", "2",
           str(ROOT / "examples" / "train_distributed.py"), "--mode", mode, *MODEL, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [json.loads(x) for x in proc.stdout.replace("}{", "}\n{").splitlines()
             if x.startswith("{")]
    if proc.returncode != 0 or len(lines) != 2:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return sorted(lines, key=lambda line: line["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["fsdp", "pipeline"])
    args = parser.parse_args()
    rows = []
    for mode in args.modes:
        for label, extra in METHODS:
            if label == "fxopt":
                extra = [*extra, "--budget", BUDGETS[mode]]
            lines = run(mode, extra)
            for line in lines:
                rows.append({"mode": mode, "method": label, "rank": line["rank"],
                             "budget_mib": BUDGETS[mode] if label == "fxopt" else "",
                             "peak_mib": round(line["peak_bytes"] / 2**20, 2),
                             "step_ms": line["step_ms"],
                             "final_loss": round(line["losses"][-1], 5),
                             "plan_hash": line.get("plan_hash") or ""})
                print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    csv = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
    (RESULTS / "distributed_cpu.csv").write_text("\n".join(csv) + "\n")
    md = ["| mode | method | rank | budget | peak MiB | step ms | final loss |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['mode']} | {r['method']} | {r['rank']} | {r['budget_mib']} | "
           f"{r['peak_mib']} | {r['step_ms']} | {r['final_loss']} |" for r in rows]
    (RESULTS / "distributed_cpu.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
