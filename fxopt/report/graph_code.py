"""An FX graph as readable code: one line per node, its shape and dtype as a comment, and the
nodes fxopt inserted marked with the pass and planned tensor that made them."""

from __future__ import annotations

import operator
import textwrap
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from fxopt.compat import OpOverload, OpOverloadPacket
from fxopt.plan import Inserted, inserted_by

# Short dtype names, as in PyTorch's `print_readable` (f32[8, 64]).
_DTYPE_ABBR = {
    torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
    torch.float8_e4m3fn: "f8e4m3fn", torch.float8_e5m2: "f8e5m2", torch.int64: "i64",
    torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
    torch.bool: "b8", torch.complex64: "c64", torch.complex128: "c128",
}
_MAX_ARG_CHARS = 160  # longer argument lists are shortened (the dump keeps them whole)


@dataclass(frozen=True)
class CodeLine:
    """One line of a graph's code.

    code: the statement (indented); comment: shape and dtype of the value it makes ("" when it
    makes no tensor); inserted: which fxopt pass put the node there, None for original nodes.
    """

    code: str
    comment: str = ""
    inserted: Inserted | None = None

    @property
    def marker(self) -> str:
        """'fxopt: recompute of add_3' for an inserted node, else ''."""
        return "" if self.inserted is None else marker_text(self.inserted)

    def text(self) -> str:
        notes = [n for n in (self.comment, self.marker) if n]
        return f"{self.code}  # {'  # '.join(notes)}" if notes else self.code


def marker_text(info: Inserted) -> str:
    detail = "" if info.decision == info.pass_name else f" ({info.decision})"
    return f"fxopt: {info.pass_name} of {info.tensor}{detail}"


def describe_value(val: Any) -> str:
    """'f32[8, 64, 64]' for a (fake) tensor, a tuple of those for multiple outputs, 'sym s0'
    for a symbolic integer, '' for anything else."""
    if isinstance(val, torch.Tensor):
        dims = ", ".join(str(d) for d in val.shape)
        return f"{_DTYPE_ABBR.get(val.dtype, str(val.dtype).removeprefix('torch.'))}[{dims}]"
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return f"sym {val}"
    if isinstance(val, (tuple, list)) and val:
        parts = [describe_value(v) or "-" for v in val]
        return f"({', '.join(parts)})"
    return ""


def _format_arg(arg: Any, full: bool) -> str:
    if isinstance(arg, fx.Node):
        return arg.name
    if isinstance(arg, (tuple, list)):
        inner = ", ".join(_format_arg(a, full) for a in arg)
        return f"({inner},)" if isinstance(arg, tuple) and len(arg) == 1 else (
            f"({inner})" if isinstance(arg, tuple) else f"[{inner}]")
    if isinstance(arg, dict):
        return "{" + ", ".join(f"{k!r}: {_format_arg(v, full)}" for k, v in arg.items()) + "}"
    if isinstance(arg, torch.dtype):
        return str(arg)
    if isinstance(arg, torch.device):
        return repr(str(arg))
    if isinstance(arg, float):
        return repr(arg) if full else f"{arg:.6g}"
    return repr(arg)


def _target_name(target: Any) -> str:
    if isinstance(target, OpOverload):
        return str(target)  # e.g. "aten.mm.default"
    if isinstance(target, OpOverloadPacket):
        return str(target)
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", repr(target))
    return name if module in ("", "builtins", "_operator", "operator") else f"{module}.{name}"


def _shorten(text: str, full: bool) -> str:
    return text if full or len(text) <= _MAX_ARG_CHARS else text[:_MAX_ARG_CHARS] + " ..."


def _statement(node: fx.Node, full: bool) -> str:
    if node.op == "get_attr":
        return f"{node.name} = self.{node.target}"
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2:
        base, index = node.args
        return f"{node.name} = {_format_arg(base, full)}[{_format_arg(index, full)}]"
    args = [_format_arg(a, full) for a in node.args]
    if node.op == "call_method":
        callee, args = f"{args[0]}.{node.target}", args[1:]
    elif node.op == "call_module":
        callee = f"self.{node.target}"
    else:
        callee = _target_name(node.target)
    args += [f"{k}={_format_arg(v, full)}" for k, v in node.kwargs.items()]
    return f"{node.name} = {callee}({_shorten(', '.join(args), full)})"


def graph_lines(gm: fx.GraphModule | fx.Graph, name: str = "forward", *,
                full: bool = False) -> tuple[CodeLine, ...]:
    """The graph as code lines: `def name(inputs):`, one comment line per input with its shape,
    one statement per node, and the return. `full=True` keeps every argument unshortened."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    signature = textwrap.wrap(f"def {name}({', '.join(n.name for n in inputs)}):", width=100,
                              subsequent_indent=" " * (len(name) + 5), break_long_words=False,
                              break_on_hyphens=False)
    lines = [CodeLine(text) for text in signature]
    for node in inputs:
        shape = describe_value(node.meta.get("val")) or "input"
        lines.append(CodeLine(f"    # {node.name}: {shape}", "", inserted_by(node)))
    for node in nodes:
        if node.op in ("placeholder", "output"):
            continue
        lines.append(CodeLine(f"    {_statement(node, full)}",
                              describe_value(node.meta.get("val")), inserted_by(node)))
    for node in nodes:
        if node.op == "output":
            lines.append(CodeLine(f"    return {_format_arg(node.args[0], full)}"))
    return tuple(lines)


def graph_code(gm: fx.GraphModule | fx.Graph, name: str = "forward", *,
               full: bool = False) -> str:
    """`graph_lines` joined into one text, comments and fxopt markers included."""
    return "\n".join(line.text() for line in graph_lines(gm, name, full=full)) + "\n"

