"""fxopt.explain captures a training step through Dynamo on fake tensors and plans every graph:
no kernel of the model runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxopt
import fxopt.solver
from examples.gpt import GPT, GPTConfig


def test_explain_meta_gpt():
    cfg = GPTConfig(n_layer=2, n_embd=128, n_head=4, block_size=256, vocab_size=512)
    with torch.device("meta"):
        model = GPT(cfg)
    idx = torch.empty(4, cfg.block_size, dtype=torch.long, device="meta")
    step = fxopt.explain(model, idx, idx, budget=0.5)
    assert len(step) == 1 and step.graph_count == 1 and not step.fallbacks
    report = step[0]
    assert isinstance(report, fxopt.Report) and report.source == "explain"
    assert report.forward_ops > 0 and report.backward_ops > 0
    assert report.saved and report.saved_bytes > 0
    assert report.options.budget == fxopt.Budget(fraction=0.5)
    assert fxopt.reports() == (), "explain must not add to the backend's reports"


def test_explain_sums_non_scalar_output_and_checks_loss():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    report = fxopt.explain(model, torch.randn(5, 4))[0]
    assert report.backward_ops > 0
    with pytest.raises(TypeError, match="scalar"):
        fxopt.explain(model, torch.randn(5, 4), loss_fn=lambda out: out)


def test_explain_needs_trainable_parameters():
    model = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        fxopt.explain(model, torch.randn(2, 3))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                         nn.Linear(512, 1))


def test_plan_meets_budget_and_reports_everything():
    report = fxopt.explain(mlp(), torch.randn(256, 64), budget=0.9)[0]
    assert report.strategy == "fxopt plan" and report.plan is not None
    assert report.peak_bytes <= report.budget_bytes < report.baseline_peak_bytes
    assert report.default_peak_bytes is not None
    assert {t.label for t in report.timelines} == {"keep everything", "PyTorch default",
                                                   "fxopt plan"}
    assert len(report.tensors) == len(report.plan.decisions)
    assert any(t.choice == "recompute" for t in report.tensors)


def test_unreachable_budget_names_the_minimum():
    """An absolute size is a promise: below the reachable minimum it is an error that names
    the minimum, and asking for that minimum gives a plan."""
    keep = fxopt.explain(mlp(), torch.randn(256, 64))[0].baseline_peak_bytes
    with pytest.raises(fxopt.solver.InfeasibleBudgetError) as info:
        fxopt.explain(mlp(), torch.randn(256, 64), budget=int(keep * 0.3))
    message = str(info.value)
    assert "smallest reachable peak" in message and "Raise the budget to at least" in message
    assert info.value.min_peak_bytes > info.value.budget_bytes  # carried for programs too
    report = fxopt.explain(mlp(), torch.randn(256, 64), budget=info.value.min_peak_bytes)[0]
    assert report.strategy == "fxopt plan"
    assert report.plan.peak_bytes <= info.value.min_peak_bytes


def test_a_search_out_of_work_is_never_a_silent_fallback():
    """Under a size and almost no search work, fxopt plans (the lowest peak it found, where
    that fits) or refuses the size naming a peak it reaches (and, where the work ran out, the
    option that gives more); asking for that peak gets a plan. It never falls back."""
    x = torch.randn(256, 64)
    keep = fxopt.explain(mlp(), x)[0].baseline_peak_bytes
    for fraction in (0.9, 0.7, 0.5):
        try:
            report = fxopt.explain(mlp(), x, budget=int(keep * fraction), work_limit=1e-3)[0]
        except fxopt.solver.InfeasibleBudgetError as err:
            assert err.limit is None or "FXOPT_WORK_LIMIT" in str(err), str(err)
            report = fxopt.explain(mlp(), x, budget=err.min_peak_bytes, work_limit=1e-3)[0]
            assert report.peak_bytes <= err.min_peak_bytes
        assert report.strategy == "fxopt plan" and report.fallback_reason is None


def test_a_search_stopped_by_the_clock_is_an_error():
    """The wall clock is only a safety net: a search it stops would give a plan that depends
    on the machine, so the compile fails loudly, naming both limits."""
    with pytest.raises(fxopt.solver.SearchTimeoutError, match="time_limit_s.*work_limit") as info:
        fxopt.explain(mlp(), torch.randn(256, 64), budget=0.5, work_limit=100.0,
                      time_limit_s=1e-3)
    assert info.value.report.error.startswith("SearchTimeoutError")


def test_unreachable_fraction_plans_the_smallest_peak_with_a_warning(caplog):
    """A fraction is best effort: never an error, the smallest reachable plan and a warning."""
    with caplog.at_level("WARNING", logger="fxopt"):
        report = fxopt.explain(mlp(), torch.randn(256, 64), budget=0.3)[0]
    assert report.strategy == "fxopt plan" and report.fallback_reason is None
    assert report.peak_bytes < report.baseline_peak_bytes
    assert any("smallest peak" in w for w in report.plan.warnings)
    assert any("smallest peak" in r.getMessage() for r in caplog.records)


def test_plan_that_cannot_be_applied_falls_back_with_warning(monkeypatch, caplog):
    from fxopt import pipeline
    from fxopt.passes import PlanApplyError

    def refuse(*args, **kwargs):
        raise PlanApplyError("simulated unsafe rewrite")

    monkeypatch.setattr(pipeline, "apply_plan", refuse)
    with caplog.at_level("WARNING", logger="fxopt"):
        report = fxopt.explain(mlp(), torch.randn(256, 64), budget=0.9)[0]
    assert report.strategy == "PyTorch default"
    assert "simulated unsafe rewrite" in report.fallback_reason
    assert any("simulated unsafe rewrite" in r.getMessage() for r in caplog.records)


def test_dump_dir_gets_every_stage(tmp_path):
    from fxopt.solver import Plan

    report = fxopt.explain(mlp(), torch.randn(256, 64), budget=0.9, dump_dir=str(tmp_path))[0]
    names = sorted(p.name for p in tmp_path.iterdir())
    for stage in ("joint.py", "problem.json", "plan.json", "forward.py", "backward.py",
                  "report.txt", "report.html"):
        assert any(n.endswith(stage) for n in names), (stage, names)
    plan_file = next(p for p in tmp_path.iterdir() if p.name.endswith("plan.json"))
    assert Plan.from_json(plan_file.read_text()) == report.plan


def test_explain_cnn_with_targets_and_batch_norm():
    from examples import cnn

    cfg = cnn.CNNConfig(width=4, image_size=16)
    x, y = cnn.synthetic_batch(cfg, 4, torch.Generator().manual_seed(0))
    report = fxopt.explain(cnn.SmallCNN(cfg), x, loss_fn=torch.nn.functional.cross_entropy,
                           targets=(y,), budget=0.9)[0]
    assert report.strategy == "fxopt plan"
    assert report.peak_bytes <= report.budget_bytes


def test_explain_through_dynamo_sees_graph_breaks():
    """Each graph Dynamo builds is planned; eager code between them runs on fake tensors."""

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(16, 64), nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.a(x))
            torch._dynamo.graph_break()
            return self.b(h * 2)

    model = Broken()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = fxopt.explain(model, torch.randn(8, 16), loss_fn=nn.functional.mse_loss,
                         targets=(torch.randn(8, 1),), budget=0.8)
    assert step.graph_count == 2 and len(step) == 2 and not step.fallbacks
    assert [r.index for r in step] == [0, 1]
    assert step.peak_bytes is not None and step.peak_bytes >= max(r.peak_bytes for r in step)
    assert "2 training graph(s)" in step.summary()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()), "explain must not train the model"


def test_explain_leaves_tensors_a_model_caches_untouched():
    """A model that caches a tensor on its first call keeps its own value, not a fake one."""

    class Cached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.grid = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.grid is None or self.grid.shape != x.shape:
                self.grid = torch.ones_like(x)
            return self.lin(x + self.grid)

    model = Cached()
    fxopt.explain(model, torch.randn(4, 8), budget=0.9)
    assert model.grid is None
    model(torch.randn(4, 8))
    grid = model.grid
    fxopt.explain(model, torch.randn(4, 8), budget=0.9)
    assert model.grid is grid


def test_explain_hugging_face_output_with_loss():
    """A Hugging Face model given labels returns an output with `.loss`: that is the loss."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32,
                                  vocab_size=64, bos_token_id=0, eos_token_id=0)
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(cfg)
    idx = torch.zeros(2, 16, dtype=torch.long, device="meta")
    step = fxopt.explain(model, kwargs={"input_ids": idx, "labels": idx}, budget=0.5)
    assert len(step) >= 1 and not step.fallbacks
    # fxopt's plan, or PyTorch's partition where that peaks lower beside the other graphs
    assert all(r.strategy == "fxopt plan" or r.status == "DEFAULT_LOWER" for r in step)
    assert step[0].strategy == "fxopt plan"


def test_backward_reads_sizes_not_tensors_kept_for_them():
    """With symbolic sizes, a size the forward computes crosses as a SymInt: recomputing
    `sym_size(t, d)` in backward would keep all of t alive (the FNO's spectral buffers)."""
    from examples import fno

    model = fno.FNO2d(fno.FNOConfig(width=16, modes1=4, modes2=4, n_layers=4, proj_width=16))
    x, y = fno.synthetic_batch(4, 32, torch.Generator().manual_seed(0))
    report = fxopt.explain(model, x, loss_fn=nn.functional.mse_loss, targets=(y,), budget=0.8)[0]
    assert report.plan.counts()["recompute"] > 0
    graph = report.backward_graph.graph
    sizes_only = [n.name for n in graph.find_nodes(op="placeholder")
                  if isinstance(n.meta.get("val"), torch.Tensor) and n.users
                  and all(u.target is torch.ops.aten.sym_size.int for u in n.users)]
    assert not sizes_only, f"saved only for their sizes: {sizes_only}"
    assert report.peak_bytes <= report.budget_bytes


def test_explain_keeps_the_users_dynamic_dimensions():
    """`torch._dynamo.mark_dynamic` on an input carries into the explained step."""
    import sympy

    x = torch.randn(64, 16)
    torch._dynamo.mark_dynamic(x, 0)
    (report,) = fxopt.explain(nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1)),
                              x, budget=0.9).graphs
    placeholders = [n for n in report.joint_graph.graph.find_nodes(op="placeholder")
                    if isinstance(n.meta.get("val"), torch.Tensor)]
    dims = [d for n in placeholders for d in n.meta["val"].shape]
    assert any(isinstance(d, torch.SymInt) and not isinstance(d.node.expr, sympy.Integer)
               for d in dims)


def test_report_repr_is_short_and_every_pass_program_is_kept():
    report = fxopt.explain(mlp(), torch.randn(256, 64), budget=0.9)[0]
    assert len(repr(report)) < 600 and repr(report).startswith("<Report fxopt.explain graph 0")
    assert "compiled in" in report.summary()
    recompute = report.program("recompute")
    assert "# forward after recompute" in recompute and "def forward" in recompute
    assert "def forward" in report.program("split") and "def forward" in report.program("schedule")
    with pytest.raises(KeyError, match="kept"):
        report.program("no such pass")


def test_explain_on_a_torch_without_partitioner_override(monkeypatch):
    """torch 2.11's Inductor partition function has no `partitioner_fn_override`: it calls
    `config.custom_partitioner_fn`. explain plans through that path too (it failed on 2.11)."""
    import fxopt.compat as compat

    new = compat.inductor_partition_fn()
    calls = []

    def partition_fn_2_11(gm, joint_inputs, **kwargs):
        from torch._inductor import config

        calls.append(type(config.custom_partitioner_fn).__name__)
        return new(gm, joint_inputs, **kwargs)  # reaches config.custom_partitioner_fn

    monkeypatch.setattr(compat, "inductor_partition_fn", lambda: partition_fn_2_11)
    report = fxopt.explain(mlp(), torch.randn(256, 64), budget=0.9)[0]
    assert calls == ["_OneShotPartitioner"]
    assert report.strategy == "fxopt plan" and report.peak_bytes <= report.budget_bytes
    from torch._inductor import config

    assert config.custom_partitioner_fn is None, "the partitioner is set for the call only"
