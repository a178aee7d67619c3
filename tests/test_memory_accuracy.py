"""Predicted peak vs the measured peak of the compiled step on CPU, within 10%.

Each configuration compiles and measures the real training step in a fresh subprocess
(``benchmarks.measure.measure_in_subprocess``: RSS high-water mark with every allocation above
64 KiB mmapped), about 20 to 50 s each on 2 cores, so all are marked ``slow`` (``make
test-all`` runs them) and all are part of ``python benchmarks/bench_cost_models.py``. The
default run keeps one measured step of a real model (tests/test_memory_zoo.py, HF BERT).
"""

from __future__ import annotations

import sys

import pytest

from benchmarks.bench_cost_models import CASES, PARTITIONS, run_case

TOLERANCE = 0.10

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="RSS high-water measurement needs Linux /proc")


def _params():
    for case in CASES.values():
        for partition in PARTITIONS:
            yield pytest.param(case.name, partition, marks=[pytest.mark.slow],
                               id=f"{case.name}-{partition}")


@pytest.mark.parametrize(("case_name", "partition"), list(_params()))
def test_predicted_peak_matches_measured(case_name: str, partition: str) -> None:
    measured, by_partition, by_plan = run_case(CASES[case_name], partition)
    assert measured.peak_bytes > 16 * 2**20, "activations should dominate the measurement"
    error = (by_partition.peak_bytes - measured.peak_bytes) / measured.peak_bytes
    assert abs(error) <= TOLERANCE, (
        f"{case_name}/{partition}: predicted {by_partition.peak_bytes / 2**20:.1f} MiB at "
        f"{by_partition.peak_step}, measured {measured.peak_bytes / 2**20:.1f} MiB")
    # The plan path (joint graph + saved set) must tell the same story.
    plan_error = (by_plan.peak_bytes - measured.peak_bytes) / measured.peak_bytes
    assert abs(plan_error) <= TOLERANCE, (
        f"{case_name}/{partition}: plan-based prediction {by_plan.peak_bytes / 2**20:.1f} MiB, "
        f"measured {measured.peak_bytes / 2**20:.1f} MiB")
