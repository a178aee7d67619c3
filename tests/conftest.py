"""Shared fixtures: CPU-only, deterministic, quiet compiles."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# Plans and the CPU calibration of this session only (subprocesses inherit it): a plan cached
# by an earlier run, or a calibration taken while the machine was busy, must not decide what
# a test sees.
_CACHE = tempfile.mkdtemp(prefix="fxopt-test-cache-")
os.environ["FXOPT_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# Without CUDA the Triton kernels run under the interpreter. Triton decides at decoration time,
# for its own standard library too, so this must precede every import of triton in the session
# (Inductor imports it while other test modules are collected). CPU Inductor does not use Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch and leaves no fxopt records behind."""
    import fxopt

    torch._dynamo.reset()
    fxopt.clear_reports()
    yield
    torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _pin_cpu_profile() -> None:
    """Every test plans with one CPU profile, whatever this machine measures, so plans do not
    depend on the machine or its load (test_runtime_model checks the calibration itself)."""
    from fxopt.cost_models import device

    for threads in {1, torch.get_num_threads()}:
        device._store_calibration(device._calibration_file(threads), {
            "flops": 1.6e11, "bandwidth": 3.0e10, "overhead_s": 2.5e-6})


_pin_cpu_profile()
