"""Predicted peak vs the measured peak of a real zoo model compiled by fxopt (CPU, RSS).

hf_bert returns its logits besides the loss it computes from them; the step drops the logits
when the forward returns (NOTE [When the forward's outputs die] in fxopt/cost_models/memory.py).
Holding them to the end of the step predicted 12% above the measured peak; the model as it is
predicts within 1%. One fresh process compiles and measures the step (about 20 s on 2 cores).
"""

from __future__ import annotations

import sys

import pytest

from benchmarks.bench_zoo import MODULE
from benchmarks.child import run_child

TOLERANCE = 0.05

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="RSS high-water measurement needs Linux /proc")


def test_hf_bert_prediction_matches_measured_peak() -> None:
    job = dict(case="hf_bert", batch=256, device="cpu", steps=1, kind="measure", method="fxopt")
    result, _ = run_child(job, 300, MODULE)
    assert "error" not in result, result["error"]
    predicted, measured = result["predicted"]["peak"], result["peak_bytes"]
    assert measured > 8 * 2**20, "activations should dominate the measurement"
    ratio = predicted / measured
    assert abs(ratio - 1) <= TOLERANCE, (
        f"hf_bert: predicted {predicted / 2**20:.2f} MiB, measured {measured / 2**20:.2f} MiB "
        f"(x{ratio:.3f})")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["hf_llama_checkpointing", "hf_llama"])
def test_llama_at_half_budget_matches_allocated_peak(case: str) -> None:
    """NOTE [Inductor keeps fxopt's kernel order]: with Inductor free to fuse the MLP
    backward's recomputation into the SiLU backward, a matmul moved ahead of both and the
    allocator's peak was 10.49 MiB for a predicted 9.55 (the checkpointed Llama; Llama 12.45
    for 12.02). About 40 s each."""
    job = dict(case=case, batch=256, device="cpu", steps=1, kind="measure", method="fxopt_0.5")
    result, _ = run_child(job, 300, MODULE)
    assert "error" not in result, result["error"]
    predicted, allocated = result["predicted"]["peak"], result["alloc_bytes"]
    ratio = predicted / allocated
    assert abs(ratio - 1) <= TOLERANCE, (
        f"{case}: predicted {predicted / 2**20:.2f} MiB, allocated {allocated / 2**20:.2f} MiB "
        f"(x{ratio:.3f})")
