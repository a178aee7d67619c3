"""End to end on CPU: torch.compile with fxopt trains exactly like eager.

Each test pays for real Inductor compiles, so each covers several properties at once.
"""

from __future__ import annotations

import pytest
import torch
import torch._inductor.config as inductor_config
import torch.nn as nn
import torch.nn.functional as F

import fxopt
from examples import cnn, fno, gpt
from tests.training import assert_step_matches, twin


@pytest.fixture
def eager_rng():
    """Inductor draws its own random numbers by default; this makes dropout replay eager's."""
    with inductor_config.patch(fallback_random=True):
        yield


def gpt_loss(model, batch):
    idx, targets = batch
    return model(idx, targets)


def test_gpt_with_dropout_matches_eager(eager_rng):
    cfg = gpt.GPTConfig(dropout=0.2, n_layer=1)  # one block: the masks are the same story
    torch.manual_seed(0)
    model = gpt.GPT(cfg)
    batch = gpt.synthetic_batch(cfg, 4, torch.Generator().manual_seed(1))
    compiled = torch.compile(twin(model), backend="fxopt")  # by entry-point name
    for seed in (0, 1):  # a second step reuses the compiled graph with fresh dropout masks
        assert_step_matches(model, compiled, gpt_loss, batch, seed=seed)
    records = fxopt.reports()
    assert len(records) == 1
    assert records[0].saved and records[0].forward_ops > 0 and records[0].backward_ops > 0


def test_dropout_rng_same_as_default_torch_compile():
    """Without fallback_random, fxopt draws exactly the numbers plain torch.compile draws."""
    cfg = gpt.GPTConfig(dropout=0.3, n_layer=1)
    torch.manual_seed(0)
    model = gpt.GPT(cfg)
    batch = gpt.synthetic_batch(cfg, 2, torch.Generator().manual_seed(2))
    reference = torch.compile(twin(model))
    ours = torch.compile(twin(model), backend=fxopt.backend())
    assert_step_matches(reference, ours, gpt_loss, batch, seed=5, rtol=1e-5, atol=1e-6)


def test_fno_matches_eager():
    cfg = fno.FNOConfig(width=16, modes1=6, modes2=6, n_layers=2)
    torch.manual_seed(0)
    model = fno.FNO2d(cfg)
    x, y = fno.synthetic_batch(2, 24, torch.Generator().manual_seed(3))
    compiled = torch.compile(twin(model), backend=fxopt.backend(budget=0.95))
    assert_step_matches(model, compiled, lambda m, b: F.mse_loss(m(b[0]), b[1]), (x, y))
    report = fxopt.last_report()
    assert report.strategy == "fxopt plan" and report.options.budget == fxopt.Budget(fraction=0.95)
    assert report.peak_bytes <= report.budget_bytes * 1.05


def test_cnn_with_batchnorm_and_dynamic_batch_matches_eager():
    cfg = cnn.CNNConfig(width=8, image_size=16)
    torch.manual_seed(0)
    model = cnn.SmallCNN(cfg)
    compiled_model = twin(model)
    compiled = torch.compile(compiled_model, backend="fxopt")
    loss = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    for batch_size in (4, 6, 5):
        x, y = cnn.synthetic_batch(cfg, batch_size, torch.Generator().manual_seed(batch_size))
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(y, 0)
        assert_step_matches(model, compiled, loss, (x, y))
    # Batch-norm running statistics were updated the same way.
    for (name, b_e), b_c in zip(model.named_buffers(), compiled_model.buffers()):
        torch.testing.assert_close(b_c, b_e, rtol=1e-4, atol=1e-5, msg=name)
    records = fxopt.reports()
    assert len(records) == 1, "a dynamic batch dimension must not recompile"
    assert any(not dim.isdigit() for s in records[0].saved for dim in s.shape), \
        "saved tensors should carry the symbolic batch dimension"


class TwoHalves(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32))
        self.b = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        torch._dynamo.graph_break()
        return self.b(h)


def test_graph_break_gives_two_planned_graphs():
    torch.manual_seed(0)
    model = TwoHalves()
    compiled = torch.compile(twin(model), backend=fxopt.backend(budget="1MiB", debug=True))
    x = torch.randn(8, 16)
    assert_step_matches(model, compiled, lambda m, b: m(b[0]).square().mean(), (x,))
    assert len(fxopt.reports()) == 2


def test_options_through_torch_compile_options():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    compiled = torch.compile(twin(model), backend="fxopt",
                             options={"budget": 1.0, "time_limit_s": 5})
    assert_step_matches(model, compiled, lambda m, b: m(b[0]).sum(), (torch.randn(3, 4),))
    assert fxopt.last_report().options == fxopt.Options(budget=1.0, time_limit_s=5)


def test_bad_option_fails_before_compiling():
    with pytest.raises(fxopt.OptionsError, match="budget"):
        fxopt.backend(budget="lots")


def test_buffers_are_freed_at_their_last_use(monkeypatch):
    """NOTE [Each buffer is freed at its last use]: fxopt's generated code never hands a dead
    buffer to a later allocation, which plain torch.compile does for the same model. (In-place
    kernels still write into an input they last read; the memory model counts those.)
    Its scheduler asks fxopt's fusion rule too (NOTE [Inductor keeps fxopt's kernel order])."""
    from torch._inductor.codegen import wrapper

    from fxopt.kernel_order import KernelOrderChoices

    handed_over = []
    plan = wrapper.AllocateLine.plan

    def counting_plan(self, state):
        line = plan(self, state)
        handed_over.append(isinstance(line, wrapper.ReuseLine))
        return line

    asked = []
    can_fuse = KernelOrderChoices.can_fuse

    def counting_can_fuse(self, *args):
        asked.append(1)
        return can_fuse(self, *args)

    monkeypatch.setattr(wrapper.AllocateLine, "plan", counting_plan)
    monkeypatch.setattr(KernelOrderChoices, "can_fuse", counting_can_fuse)
    torch.manual_seed(0)
    model = nn.Sequential(*(m for _ in range(4) for m in (nn.Linear(64, 64), nn.Tanh())))
    x = torch.randn(32, 64)

    def reused(backend: object) -> int:
        torch._dynamo.reset()
        handed_over.clear()
        with inductor_config.patch(fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False):  # generate the code
            torch.compile(model, backend=backend)(x).sum().backward()
        assert handed_over, "no allocation planned: the check saw nothing"
        return sum(handed_over)

    assert reused("inductor") > 0 and not asked
    assert reused(fxopt.backend()) == 0 and asked
