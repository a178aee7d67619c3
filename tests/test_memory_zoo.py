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
