"""Predicted vs measured peak memory and step time of compiled training steps on CPU.

For each example model (GPT, FNO, CNN) at two sizes and two partitions (PyTorch's default
for Inductor, ``min_cut``, and save-everything, ``default``), one fresh subprocess compiles the
step, measures its peak (``benchmarks.measure``) and its step time, and times every op of the
forward and backward graphs eagerly.  This process then predicts the peak from the captured
graphs (``simulate_partition``, and ``simulate_plan`` from the joint graph plus the saved set)
and the step time from a CPU profile calibrated with one thread, and prints the table and the
rank correlation between predicted and measured op times.

Run from the repository root::

    python benchmarks/bench_cost_models.py            # every case, writes the CSV
    python benchmarks/bench_cost_models.py gpt-s cnn-s   # some cases
"""

from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

MiB = 2**20


class WithLoss(nn.Module):
    """``model`` followed by a loss, so that ``module(x, y)`` is the scalar training loss."""

    def __init__(self, model: nn.Module, loss: Any) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.model(x), y)


def gpt_case(n_layer: int, n_embd: int, n_head: int, block_size: int, batch: int):
    from examples.gpt import GPT, GPTConfig, synthetic_batch

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, block_size=block_size, n_layer=n_layer, n_head=n_head,
                    n_embd=n_embd, dropout=0.1)
    return GPT(cfg), synthetic_batch(cfg, batch, torch.Generator().manual_seed(0))


def fno_case(width: int, modes: int, n_layers: int, batch: int, size: int):
    from examples.fno import FNO2d, FNOConfig, synthetic_batch

    torch.manual_seed(0)
    model = FNO2d(FNOConfig(width=width, modes1=modes, modes2=modes, n_layers=n_layers))
    return WithLoss(model, F.mse_loss), synthetic_batch(batch, size,
                                                        torch.Generator().manual_seed(0))


def cnn_case(width: int, image_size: int, batch: int):
    from examples.cnn import CNNConfig, SmallCNN, synthetic_batch

    torch.manual_seed(0)
    cfg = CNNConfig(width=width, image_size=image_size)
    return WithLoss(SmallCNN(cfg), F.cross_entropy), synthetic_batch(
        cfg, batch, torch.Generator().manual_seed(0))


@dataclass(frozen=True)
class Case:
    name: str
    builder: str  # "module:function" for benchmarks.measure.measure_in_subprocess
    kwargs: dict[str, int]
    slow: bool = False  # left out of the default test run, always in the benchmark


_HERE = "benchmarks.bench_cost_models"
CASES: dict[str, Case] = {c.name: c for c in [
    Case("gpt-s", f"{_HERE}:gpt_case",
         dict(n_layer=2, n_embd=128, n_head=4, block_size=128, batch=16)),
    Case("gpt-l", f"{_HERE}:gpt_case",
         dict(n_layer=2, n_embd=256, n_head=8, block_size=256, batch=8), slow=True),
    Case("fno-s", f"{_HERE}:fno_case", dict(width=32, modes=8, n_layers=4, batch=8, size=64)),
    Case("fno-l", f"{_HERE}:fno_case", dict(width=32, modes=8, n_layers=4, batch=8, size=128),
         slow=True),
    Case("cnn-s", f"{_HERE}:cnn_case", dict(width=16, image_size=64, batch=32)),
    Case("cnn-l", f"{_HERE}:cnn_case", dict(width=32, image_size=64, batch=32), slow=True),
]}
PARTITIONS = ("min_cut", "default")


@dataclass(frozen=True)
class Row:
    case: str
    partition: str
    measured_mib: float
    predicted_mib: float
    plan_predicted_mib: float
    unfused_mib: float  # the same simulation with every pointwise value materialised
    error_pct: float
    measured_step_s: float
    predicted_step_s: float


def run_case(case: Case, partition: str, with_op_times: bool = False):
    """Measure one case in a subprocess; return the measurement and the predicted timelines."""
    from benchmarks.measure import measure_in_subprocess
    from fxopt.cost_models.memory import simulate_partition, simulate_plan
    from fxopt.cost_models.partition_view import saved_names

    m = measure_in_subprocess(case.builder, case.kwargs, partitioner=partition,
                              with_op_times=with_op_times)
    v = m.views
    by_partition = simulate_partition(v["fwd"], v["bwd"])
    by_plan = simulate_plan(v["joint"], saved_names(v["bwd"]))
    return m, by_partition, by_plan


def main(names: list[str]) -> None:
    from benchmarks.measure import spearman
    from fxopt.cost_models.device import calibrate_cpu
    from fxopt.cost_models.fusion import FusionRules
    from fxopt.cost_models.memory import simulate_partition
    from fxopt.cost_models.runtime import graph_seconds, per_node_seconds

    profile = calibrate_cpu(threads=1)
    print(f"CPU profile (1 thread): {profile.peak_flops('float32') / 1e9:.1f} GFLOP/s, "
          f"{profile.mem_bandwidth / 1e9:.1f} GB/s, {profile.overhead_s * 1e6:.1f} us/op")
    rows: list[Row] = []
    predicted_ops: dict[str, float] = {}
    measured_ops: dict[str, float] = {}
    for name in names:
        case = CASES[name]
        for partition in PARTITIONS:
            t0 = time.perf_counter()
            m, tl, tp = run_case(case, partition, with_op_times=True)
            v = m.views
            step = graph_seconds(v["fwd"], profile) + graph_seconds(v["bwd"], profile)
            for side in ("fwd", "bwd"):
                pred = per_node_seconds(v[side], profile)
                for op, sec in m.extra["op_seconds"][side].items():
                    if op in pred:
                        key = f"{name}/{partition}/{side}/{op}"
                        predicted_ops[key], measured_ops[key] = pred[op], sec
            err = 100 * (tl.peak_bytes - m.peak_bytes) / m.peak_bytes
            unfused = simulate_partition(v["fwd"], v["bwd"], FusionRules(inline_pointwise=False))
            rows.append(Row(name, partition, m.peak_bytes / MiB, tl.peak_bytes / MiB,
                            tp.peak_bytes / MiB, unfused.peak_bytes / MiB, err,
                            m.step_seconds, step))
            print(f"  {name:6s} {partition:8s} measured {m.peak_bytes / MiB:8.1f} MiB  "
                  f"predicted {tl.peak_bytes / MiB:8.1f} MiB ({err:+.1f}%)  "
                  f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    print()
    print(f"{'case':7s} {'partition':9s} {'measured MiB':>12s} {'predicted MiB':>13s} "
          f"{'plan MiB':>9s} {'unfused MiB':>11s} {'error':>7s} {'step s':>7s} {'pred s':>7s}")
    for r in rows:
        print(f"{r.case:7s} {r.partition:9s} {r.measured_mib:12.1f} {r.predicted_mib:13.1f} "
              f"{r.plan_predicted_mib:9.1f} {r.unfused_mib:11.1f} {r.error_pct:+6.1f}% "
              f"{r.measured_step_s:7.3f} {r.predicted_step_s:7.3f}")
    worst = max(abs(r.error_pct) for r in rows)
    rho_ops = spearman(predicted_ops, measured_ops)
    steps_pred = {f"{r.case}/{r.partition}": r.predicted_step_s for r in rows}
    steps_meas = {f"{r.case}/{r.partition}": r.measured_step_s for r in rows}
    print(f"\nworst peak error: {worst:.1f}%")
    print(f"rank correlation, predicted vs measured op times: {rho_ops:.3f} "
          f"over {len(predicted_ops)} ops")
    if len(rows) >= 3:
        print(f"rank correlation, predicted vs measured step times: "
              f"{spearman(steps_pred, steps_meas):.3f} over {len(rows)} steps")
    if set(names) == set(CASES):
        os.makedirs("benchmarks/results", exist_ok=True)
        with open("benchmarks/results/cost_models_cpu.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "partition", "measured_mib", "predicted_mib",
                        "plan_predicted_mib", "unfused_mib", "error_pct", "measured_step_s",
                        "predicted_step_s"])
            for r in rows:
                w.writerow([r.case, r.partition, f"{r.measured_mib:.2f}",
                            f"{r.predicted_mib:.2f}", f"{r.plan_predicted_mib:.2f}",
                            f"{r.unfused_mib:.2f}", f"{r.error_pct:.2f}",
                            f"{r.measured_step_s:.4f}", f"{r.predicted_step_s:.4f}"])
            w.writerow(["rank_correlation_op_times", "", "", "", "", "", f"{rho_ops:.4f}",
                        "", ""])
        print("wrote benchmarks/results/cost_models_cpu.csv")


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main(sys.argv[1:] or list(CASES))
