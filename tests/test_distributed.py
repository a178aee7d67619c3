"""fxopt in distributed training: rank budgets, pipeline stages and one plan on every rank,
on gloo with two processes."""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.fx as fx
import torch.multiprocessing as mp
import torch.nn as nn

import fxopt.distributed as fd
from fxopt.config import OptionsError
from fxopt.solver import (
    Candidate,
    InfeasibleBudgetError,
    Problem,
    SolverOptions,
    solve,
)

ROOT = Path(__file__).resolve().parents[1]


# ---- the schedule's runs in flight -------------------------------------------------------------

def test_in_flight_per_schedule() -> None:
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    assert [fd.Pipeline("1F1B", s, 4, 8).in_flight for s in range(4)] == [4, 3, 2, 1]
    assert fd.Pipeline(Schedule1F1B, 0, 4, 2).in_flight == 2  # fewer microbatches than stages
    assert fd.Pipeline(ScheduleGPipe, 3, 4, 8).in_flight == 8
    assert fd.Pipeline("gpipe", 0, 2, 3).schedule == "GPipe"


@pytest.mark.parametrize("name", ["ScheduleInterleavedZeroBubble", "ScheduleZBVZeroBubble",
                                  "ScheduleDualPipeV"])
def test_zero_bubble_schedules_are_refused(name: str) -> None:
    import torch.distributed.pipelining as pp

    with pytest.raises(fd.UnsupportedScheduleError, match="splits input and weight gradients"):
        fd.Pipeline(getattr(pp, name), 0, 2, 4)
    with pytest.raises(fd.UnsupportedScheduleError, match="Schedule1F1B or ScheduleGPipe"):
        fd.schedule_name("MySchedule")


# ---- the rank's budget split -------------------------------------------------------------------

def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64))


def test_split_counts_parameters_gradients_and_optimizer_state() -> None:
    model = _mlp()
    nbytes = sum(p.numel() * 4 for p in model.parameters())
    adam = torch.optim.AdamW(model.parameters())
    split = fd.split_rank_budget(model, "1MiB", blocks=3, optimizer=adam,
                                 pipeline=fd.Pipeline("1F1B", 0, 2, 4))
    assert (split.parameters, split.optimizer, split.gradients, split.unsharded) == \
        (nbytes, 2 * nbytes, nbytes, 0)
    assert split.in_flight == 3 * 2 and split.graphs_bytes == 2**20 - 4 * nbytes
    # what the optimizer really keeps once it has stepped
    model(torch.randn(2, 64)).sum().backward()
    adam.step()
    assert fd.optimizer_bytes(adam, list(model.parameters())) == 2 * nbytes
    assert fd.optimizer_bytes(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                              list(model.parameters())) == nbytes
    assert fd.optimizer_bytes(torch.optim.SGD(model.parameters(), lr=0.1),
                              list(model.parameters())) == 0


def test_backend_plans_the_graphs_with_what_is_left() -> None:
    model = _mlp()
    be = fd.backend(model, "1MiB", blocks=2, optimizer=torch.optim.AdamW(model.parameters()),
                    group=None)
    assert be.split is not None and be.agreement is None
    opts = be.options
    assert opts.in_flight == 2 and opts.reserved == be.split.reserved
    assert opts.budget is not None and opts.budget.nbytes == 2**20
    assert opts.resident == be.split.resident
    assert "rank budget 1.00 MiB" in str(be.split)
    fraction = fd.backend(model, 0.5, blocks=4, group=None)
    assert fraction.split is None and fraction.options.in_flight == 4


def test_budget_below_what_the_rank_holds_is_refused() -> None:
    model = nn.Linear(1024, 1024)
    with pytest.raises(OptionsError, match="leaves nothing for the compiled graphs.*need"):
        fd.split_rank_budget(model, "4MiB", optimizer=torch.optim.Adam(model.parameters()))
    with pytest.raises(OptionsError, match="optimizer_bytes="):
        fd.split_rank_budget(model, "1GiB", optimizer=torch.optim.LBFGS(model.parameters()))
    with pytest.raises(OptionsError, match="size in bytes"):
        fd.split_rank_budget(model, 0.5)


# ---- two processes on gloo ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, target: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    sys.path.insert(0, str(ROOT))
    # a collective one rank never reaches fails the test instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=240))
    try:
        module, name = target.rsplit(".", 1)
        result = getattr(__import__(module, fromlist=[name]), name)(rank)
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_ranks(target: Callable[[int], object], tmp_path: Path, world: int = 2) -> list:
    """Runs `target(rank)` (a module-level function) on `world` gloo ranks; their results."""
    name = f"{target.__module__}.{target.__name__}"
    mp.start_processes(_worker, args=(world, _free_port(), name, str(tmp_path)), nprocs=world,
                       join=True, start_method="spawn")
    return [json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(world)]


def _problem() -> Problem:
    cands = tuple(Candidate(f"t{i}", 64 * (i + 1), i, i, (8 - i,), recompute_us=10 + i)
                  for i in range(4))
    return Problem(9, 4, (0,) * 9, (5,) * 9, cands)


def agreement_ranks(rank: int) -> dict:
    """Rank 1 searches under another budget, so the ranks find different plans."""
    from fxopt.distributed.agree import PlanAgreement

    agree = PlanAgreement(dist.group.WORLD)
    problem = _problem()
    own = solve(problem, 0.6 if rank == 0 else 0.9, SolverOptions(), cache_dir=None)
    used = agree.plan(problem, own)
    # an error on one rank only: every rank does what rank 0 does
    err = InfeasibleBudgetError(1, 2, False, 3, {})
    found = err if rank == 0 else own
    try:
        agree.plan(problem, found)
        outcome = "plan"
    except InfeasibleBudgetError:
        outcome = "infeasible"
    return {"own": own.content_hash, "used": used.content_hash,
            "largest": agree.number(10 + rank), "mismatches": agree.mismatches,
            "outcome": outcome}


def test_ranks_settle_on_rank_zeros_plan(tmp_path: Path) -> None:
    r0, r1 = run_ranks(agreement_ranks, tmp_path)
    assert r0["own"] != r1["own"], "the ranks should have found different plans"
    assert r0["used"] == r1["used"] == r0["own"]
    assert r0["largest"] == r1["largest"] == 11
    assert r0["mismatches"] == r1["mismatches"] == 2
    assert r0["outcome"] == r1["outcome"] == "infeasible"


# The example at small sizes: fxopt under a rank budget against eager, on both ranks. The
# budgets sit between each rank's smallest plan and what eager holds (49 MB FSDP ranks; 15 and
# 10 MB for the two pipeline stages).
EXAMPLE = ["--layers", "2", "--steps", "6", "--width", "128", "--batch", "32"]
BUDGETS = {"fsdp": 28 * 2**20, "pipeline": 11 * 2**20}


def example_ranks(rank: int) -> dict:
    import torch._dynamo

    from examples.train_distributed import main

    out = {}
    for mode in ("fsdp", "pipeline"):
        torch._dynamo.reset()
        planned = main(["--mode", mode, "--backend", "fxopt", "--budget",
                        str(BUDGETS[mode]), *EXAMPLE])
        eager = main(["--mode", mode, "--backend", "eager", *EXAMPLE])
        out[mode] = {"fxopt": planned, "eager": eager}
    return out


def test_example_trains_like_eager_within_each_ranks_budget(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the children measure their RSS
    ranks = run_ranks(example_ranks, tmp_path)
    for mode in ("fsdp", "pipeline"):
        lines = [r[mode] for r in ranks]
        for line in lines:
            fx, eager = line["fxopt"], line["eager"]
            assert fx["fallbacks"] == 0
            assert fx["losses"] == pytest.approx(eager["losses"], abs=1e-5)
            assert fx["peak_bytes"] <= BUDGETS[mode] * 1.05, (mode, fx["split"])
            if eager["peak_bytes"] > BUDGETS[mode]:
                assert fx["peak_bytes"] < eager["peak_bytes"]
        if mode == "fsdp":  # the same graphs on both ranks: the same plans
            assert lines[0]["fxopt"]["plan_hash"] == lines[1]["fxopt"]["plan_hash"]
            assert [line["fxopt"]["in_flight"] for line in lines] == [[2], [2]]
        else:  # 1F1B: the first stage has both microbatches in flight, the last one
            assert [line["fxopt"]["in_flight"] for line in lines] == [[2], [1]]


def tensor_parallel_ranks(rank: int) -> dict:
    """A functional all-gather (tensor parallelism) inside a compiled graph, planned tightly."""
    import torch._dynamo
    import torch.distributed._functional_collectives as fc

    import fxopt

    class TP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = fc.all_gather_tensor_autograd(nn.functional.gelu(self.a(x)), 0,
                                              dist.group.WORLD)
            return self.b(torch.tanh(h) * 2).pow(2).mean()

    torch.manual_seed(0)
    model, x = TP(), torch.randn(256, 64) + rank
    model(x).backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    fxopt.clear_reports()
    torch.compile(model, backend=fxopt.backend(budget=0.3))(x).backward()
    report = fxopt.last_report()

    def count(gm: fx.GraphModule) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in gm.graph.nodes:
            if "c10d" in str(n.target):
                out[str(n.target)] = out.get(str(n.target), 0) + 1
        return out

    return {"fallback": report.fallback_reason, "choices": [t.choice for t in report.tensors],
            "fwd": count(report.forward_graph), "bwd": count(report.backward_graph),
            "grads": max((p.grad - g).abs().max().item()
                         for p, g in zip(model.parameters(), eager))}


def test_tensor_parallel_collectives_run_once(tmp_path: Path) -> None:
    for r in run_ranks(tensor_parallel_ranks, tmp_path):
        assert r["fallback"] is None and "recompute" in r["choices"]
        assert r["fwd"] == {"_c10d_functional.all_gather_into_tensor.default": 1,
                            "_c10d_functional.wait_tensor.default": 1}
        assert r["bwd"] == {"_c10d_functional.reduce_scatter_tensor.default": 1,
                            "_c10d_functional.wait_tensor.default": 1}
        assert r["grads"] < 1e-5


def hf_llama_fsdp_ranks(rank: int) -> dict:
    """A model fxopt did not write: Hugging Face's Llama (SDPA attention), every decoder layer
    sharded with FSDP2 and compiled on its own, trained a few steps with plain Inductor and with
    fxopt under one size per rank."""
    import torch._dynamo
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    def train(backend_of: Callable[[nn.Module, torch.optim.Optimizer], object]) -> dict:
        torch._dynamo.reset()
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, use_cache=False,
                          attn_implementation="sdpa")
        model = LlamaForCausalLM(cfg)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        backend = backend_of(model, opt)
        for layer in model.model.layers:
            layer.compile(backend=backend)
        gen = torch.Generator().manual_seed(1 + rank)
        losses = []
        for _ in range(3):
            ids = torch.randint(0, 256, (8, 128), generator=gen)
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
        out: dict = {"losses": losses}
        if not isinstance(backend, str):
            report = backend.step_report()
            out.update(fallbacks=len(report.fallbacks), graphs=len(report.graphs),
                       copies=list(report.copies), plan_hash=backend.plan_hash())
        return out

    return {"inductor": train(lambda model, opt: "inductor"),
            "fxopt": train(lambda model, opt: fd.backend(model, "28MiB", blocks=4,
                                                         optimizer=opt))}


def test_hugging_face_llama_under_fsdp2_plans_every_rank_alike(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    ranks = run_ranks(hf_llama_fsdp_ranks, tmp_path)
    for r in ranks:
        fx = r["fxopt"]
        assert fx["fallbacks"] == 0 and fx["graphs"] >= 1
        assert fx["losses"] == pytest.approx(r["inductor"]["losses"], rel=1e-5)
        assert fx["copies"][0] >= 2  # the four layers share one graph: runs in flight
    assert ranks[0]["fxopt"]["plan_hash"] == ranks[1]["fxopt"]["plan_hash"]


def test_plan_pipeline_stages_on_the_meta_device() -> None:
    """Stage 0 and stage 3 of a 4-stage 1F1B pipeline planned for an H100 without a GPU or a
    process group: the first stage has 4 microbatches in flight and gets the tighter plan."""
    from examples.gpt import GPTConfig
    from examples.train_distributed import FirstStage, LastStage, untied_gpt

    cfg = GPTConfig(n_layer=8, n_embd=128, n_head=4, block_size=256, vocab_size=512,
                    dropout=0.0)
    with torch.device("meta"):
        gpt = untied_gpt(cfg, 0)
    first = FirstStage(gpt, 2)
    last = LastStage(gpt, 6)
    x = torch.randint(0, 512, (8, 256), device="meta")
    h = torch.randn(8, 256, 128, device="meta")
    budget = 160 * 2**20
    reports = [fd.explain_rank(mod, inp, budget=budget, device="h100",
                               pipeline=fd.Pipeline("1F1B", stage, 4, 8))
               for stage, mod, inp in ((0, first, x), (3, last, h))]
    assert [r.copies for r in reports] == [(4,), (1,)]
    for r in reports:
        assert r.peak_bytes is not None and not r.fallbacks
        assert "rank budget 160.00 MiB" in r.note
    first_plan, last_plan = (r.graphs[0] for r in reports)
    # the same rank budget: four runs of the first stage must fit where the last has one
    assert first_plan.plan_use.held_bytes < first_plan.keep_use.held_bytes
    assert 4 * first_plan.plan_use.held_bytes < 160 * 2**20
