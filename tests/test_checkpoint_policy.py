"""The model's own checkpoint policy: MUST_RECOMPUTE and MUST_SAVE are hard constraints, and
fxopt never plans to hold more than PyTorch's default partition, which honours the rest."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

import fxopt
from fxopt.plan import Kind

aten = torch.ops.aten


def policy(ctx, op, *args, **kwargs):
    if op in (aten.mm.default, aten.addmm.default):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.MUST_RECOMPUTE


class Selective(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 256), nn.GELU(),
                                                  nn.Linear(256, 64), nn.Tanh())
                                    for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = functools.partial(create_selective_checkpoint_contexts, policy)
        for block in self.blocks:
            x = x + checkpoint(block, x, use_reentrant=False, context_fn=context)
        return x.square().mean()


def test_selective_policy_is_a_hard_constraint():
    step = fxopt.explain(Selective(), torch.randn(512, 64), budget=1.0)
    (report,) = step.graphs
    problem, plan = report.problem, report.plan
    must = [c.name for c in problem.candidates if c.must_recompute]
    assert must, "the policy's MUST_RECOMPUTE reached no candidate: nothing is tested"
    by_name = {d.name: d for d in plan.decisions}
    demanded = [n for n in must if by_name[n].kind is not Kind.KEEP or
                problem.candidates[[c.name for c in problem.candidates].index(n)].bwd_uses]
    assert demanded and all(by_name[n].kind is Kind.RECOMPUTE for n in demanded)
    # MUST_SAVE (the matmuls) is never recomputed
    joint = {n.name: n for n in report.joint_graph.graph.nodes}
    for d in plan.decisions:
        if getattr(joint[d.name].meta.get("recompute"), "name", "") == "MUST_SAVE":
            assert d.kind is not Kind.RECOMPUTE, d
    # keep-everything means "everything the policy lets us keep": a loose budget is met
    assert report.peak_bytes <= report.baseline_peak_bytes


def test_plain_checkpoint_never_costs_more_than_torch_compile():
    class Plain(Selective):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = x + checkpoint(block, x, use_reentrant=False)
            return x.square().mean()

    (report,) = fxopt.explain(Plain(), torch.randn(512, 64), budget=0.9).graphs
    assert report.strategy == "fxopt plan"
    assert report.budget_bytes <= report.default_peak_bytes
    assert report.peak_bytes <= report.default_peak_bytes


def test_selective_policy_step_matches_eager():
    from fxopt.capture import CaptureBackend
    from fxopt.config import Options
    from fxopt.partition import partition_joint

    reports = []

    def partition(gm, joint_inputs, **kwargs):
        fwd, bwd, report = partition_joint(gm, joint_inputs, Options(budget=0.5), **kwargs)
        reports.append(report)
        return fwd, bwd

    torch.manual_seed(0)
    model, x = Selective(), torch.randn(512, 64)
    model(x).backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch.compile(model, backend=CaptureBackend(partition))(x).backward()
    assert reports and all(r.strategy == "fxopt plan" for r in reports)
    for a, b in zip(eager, (p.grad for p in model.parameters())):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
