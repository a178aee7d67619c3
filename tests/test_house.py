"""The house rules that no linter checks: private torch APIs only in fxopt/compat.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from fxopt import compat

PACKAGE = Path(__file__).resolve().parents[1] / "fxopt"


def private_torch_uses(tree: ast.AST) -> list[str]:
    """`torch._x`, `torch.utils._x` and `from torch._x import ...` in a module (dunders such as
    `torch.__version__` are public)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names]
            found += [n for n in names if n.startswith("torch") and _private(n)]
        elif isinstance(node, ast.Attribute) and not node.attr.startswith("__"):
            chain = _dotted(node)
            if chain and chain.startswith("torch.") and _private(chain):
                found.append(chain)
    return found


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def test_private_torch_apis_only_in_compat():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "compat.py":
            continue
        uses = private_torch_uses(ast.parse(path.read_text()))
        if uses:
            offenders[str(path.relative_to(PACKAGE))] = sorted(set(uses))
    assert not offenders, f"private torch APIs outside fxopt/compat.py: {offenders}"


def test_the_scan_sees_private_uses():
    code = "import torch._dynamo\nfrom torch._ops import OpOverload\nx = torch.utils._pytree\n"
    assert private_torch_uses(ast.parse(code)) == ["torch._dynamo", "torch._ops",
                                                   "torch.utils._pytree"]
    assert private_torch_uses(ast.parse("v = torch.__version__\ny = torch.fx.Graph")) == []


def test_old_torch_is_refused_and_new_torch_warned(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.8.0")
    with pytest.raises(ImportError, match="needs torch >= 2.9"):
        compat.check_torch_version()
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    with pytest.warns(RuntimeWarning, match="fxopt/compat.py"):
        compat.check_torch_version()
