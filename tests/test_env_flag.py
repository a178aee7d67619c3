"""FXOPT=1 turns fxopt on for an unchanged script that never imports fxopt (subprocess tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fxopt
from fxopt import _autoload
from fxopt.hook import FxoptPartitioner

# A user script: plain torch.compile, no fxopt import. It reports what happened as JSON.
SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.GELU(),
                                torch.nn.Linear(512, 512),
                                torch.nn.GELU(), torch.nn.Linear(512, 1))
    compiled = torch.compile(model)
    compiled(torch.randn(256, 64)).sum().backward()
    from torch._dynamo.utils import counters
    import torch._inductor.config as config
    records = sys.modules.get("fxopt.report.records")
    print(json.dumps({
        "partitioner": type(config.custom_partitioner_fn).__name__,
        "records": None if records is None else len(records.reports()),
        "budget": None if records is None or not records.reports()
                  else str(records.reports()[0].options.budget),
        "aot_cache_hits": counters["aot_autograd"]["autograd_cache_hit"],
        "kernel_cache_hits": counters["inductor"]["fxgraph_cache_hit"],
    }))
""")


def run_script(tmp_path: Path, env: dict[str, str], cache_dir: Path | None = None
               ) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FXOPT")}
    full_env.update(env)
    full_env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir or tmp_path / "inductor_cache")
    full_env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    return subprocess.run([sys.executable, str(script)], env=full_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def result(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_flag_routes_plain_torch_compile_through_fxopt(tmp_path):
    out = result(run_script(tmp_path, {"FXOPT": "1", "FXOPT_BUDGET": "0.9", "FXOPT_DEBUG": "1"}))
    assert out["partitioner"] == "FxoptPartitioner"
    assert out["records"] == 1 and out["budget"] == "0.9 of keep-everything peak"


def test_without_flag_fxopt_stays_out(tmp_path):
    out = result(run_script(tmp_path, {}))
    assert out["partitioner"] == "NoneType" and out["records"] is None


# NOTE: one cache folder for the four runs, in this order, is the point of the test.
def test_compile_cache_never_skips_fxopt(tmp_path):
    cache = tmp_path / "shared_cache"
    plain = result(run_script(tmp_path, {}, cache))
    assert plain["records"] is None
    # Plain torch.compile filled the cache; fxopt must not be served that entry.
    first = result(run_script(tmp_path, {"FXOPT": "1"}, cache))
    assert first["records"] == 1 and first["aot_cache_hits"] == 0
    # Another option is another key: fxopt runs again.
    other = result(run_script(tmp_path, {"FXOPT": "1", "FXOPT_BUDGET": "0.95"}, cache))
    assert other["records"] == 1 and other["aot_cache_hits"] == 0
    # Same options again: fxopt plans the graph again (its report exists; the plan itself comes
    # from the solver's disk cache) and Inductor's code cache serves the compiled kernels.
    again = result(run_script(tmp_path, {"FXOPT": "1", "FXOPT_BUDGET": "0.95"}, cache))
    assert again["records"] == 1 and again["aot_cache_hits"] == 0
    assert again["kernel_cache_hits"] >= 1


def test_cache_key_folds_in_source_and_options(monkeypatch):
    from fxopt import hook

    key = FxoptPartitioner(fxopt.Options()).uuid()
    assert key == FxoptPartitioner(fxopt.Options()).uuid()
    assert key != FxoptPartitioner(fxopt.Options(budget=0.5)).uuid()
    assert key != FxoptPartitioner(fxopt.Options(lowbit="fp8")).uuid()
    monkeypatch.setattr(hook, "source_fingerprint", lambda: "edited-source")
    assert key != FxoptPartitioner(fxopt.Options()).uuid()


@pytest.mark.parametrize("env, variable", [
    ({"FXOPT": "1", "FXOPT_BUDGET": "abc"}, "FXOPT_BUDGET"),
    ({"FXOPT": "please"}, "FXOPT"),
])
def test_bad_values_fail_the_compile_not_import_torch(tmp_path, env, variable):
    proc = run_script(tmp_path, env)
    assert proc.returncode != 0
    assert f"environment variable {variable}=" in proc.stderr
    assert "use" in proc.stderr.split(f"{variable}=")[-1]
    # import torch itself went through: the failure is the compile's.
    check = subprocess.run([sys.executable, "-c", "import torch; print(torch.ones(1).item())"],
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and check.stdout.strip() == "1.0"


def test_autoload_hook_never_raises(monkeypatch):
    monkeypatch.setenv("FXOPT", "1")

    def broken() -> None:
        raise ImportError("simulated broken install")

    monkeypatch.setattr(_autoload, "_install", broken)
    with pytest.warns(RuntimeWarning, match="simulated broken install"):
        _autoload.activate()
