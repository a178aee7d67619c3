"""Train the example GPT on two (or more) ranks, FSDP2 or a two-stage pipeline, under one byte
budget per rank:

    torchrun --nproc_per_node 2 examples/train_distributed.py --mode fsdp --backend fxopt \
        --budget 6MiB
    torchrun --nproc_per_node 2 examples/train_distributed.py --mode pipeline --backend fxopt

Prints one JSON line per rank: its losses, its measured peak (forward and backward, with its
parameters and optimizer state; on CPU the resident-set high-water mark) and its plan hash.
"""

from __future__ import annotations

import os
import sys

# The CPU measurement trusts the resident set only when glibc returns freed blocks at once
# (NOTE [Measuring the step in training] in fxopt/meter.py): start again with that set.
if __name__ == "__main__" and "MALLOC_MMAP_THRESHOLD_" not in os.environ \
        and sys.platform == "linux":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from examples.gpt import GPT, GPTConfig, synthetic_batch  # noqa: E402


def untied_gpt(cfg: GPTConfig, seed: int) -> GPT:
    """The example GPT with its head's weight a parameter of its own (pipeline stages cannot
    share one), initialised alike on every rank."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    model.lm_head.weight = nn.Parameter(model.wte.weight.detach().clone())
    return model


class FirstStage(nn.Module):
    def __init__(self, gpt: GPT, blocks: int) -> None:
        super().__init__()
        self.wte, self.wpe, self.blocks = gpt.wte, gpt.wpe, gpt.blocks[:blocks]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        return x


class LastStage(nn.Module):
    def __init__(self, gpt: GPT, blocks: int) -> None:
        super().__init__()
        self.blocks, self.ln_f, self.lm_head = gpt.blocks[blocks:], gpt.ln_f, gpt.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Per-block activation checkpointing (non-reentrant), the usual manual alternative."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        inner = block.forward
        block.forward = lambda x, inner=inner: checkpoint(inner, x, use_reentrant=False)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


class Peak:
    """The rank's peak over forward and backward: what it holds before (parameters, optimizer
    state) plus the most the step adds (CUDA: allocated; CPU: resident set)."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, device: str) -> None:
        self.model, self.opt, self.device = model, opt, device

    def _held(self) -> int:
        def local(t: torch.Tensor) -> int:
            t = t.to_local() if hasattr(t, "to_local") else t
            return t.numel() * t.element_size()
        state = [v for st in self.opt.state.values() for v in st.values()
                 if isinstance(v, torch.Tensor)]
        return sum(local(p) for p in self.model.parameters()) + sum(local(v) for v in state)

    def start(self) -> None:
        from fxopt.meter import restart_rss_peak

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = 0
        else:
            self._base = self._held() - restart_rss_peak()

    def stop(self) -> int:
        from fxopt.meter import status_bytes

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._base + status_bytes("VmHWM")


def make_backend(args: argparse.Namespace, model: nn.Module, opt: Any, blocks: int,
                 pipeline: Any = None) -> Any:
    if args.backend in ("eager", "inductor"):
        if args.ratio is not None:  # PyTorch's own knob: one ratio for every graph
            from fxopt.compat import functorch_config

            functorch_config().activation_memory_budget = args.ratio
        return args.backend
    import fxopt.distributed

    budget: Any = args.budget
    if budget is not None and "." in budget and budget.replace(".", "").isdigit():
        budget = float(budget)
    return fxopt.distributed.backend(model, budget, blocks=blocks, optimizer=opt,
                                     pipeline=pipeline, group=None if pipeline else "world")


def run_fsdp(args: argparse.Namespace, cfg: GPTConfig, rank: int, device: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = untied_gpt(cfg, args.seed).to(device)
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    be = make_backend(args, model, opt, blocks=len(model.blocks))
    if args.checkpoint:
        checkpoint_blocks(model.blocks)
    for block in model.blocks:  # torchtitan's layout: each block compiled on its own
        if be != "eager":
            block.compile(backend=be)
    gen = torch.Generator().manual_seed(args.seed + 1 + rank)  # each rank its own data

    def forward_backward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    return {**train(args, cfg, gen, device, Peak(model, opt, device), opt, forward_backward),
            "backend": be}


def run_pipeline(args: argparse.Namespace, cfg: GPTConfig, rank: int, device: str) -> dict:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    world = dist.get_world_size()
    if world != 2:
        raise SystemExit("--mode pipeline splits the model into 2 stages: run 2 ranks")
    gpt = untied_gpt(cfg, args.seed)
    half = cfg.n_layer // 2
    module = (FirstStage(gpt, half) if rank == 0 else LastStage(gpt, half)).to(device)
    del gpt
    opt = torch.optim.AdamW(module.parameters(), lr=args.lr)
    schedule_cls = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[args.schedule]
    pipeline = None
    if args.backend == "fxopt":
        import fxopt.distributed

        pipeline = fxopt.distributed.Pipeline(schedule_cls, rank, world, args.microbatches)
    be = make_backend(args, module, opt, blocks=1, pipeline=pipeline)
    if args.checkpoint:
        checkpoint_blocks(module.blocks)
    if be != "eager":
        module.compile(backend=be)
    stage = PipelineStage(module, rank, world, torch.device(device))
    schedule = schedule_cls(stage, n_microbatches=args.microbatches, loss_fn=loss_fn)
    gen = torch.Generator().manual_seed(args.seed + 1)  # both stages see the same batch

    def forward_backward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if rank == 0:
            schedule.step(x)
            return torch.zeros(())
        mb_losses: list[torch.Tensor] = []
        schedule.step(target=y, losses=mb_losses)
        return torch.stack(mb_losses).mean().detach()

    def shared(loss: torch.Tensor) -> float:
        dist.broadcast(loss, src=world - 1)  # the last stage computes the loss
        return loss.item()

    return {**train(args, cfg, gen, device, Peak(module, opt, device), opt, forward_backward,
                    shared), "backend": be}


def train(args: argparse.Namespace, cfg: GPTConfig, gen: torch.Generator, device: str,
          peak: Peak, opt: torch.optim.Optimizer,
          forward_backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
          report: Callable[[torch.Tensor], float] = lambda loss: loss.item()) -> dict:
    """`args.steps` steps; the last one's peak (forward and backward) is measured; each
    step's time runs to the end of the optimizer step (`report` makes the loss a number)."""
    losses, measured, times = [], 0, []
    for step in range(args.steps):
        x, y = synthetic_batch(cfg, args.batch, gen, device)
        opt.zero_grad(set_to_none=True)
        last = step == args.steps - 1
        if last:
            peak.start()
        start = time.perf_counter()
        loss = forward_backward(x, y)
        if last:
            measured = peak.stop()
        opt.step()
        times.append(time.perf_counter() - start)
        losses.append(report(loss))
    return {"losses": losses, "peak_bytes": measured, "step_ms": _step_ms(times)}


def _step_ms(times: list[float]) -> float:
    """Median step time once compiled and re-planned (the later half of the steps)."""
    return round(statistics.median(times[len(times) // 2:]) * 1e3, 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["fsdp", "pipeline"], default="fsdp")
    parser.add_argument("--backend", choices=["eager", "inductor", "fxopt"], default="fxopt",
                        help="eager: no compile; inductor: plain torch.compile; fxopt: fxopt")
    parser.add_argument("--budget", default=None,
                        help="fxopt: this rank's device memory for the step as a size ('6MiB', "
                             "bytes), or a fraction of the step's keep-everything peak (0.5)")
    parser.add_argument("--ratio", type=float, default=None,
                        help="inductor: PyTorch's activation_memory_budget (one ratio)")
    parser.add_argument("--checkpoint", action="store_true",
                        help="checkpoint every block (torch.utils.checkpoint)")
    parser.add_argument("--schedule", choices=["1f1b", "gpipe"], default="1f1b")
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    rank = dist.get_rank()
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = GPTConfig(n_layer=args.layers, n_embd=args.width, n_head=4, dropout=0.0)
    run = run_fsdp if args.mode == "fsdp" else run_pipeline
    out = run(args, cfg, rank, device)
    be = out.pop("backend")
    line = {"rank": rank, "mode": args.mode, "backend": args.backend, **out}
    if not isinstance(be, str):  # fxopt
        line["plan_hash"] = be.plan_hash()
        if be.split is not None:
            line["budget_bytes"] = be.split.budget_bytes
            line["split"] = str(be.split)
        report = be.step_report()
        line["predicted_step_bytes"] = report.peak_bytes
        line["measured_step_bytes"] = report.measured_peak_bytes
        line["fallbacks"] = len(report.fallbacks)
        line["in_flight"] = list(report.copies)
    sys.stdout.write(json.dumps(line) + "\n")  # one write: the ranks' lines never interleave
    sys.stdout.flush()
    return line


if __name__ == "__main__":
    main()
    dist.destroy_process_group()
