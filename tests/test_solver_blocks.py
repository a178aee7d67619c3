"""Repeated blocks (fxopt/solver/blocks.py): found on plain data, one per layer."""

from __future__ import annotations

import dataclasses

import torch

import fxopt
from benchmarks.synthetic import GPTShape, gpt_problem
from examples.gpt import GPT, GPTConfig
from fxopt.solver import Problem
from fxopt.solver.blocks import find_blocks
from tests.test_solver_optimal import chain

SHAPE = GPTShape(layers=6, d_model=256, seq=512, batch=4, heads=4, vocab=4096)


def test_synthetic_gpt_layers_are_the_blocks() -> None:
    p = gpt_problem(SHAPE)
    blocks = find_blocks(p)
    assert blocks is not None and blocks.count == 6
    names = [[p.candidates[i].name for i in mem] for mem in blocks.members]
    for k, layer in enumerate(names):  # block k is layer k, position by position
        assert layer == [n.replace("h0.", f"h{k}.") for n in names[0]]
    assert blocks.fwd_shift > 0 > blocks.bwd_shift  # the backward runs the layers in reverse
    for mem, nxt in zip(blocks.members, blocks.members[1:]):
        for a, b in zip(mem, nxt):
            if b in blocks.odd:
                continue
            ca, cb = p.candidates[a], p.candidates[b]
            assert cb.produced - ca.produced == blocks.fwd_shift
            assert [s - blocks.bwd_shift for s in cb.bwd_uses] == list(ca.bwd_uses)
    # the last layer feeds the final norm: only its tensors that differ are odd
    assert blocks.odd <= set(blocks.members[-1]) and len(blocks.odd) <= 2


def distinct_chain(n: int) -> Problem:
    p = chain(n)
    return dataclasses.replace(p, candidates=tuple(
        dataclasses.replace(c, bytes=100 + 10 * i) for i, c in enumerate(p.candidates)))


def test_no_blocks_without_repetition() -> None:
    assert find_blocks(distinct_chain(6)) is None
    blocks = find_blocks(chain(6))  # a chain of equal tensors repeats with period 1
    assert blocks is not None and blocks.period == 1 and blocks.count >= 4
    one = gpt_problem(dataclasses.replace(SHAPE, layers=1))
    blocks = find_blocks(one)
    assert blocks is None or blocks.period < 8  # no layer-sized block in a one-layer model


def test_blocks_of_sizes_that_differ_do_not_match() -> None:
    p = gpt_problem(SHAPE)
    blocks = find_blocks(p)
    assert blocks is not None
    i = blocks.members[2][3]  # one tensor of one middle layer changes size
    c = p.candidates[i]
    cands = list(p.candidates)
    cands[i] = dataclasses.replace(c, bytes=c.bytes + 4096)
    changed = find_blocks(dataclasses.replace(p, candidates=tuple(cands)))
    assert changed is not None
    assert i in changed.odd or all(i not in mem for mem in changed.members)


def test_traced_gpt_has_one_block_per_layer() -> None:
    cfg = GPTConfig(n_layer=4, n_embd=128, n_head=4, block_size=128, vocab_size=512,
                    dropout=0.0)
    with torch.device("meta"):
        model = GPT(cfg)
    idx = torch.empty(2, cfg.block_size, dtype=torch.long, device="meta")
    problem = fxopt.explain(model, idx, idx, budget=0.5)[0].problem
    assert problem is not None
    blocks = find_blocks(problem)
    assert blocks is not None and blocks.count == cfg.n_layer
    assert len(blocks.odd) <= 2
    # every layer holds the same ops in the same order
    op = [[problem.candidates[i].name.rstrip("0123456789_") for i in mem]
          for mem in blocks.members]
    assert all(o == op[0] for o in op)
