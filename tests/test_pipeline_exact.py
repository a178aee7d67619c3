"""The rewritten graphs hold what the plan's Problem says they hold.

Which of several equally cheap plans the solver returns depends on the op runtimes, hence on
the device profile. Every one of them must simulate, once rewritten, to the peak the Problem
predicted: a recomputation planned before a kernel that Inductor lowers together with the one
before it (NOTE [Kernels lowered together]) used to run before both, 2 MiB above the plan.
"""

from __future__ import annotations

import pytest
import torch

import fxopt
import fxopt.pipeline
from examples.gpt import GPT, GPTConfig
from fxopt.cost_models.device import Hardware


def cpu_profile(overhead_s: float, flops: float, bandwidth: float) -> Hardware:
    return Hardware("cpu", {"float32": flops, "bfloat16": flops / 2, "float16": flops / 2},
                         bandwidth, bandwidth, overhead_s, 2**34)


@pytest.mark.parametrize("profile", [
    cpu_profile(2.5e-6, 2.5e11, 3e10),  # restores the attention inputs inside a lowered pair
    cpu_profile(1e-6, 1.6e11, 3e10),
    cpu_profile(2.5e-6, 1.6e11, 3e10),
], ids=["fast-matmul", "low-overhead", "calibrated"])
def test_rewritten_peak_is_the_planned_peak(profile: Hardware,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fxopt.pipeline, "get_profile", lambda name: profile)
    cfg = GPTConfig(n_layer=2, n_embd=128, n_head=4, block_size=256, vocab_size=512)
    with torch.device("meta"):
        model = GPT(cfg)
    idx = torch.empty(4, cfg.block_size, dtype=torch.long, device="meta")
    report = fxopt.explain(model, idx, idx, budget=0.5, time_limit_s=10)[0]
    assert report.plan.warnings == ()
    assert report.peak_bytes == report.plan.peak_bytes <= report.budget_bytes
