"""fxopt.explain plans a training step on fake tensors: no kernel of the model runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxopt
from examples.gpt import GPT, GPTConfig


def test_explain_meta_gpt():
    cfg = GPTConfig(n_layer=2, n_embd=128, n_head=4, block_size=256, vocab_size=512)
    with torch.device("meta"):
        model = GPT(cfg)
    idx = torch.empty(4, cfg.block_size, dtype=torch.long, device="meta")
    report = fxopt.explain(model, idx, idx, budget=0.5)
    assert isinstance(report, fxopt.Report)
    assert report.forward_ops > 0 and report.backward_ops > 0
    assert report.saved and report.saved_bytes > 0
    assert report.options.budget == fxopt.Budget(fraction=0.5)
    assert fxopt.reports() == (), "explain must not add to the backend's reports"


def test_explain_sums_non_scalar_output_and_checks_loss():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    report = fxopt.explain(model, torch.randn(5, 4))
    assert report.backward_ops > 0
    with pytest.raises(TypeError, match="scalar"):
        fxopt.explain(model, torch.randn(5, 4), loss_fn=lambda out: out)


def test_explain_needs_trainable_parameters():
    model = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        fxopt.explain(model, torch.randn(2, 3))
