"""A minimal training loop shared by the example scripts."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

Batch = tuple[torch.Tensor, ...]


def add_compile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="fxopt", choices=["eager", "inductor", "fxopt"],
                        help="eager: no compile; inductor: plain torch.compile; fxopt: fxopt")
    parser.add_argument("--budget", default=None,
                        help="fxopt peak-memory budget: a fraction (0.5) or a size ('2GiB')")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)


def compile_model(model: nn.Module, backend: str, budget: str | None) -> nn.Module:
    if backend == "eager":
        return model
    if backend == "inductor":
        return torch.compile(model)  # type: ignore[return-value]
    import fxopt

    return torch.compile(model, backend=fxopt.backend(budget=budget))  # type: ignore[return-value]


def train(model: nn.Module, loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
          batches: Iterator[Batch], steps: int, lr: float, log_every: int = 5) -> list[float]:
    """AdamW for `steps` steps; prints the loss and step time every `log_every` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        batch = next(batches)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        elapsed = time.perf_counter() - start
        losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.4f}  {elapsed * 1e3:8.1f} ms")
    print_fxopt_summary()
    return losses


def print_fxopt_summary() -> None:
    """One line per graph fxopt compiled and one for the step (nothing when fxopt was not
    used)."""
    import sys

    fxopt = sys.modules.get("fxopt")
    if fxopt is None or not fxopt.reports():
        return
    for report in fxopt.reports():
        print(report.summary())
    print(fxopt.step_report().summary())
