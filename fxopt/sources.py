"""Where a graph node comes from in the user's code: module path and source line."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache

import torch

__all__ = ["SOURCE_LINE_CHARS", "module_path", "node_source", "source_line"]


# NOTE [Node sources]
# Dynamo records, on every node it traces, the module stack (`nn_module_stack`: key -> (path,
# class), outermost first; AOTAutograd copies it to backward nodes as `fwd_nn_module_stack`) and
# the Python traceback of the call (`stack_trace`). A node's source is its innermost module, as
# the path `model.get_submodule` takes, and the last line of the traceback outside torch itself
# (a torch.nn leaf such as Linear would otherwise show `F.linear(...)`, not the user's call).
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_FRAME = re.compile(r'\s*File "([^"]*)", line \d+, in ')
_ROOT = re.compile(r"""^(?:[LG]\[(['"]).*?\1\]|self(?=\.|$))""")  # L['self'], G['model'], self
_ITEM = re.compile(r"""(?:\.?_modules)?\[(['"]?)(.*?)\1\]""")  # [0], ['x'], ._modules['x']
SOURCE_LINE_CHARS = 80


@lru_cache(maxsize=4096)
def module_path(path: str) -> str:
    """Dynamo's module path as the attribute path of the user's model:
    `L['self']._modules['encoder'].layer[0]` -> `encoder.layer.0` (the root itself: "")."""
    path = _ITEM.sub(lambda m: "." + m.group(2), _ROOT.sub("", path.strip(), count=1))
    return ".".join(p for p in path.split(".") if p and p != "_orig_mod")


@lru_cache(maxsize=4096)
def source_line(stack_trace: str) -> str:
    """The code of the traceback's last frame outside torch (else its last frame), stripped and
    cut to SOURCE_LINE_CHARS."""
    lines = stack_trace.splitlines()
    found: list[tuple[bool, str]] = []  # (inside torch, code) per frame that shows its code
    for i, line in enumerate(lines[:-1]):
        m = _FRAME.match(line)
        code = lines[i + 1].strip()
        if m and code and not _FRAME.match(lines[i + 1]) and set(code) - set("^~ "):
            found.append((m.group(1).startswith(_TORCH_DIR), code))
    code = next((c for inside, c in reversed(found) if not inside), found[-1][1] if found else "")
    return code if len(code) <= SOURCE_LINE_CHARS else code[:SOURCE_LINE_CHARS - 3] + "..."


def node_source(meta: Mapping[str, object]) -> str:
    """`module.path: code line` from an FX node's meta (NOTE [Node sources]); "" when unknown."""
    stack = meta.get("nn_module_stack") or meta.get("fwd_nn_module_stack") or {}
    path = ""
    if isinstance(stack, Mapping) and stack:
        inner = list(stack.values())[-1]
        path = module_path(str(inner[0] if isinstance(inner, tuple) else inner))
    trace = meta.get("stack_trace")
    code = source_line(trace) if isinstance(trace, str) else ""
    return ": ".join(p for p in (path, code) if p)
