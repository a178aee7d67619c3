"""Shared fixtures: CPU-only, deterministic, quiet compiles."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
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
