"""Every row of the report's tensor table says where the tensor comes from in the user's code:
the module path (as `model.get_submodule` takes it) and the source line."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

import fxopt
from fxopt.config import Options
from fxopt.report.html import render_html
from fxopt.report.model import Report, TensorRow
from fxopt.report.text import SOURCE_CELL_CHARS, render_text
from fxopt.sources import SOURCE_LINE_CHARS, module_path, node_source, source_line

_TORCH_FILE = os.path.join(os.path.dirname(torch.__file__), "nn", "modules", "linear.py")
_TRACE = f"""\
  File "/home/me/train.py", line 40, in <module>
    loss = model(x).sum()
  File "/home/me/model.py", line 12, in forward
    q = self.q_proj(x)
        ^^^^^^^^^^^^^^
  File "{_TORCH_FILE}", line 125, in forward
    return F.linear(input, self.weight, self.bias)
           ~~~~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
Gradient addition node due to multiple use of tensor around:
"""


def test_module_path_is_the_users_attribute_path() -> None:
    assert module_path("L['self'].layers[3].self_attn") == "layers.3.self_attn"
    assert module_path("L['self']._modules['encoder'].layer[0]") == "encoder.layer.0"
    assert module_path("L['self'].transformer.h.0.attn") == "transformer.h.0.attn"
    assert module_path("L['fn']._orig_mod.block") == "block"
    assert module_path("G['model'].blocks['a'].fc") == "blocks.a.fc"
    assert module_path("L['self']._modules['h']._modules['0']") == "h.0"
    assert module_path("L['self']") == ""
    assert module_path("L['self'].selfish") == "selfish"  # only the root is stripped
    assert module_path("model.layers.0") == "model.layers.0"


def test_source_line_is_the_last_frame_outside_torch() -> None:
    assert source_line(_TRACE) == "q = self.q_proj(x)"
    only_torch = f'  File "{_TORCH_FILE}", line 125, in forward\n    return F.linear(x, w)\n'
    assert source_line(only_torch) == "return F.linear(x, w)"  # nothing else to show
    long = '  File "/m.py", line 1, in f\n    y = ' + "a + " * 40 + "b\n"
    cut = source_line(long)
    assert len(cut) == SOURCE_LINE_CHARS and cut.startswith("y = a + a") and cut.endswith("...")
    assert source_line("") == "" and source_line("no frames here") == ""


def test_node_source_joins_module_and_line() -> None:
    stack = {"a": ("L['self'].layers[3]", nn.Module), "b": ("L['self'].layers[3].self_attn",
                                                            nn.Module)}
    meta = {"nn_module_stack": stack, "stack_trace": _TRACE}
    assert node_source(meta) == "layers.3.self_attn: q = self.q_proj(x)"
    # backward nodes carry the forward's stack under another key
    assert node_source({"fwd_nn_module_stack": stack}) == "layers.3.self_attn"
    assert node_source({"stack_trace": _TRACE}) == "q = self.q_proj(x)"
    assert node_source({}) == ""


def _report(tensors: tuple[TensorRow, ...]) -> Report:
    return Report(options=Options(), strategy="fxopt", fallback_reason=None, plan=None,
                  peak_bytes=None, solve_seconds=0.0, joint_ops=1, forward_ops=1,
                  backward_ops=1, saved=(), seconds=0.0, stages=(), forward_graph=None,
                  backward_graph=None, tensors=tensors)


def test_text_cuts_the_source_and_html_shows_it_whole_and_escaped() -> None:
    long = "encoder.layer.0.attention: scores = q @ k.transpose(-1, -2) / math.sqrt(d) < mask"
    report = _report((TensorRow("mm", ("8", "4"), "float32", 128, "keep", 0, "why", long),
                      TensorRow("relu", ("8",), "float32", 32, "keep", 0, "why")))
    text = render_text(report, graphs=False)
    assert long[:SOURCE_CELL_CHARS - 3] + "..." in text and long not in text
    assert any(line.startswith("relu ") and " - " in line for line in text.splitlines())
    html = render_html(report)
    escaped = long.replace("<", "&lt;")
    assert f'title="{escaped}"' in html and f">{escaped}</td>" in html
    assert "<th>source</th>" in html and "< mask" not in html


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.fc1(x))
        return self.fc2(hidden) * 2


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x).sum()


def test_explained_report_names_module_and_line() -> None:
    model = _Model()
    report = fxopt.explain(model, torch.randn(8, 16), budget=0.9)[0]
    sources = [t.source for t in report.tensors]
    assert sources and all(isinstance(s, str) for s in sources)
    fragments = ("hidden = torch.tanh(self.fc1(x))", "return self.fc2(hidden) * 2")
    ours = [s for s in sources if s.startswith("block") and any(f in s for f in fragments)]
    assert ours, sources
    for s in ours:  # the path is one the user can look up
        model.get_submodule(s.split(":", 1)[0])
    shown = min(ours, key=len)
    assert len(shown) <= SOURCE_CELL_CHARS  # so the text table shows it uncut
    assert shown in str(report)
    assert shown in report._repr_html_()
