"""examples/hf_trainer.py: transformers.Trainer with torch_compile=True, with and without FXOPT,
trains a tiny Llama to the same losses, and fxopt plans every graph (subprocess tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
STEPS = 4


def start_example(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
    # FXOPT* from the caller's shell must not leak in; FXOPT_CACHE_DIR is conftest's private
    # cache holding the pinned CPU profile, so the subprocess plans with the same numbers.
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("FXOPT") or k == "FXOPT_CACHE_DIR"}
    full_env.update(env)
    full_env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor_cache")
    full_env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    full_env["OMP_NUM_THREADS"] = "1"  # two runs at once, one core each
    return subprocess.Popen([sys.executable, "-m", "examples.hf_trainer", "--steps", str(STEPS)],
                            env=full_env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, (stdout[-3000:], stderr[-3000:])
    return stdout


def losses(stdout: str) -> list[float]:
    lines = [line for line in stdout.splitlines() if line.startswith("losses:")]
    assert len(lines) == 1, stdout[-3000:]
    return [float(x) for x in lines[0].split()[1:]]


def test_hf_trainer_same_losses_with_fxopt(tmp_path):
    runs = [start_example(tmp_path / "plain", {}),
            start_example(tmp_path / "fxopt", {"FXOPT": "1", "FXOPT_BUDGET": "0.5"})]
    plain, planned = (finish(p) for p in runs)

    assert not any(line.startswith("fxopt") for line in plain.splitlines()), plain[-3000:]
    base, ours = losses(plain), losses(planned)
    assert len(base) == len(ours) == STEPS
    assert ours == pytest.approx(base, rel=1e-3)

    count = re.search(r"^fxopt: (\d+) graphs, (\d+) planned, (\d+) fell back$", planned, re.M)
    assert count, planned[-3000:]
    graphs, planned_graphs, fell_back = map(int, count.groups())
    assert fell_back == 0, planned[-3000:]
    assert planned_graphs >= 1 and planned_graphs == graphs
    summaries = [line for line in planned.splitlines() if line.startswith("fxopt graph ")]
    assert len(summaries) == graphs and all(": fxopt plan;" in s for s in summaries)
