"""Every Python snippet of the README runs as written, from a directory outside the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 4


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index: int, tmp_path: Path) -> None:
    code = SNIPPETS[index]
    if "transformers" in code:
        pytest.importorskip("transformers")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FXOPT")
           or k == "FXOPT_CACHE_DIR"}
    env.pop("PYTHONPATH", None)  # fxopt as installed, not the checkout on the path
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"snippet {index}:\n{code}\n{proc.stderr[-3000:]}"
