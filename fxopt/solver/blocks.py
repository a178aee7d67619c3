"""Repeated blocks of a Problem (a transformer's layers), found on its plain data alone."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

from fxopt.solver.problem import Candidate, Problem

# NOTE [Repeated blocks]
# Candidates come in forward order, so identical layers show up as a period P in the sequence
# of candidate signatures: what a candidate is (its op or module name with the numbers left
# out, sizes, costs, flags), its forward life and backward uses relative to itself, and its
# inputs as distances back in the sequence (so "reads the candidate just before me" matches
# across layers whatever the absolute indices). Candidates i and i + P correspond when their
# signatures match and the steps shift uniformly over the run (forward steps by one fixed
# amount, backward steps by another, negative: the backward runs the layers in reverse). The
# period is the one whose run of matches covers most candidates (trying the commonest
# distances between equal signatures); the blocks are the P-long slices that run covers, and a
# first or last slice with MIN_MATCH of its tensors matching joins too, its differing tensors
# (the last layer's output feeds the final norm) marked odd. Fixed bytes and step times are
# not compared: they are what makes layers differ for the peak (earlier layers' tensors live
# longer, gradients accumulate), so blocks serve heuristics (a start, NOTE [Block search] in
# block_search.py), never a claim that shared decisions lose nothing.
MAX_PERIODS_TRIED = 4
MIN_MATCH = 0.75  # a first / last block joins with this share of its tensors matching
_SUFFIX = re.compile(r"_\d+$")  # FX numbers repeated ops: addmm, addmm_1, ...
_DIGITS = re.compile(r"\d+")  # and modules by index: h0.ln1, h1.ln1, ...


@dataclass(frozen=True)
class Blocks:
    """members[k] lists the candidates of block k in order: members[k][j] for every k are the
    same tensor of each block, except the `odd` ones (a first or last layer's tensors that
    differ from their neighbours'). fwd_shift / bwd_shift: how far block k+1's forward /
    backward steps lie from block k's."""

    members: tuple[tuple[int, ...], ...]
    fwd_shift: int
    bwd_shift: int
    odd: frozenset[int] = frozenset()

    @property
    def period(self) -> int:
        return len(self.members[0])

    @property
    def count(self) -> int:
        return len(self.members)


def _signature(i: int, c: Candidate) -> Hashable:
    rel_bwd = tuple(s - c.bwd_uses[0] for s in c.bwd_uses)
    return (_DIGITS.sub("#", _SUFFIX.sub("", c.name)), c.bytes, c.lowbit_bytes,
            c.recompute_us, c.cast_us, c.copy_us, c.recomputable, c.must_recompute,
            c.lowbit_formats, c.last_fwd_use - c.produced, rel_bwd, tuple(i - j for j in c.inputs))


def _shifts(a: Candidate, b: Candidate) -> tuple[int, int | None] | None:
    """(forward shift, backward shift) from a to b, None where a's steps do not shift
    uniformly onto b's."""
    fwd = b.produced - a.produced
    bwd = b.bwd_uses[0] - a.bwd_uses[0] if a.bwd_uses else None
    return (fwd, bwd) if b.last_fwd_use - a.last_fwd_use == fwd else None


class _Matcher:
    """Whether candidate i corresponds to i + period (same signature, uniform shifts)."""

    def __init__(self, cands: tuple[Candidate, ...], sig: list[int], period: int) -> None:
        self.cands, self.sig, self.period = cands, sig, period

    def shifts(self, i: int) -> tuple[int, int | None] | None:
        if self.sig[i] != self.sig[i + self.period]:
            return None
        return _shifts(self.cands[i], self.cands[i + self.period])

    def same(self, i: int, fwd: int, bwd: int) -> bool:
        sh = self.shifts(i)
        return sh is not None and sh[0] == fwd and sh[1] in (None, bwd)

    def longest_run(self) -> tuple[int, int, int, int]:
        """(length, start, fwd shift, bwd shift) of the longest run of corresponding i."""
        best = (0, 0, 0, 0)
        start, fwd, bwd, length = 0, 0, None, 0
        for i in range(len(self.cands) - self.period):
            sh = self.shifts(i)
            if sh is None or (length and (sh[0] != fwd or None not in (sh[1], bwd) and
                                          sh[1] != bwd)):
                length = 0
            if sh is None:
                continue
            if length == 0:
                start, fwd, bwd = i, sh[0], sh[1]
            elif bwd is None:
                bwd = sh[1]
            length += 1
            if length > best[0]:
                best = (length, start, fwd, bwd or 0)
        return best


def find_blocks(problem: Problem, min_count: int = 2) -> Blocks | None:
    """The repeated blocks of `problem` (NOTE [Repeated blocks]); None when no period repeats
    at least `min_count` times."""
    cands = problem.candidates
    ids: dict[Hashable, int] = {}
    sig = [ids.setdefault(_signature(i, c), len(ids)) for i, c in enumerate(cands)]
    last: dict[int, int] = {}
    gaps: Counter[int] = Counter()
    for i, s in enumerate(sig):
        if s in last:
            gaps[i - last[s]] += 1
        last[s] = i
    best: tuple[int, int, int, int, int, frozenset[int]] | None = None
    for period, _ in sorted(gaps.items(), key=lambda t: (-t[1], t[0]))[:MAX_PERIODS_TRIED]:
        match = _Matcher(cands, sig, period)
        length, start, fwd, bwd = match.longest_run()
        first, count = start, length // period + 1
        odd: set[int] = set()
        # the first and last layers may differ in a few tensors (they read the embedding,
        # feed the final norm): take them in, without those tensors' correspondence
        while first + (count + 1) * period <= len(cands):
            hi = first + count * period
            bad = [i for i in range(hi - period, hi) if not match.same(i, fwd, bwd)]
            if len(bad) > period * (1 - MIN_MATCH):
                break
            odd.update(i + period for i in bad)
            count += 1
        while first - period >= 0:
            bad = [i for i in range(first - period, first) if not match.same(i, fwd, bwd)]
            if len(bad) > period * (1 - MIN_MATCH):
                break
            odd.update(bad)
            first -= period
            count += 1
        key = (count * period, -period, -first, fwd, bwd, frozenset(odd))
        if count >= min_count and (best is None or key[:3] > best[:3]):
            best = key
    if best is None:
        return None
    covered, neg_p, neg_first, fwd, bwd, odd_set = best
    period, first = -neg_p, -neg_first
    members = tuple(tuple(range(first + k * period, first + (k + 1) * period))
                    for k in range(covered // period))
    return Blocks(members, fwd, bwd, odd_set)
