"""The exact simulator of a plan on a Problem: the spec every planner is checked against.

Written without OR-Tools on purpose: it is the independent check of the CP-SAT model.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from fxopt.plan import Decision, Kind, LowbitFormat, Plan
from fxopt.solver.errors import InvalidPlanError
from fxopt.solver.problem import Candidate, Problem

# NOTE [Decision semantics]
# Let p = produced, f = last_fwd_use, F = num_fwd_steps. Every candidate has its full bytes alive
# on [p, f]. Its *demands* are its own backward uses plus the restore step of every RECOMPUTE
# consumer (a recomputation reads its inputs at its restore step); L = the last demand, and a
# candidate without demands has no life after f whatever its kind (non-keep kinds need a demand).
#   KEEP            full on [f+1, L].
#   RECOMPUTE       full on [R, L]; costs recompute_us. R = restore_step, F <= R <= every demand.
#                   Inputs are available at R because R is one of their demands: a kept input
#                   lives until R, a recomputed / dequantised one must have its own R' <= R.
#                   Each recomputed tensor is recomputed once, however many consumers need it.
#   LOWBIT          low-bit bytes on [f+1, R-1], full on [R, L] (dequantised at R); costs cast_us.
#   OFFLOAD         full on [f+1, D] where D is the end of the device->host copy (below), and
#                   full on [q, L] from the prefetch step q = restore_step, F <= q <= b where b is
#                   its first own backward use.
#   LOWBIT_OFFLOAD  quantised at f: low-bit bytes on [f+1, D'], on [q, b-1], full on [b, L].
# Structural rules: RECOMPUTE only for recomputable candidates, and for every demanded
# must_recompute one; the low-bit and offload kinds only for candidates with backward uses of
# their own (a tensor only recomputations read is kept or recomputed), low-bit only where
# lowbit_bytes > 0 and in one of its lowbit_formats, offload only where copy_us > 0; an
# offloaded tensor may not be read by a recomputation before its own first backward use b (so
# its prefetch is judged against b); a recomputation never reads a low-bit tensor (the rounding
# would reach values the low-bit rules did not vet, such as a batch norm's input recomputed by
# a convolution from a rounded ReLU output, and compound through every recomputed layer).
#
# NOTE [Copy exposure model]
# Copies run on a side stream per direction and overlap with compute. Device->host of an
# OFFLOAD tensor is issued after step p (LOWBIT_OFFLOAD: after f, once quantised); its memory
# lives until step D, the first step >= f by which the compute time since the copy's issue
# covers the copy time (D = F-1 if forward ends first), and the copy is joined before step
# D + 1 (the forward's end when D = F-1). A prefetch is issued before step q and waited for
# before b, the tensor's first backward use. At a join or a wait the main stream stalls until
# that copy is done.
#
# NOTE [Copy queues]
# The copies of one direction share one stream (fxopt/ops/offload.py), and none starts before
# it is issued. Measured on an H200, 4 offloads of a 12-layer GPT that each fitted their own
# window cost 15 ms where a window-per-copy model said 3.5: they were issued late in the
# forward and queued. So, besides each copy's own window, per direction:
#   device->host: the copies issued at or after step s all run after T(s), so what the rest of
#     the forward, compute(s..F-1), leaves of them is exposed (at the joins by its end):
#       exposed = max(0, max over s of [copies issued at or after s - compute(s..F-1)])
#     (one copy: its own window's exposure; s = 0: the whole forward against all copies);
#   host->device: the prefetches read at or before step e all run in the backward before e:
#       exposed = max(sum of each prefetch's own exposure,
#                     max over e of [copies read at or before e - compute(F..e-1)]).
# What a queue adds at a join inside the forward is not modelled: an exact queue (a max per
# copy in CP-SAT) made a 4-layer GPT with offload 25 times slower to solve.
#
# NOTE [Copies in flight]
# One compiled graph can run several times before the first of those runs reaches its backward:
# identical blocks compiled once and called in turn, microbatches in flight in a pipeline
# schedule. While the last run goes forward and back, the other runs are between their forward
# and their backward, holding their saved tensors. `other_copies` counts them: each holds what
# the plan leaves on the device across the boundary, the same for every run (a demanded KEEP
# candidate its full bytes, a LOWBIT one its low-bit bytes; recomputed and offloaded ones
# nothing), and that is added to every step. Their recomputations and copies run at other times
# and add nothing here.


def held_per_copy(problem: Problem, decisions: Sequence[Decision],
                  dem: Sequence[Sequence[int]]) -> int:
    """Device bytes one run holds between its forward and its backward under `decisions`."""
    total = 0
    for c, d, used in zip(problem.candidates, decisions, dem):
        if not used:
            continue
        if d.kind is Kind.KEEP:
            total += c.bytes
        elif d.kind is Kind.LOWBIT:
            total += c.lowbit_bytes
    return total


def d2h_window(problem: Problem, c: Candidate, lowbit: bool) -> tuple[int, int]:
    """(last step the device copy is alive while being copied out, exposed µs)."""
    start = d2h_issue(c, lowbit)
    copy = c.lowbit_copy_us if lowbit else c.copy_us
    last_fwd = problem.num_fwd_steps - 1
    # smallest s >= last_fwd_use with compute(start..s) >= copy, by bisection on prefix sums
    k = bisect.bisect_left(problem.prefix_us, problem.prefix_us[start] + copy,
                           lo=c.last_fwd_use + 1, hi=last_fwd + 2)
    if k <= last_fwd + 1:
        return k - 1, 0
    return last_fwd, copy - problem.compute_us(start, last_fwd)


def copy_done_steps(problem: Problem, decisions: Sequence[Decision]) -> dict[str, int]:
    """For each offloaded tensor, the step before which its device->host copy is done and its
    device memory may go (D + 1 of NOTE [Copy exposure model]; num_fwd_steps: the forward's
    end). The offload pass joins the copy there."""
    return {d.name: d2h_window(problem, c, d.kind is Kind.LOWBIT_OFFLOAD)[0] + 1
            for c, d in zip(problem.candidates, decisions) if d.kind.offloaded}


def d2h_issue(c: Candidate, lowbit: bool) -> int:
    """The step before which the copy out of c is issued (after p; once quantised, after f)."""
    return c.last_fwd_use + 1 if lowbit else c.produced + 1


def d2h_queue_exposed(problem: Problem, copies: Sequence[tuple[int, int]]) -> int:
    """Exposed device->host time of copies given as (issue step, µs) (NOTE [Copy queues])."""
    exposed = after = 0
    F = problem.num_fwd_steps
    for step, us in sorted(copies, reverse=True):
        after += us
        exposed = max(exposed, after - problem.compute_us(step, F - 1))
    return exposed


def h2d_queue_exposed(problem: Problem, copies: Sequence[tuple[int, int, int]]) -> int:
    """Exposed host->device time of prefetches given as (first use step, µs, exposure of its
    own window) (NOTE [Copy queues])."""
    exposed = before = 0
    F = problem.num_fwd_steps
    for step, us, _ in sorted(copies):
        before += us
        exposed = max(exposed, before - problem.compute_us(F, step - 1))
    return max(exposed, sum(own for _, _, own in copies))


def h2d_exposed(problem: Problem, c: Candidate, prefetch: int, lowbit: bool) -> int:
    copy = c.lowbit_copy_us if lowbit else c.copy_us
    assert c.first_bwd_use is not None
    return max(0, copy - problem.compute_us(prefetch, c.first_bwd_use - 1))


def prefetch_points(problem: Problem, c: Candidate, lowbit: bool, count: int) -> tuple[int, ...]:
    """Candidate prefetch steps: the latest step hiding all of the copy, then ones hiding a
    decreasing share of it, ending with b itself (nothing hidden, shortest device life)."""
    b = c.first_bwd_use
    assert b is not None
    copy = c.lowbit_copy_us if lowbit else c.copy_us
    out: list[int] = []
    for k in range(count):
        share = copy * (count - 1 - k) // max(count - 1, 1) if count > 1 else 0
        q = b
        while q > problem.num_fwd_steps and problem.compute_us(q, b - 1) < share:
            q -= 1
        q = problem.anchor(q)
        if q not in out:
            out.append(q)
    return tuple(sorted(out))


@dataclass(frozen=True)
class Simulation:
    memory: tuple[int, ...]
    peak_bytes: int
    peak_step: int
    recompute_us: int
    cast_us: int
    exposed_d2h_us: int
    exposed_h2d_us: int
    lowbit_count: int

    @property
    def extra_time_us(self) -> int:
        return self.recompute_us + self.cast_us + self.exposed_d2h_us + self.exposed_h2d_us

    def objective(self, lowbit_penalty_us: int) -> int:
        return self.extra_time_us + lowbit_penalty_us * self.lowbit_count


def demands(problem: Problem, decisions: Sequence[Decision]) -> list[list[int]]:
    out = [list(c.bwd_uses) for c in problem.candidates]
    for cand, dec in zip(problem.candidates, decisions):
        if dec.kind is Kind.RECOMPUTE:
            for i in cand.inputs:
                out[i].append(dec.restore_step)  # type: ignore[arg-type]
    return out


def _check(problem: Problem, i: int, dec: Decision, dem: list[int]) -> None:
    c = problem.candidates[i]
    F = problem.num_fwd_steps
    where = f"tensor {c.name!r} ({dec.kind.value})"
    if dec.name != c.name:
        raise InvalidPlanError(f"decision {i} is for {dec.name!r}, expected {c.name!r}")
    if dec.kind is not Kind.RECOMPUTE and c.must_recompute and dem:
        raise InvalidPlanError(f"{where}: the model's checkpoint policy requires recomputing it")
    if dec.kind is Kind.KEEP:
        return
    r = dec.restore_step
    assert r is not None
    if not dem:
        raise InvalidPlanError(f"{where}: nothing in backward reads it; it must be 'keep'")
    if not F <= r <= min(dem):
        raise InvalidPlanError(f"{where}: restore step {r} must lie in [{F}, first demand "
                               f"{min(dem)}]")
    if problem.anchor(r) != r:
        raise InvalidPlanError(f"{where}: restore step {r} runs at the same point as step "
                               f"{problem.anchor(r)}; restore at {problem.anchor(r)}")
    if dec.kind is Kind.RECOMPUTE and not c.recomputable:
        raise InvalidPlanError(f"{where}: it cannot be recomputed safely")
    if dec.kind.lowbit:
        if c.lowbit_bytes <= 0 or not c.bwd_uses:
            raise InvalidPlanError(f"{where}: not eligible for low-bit storage")
        if not isinstance(dec.fmt, LowbitFormat):
            raise InvalidPlanError(f"{where}: unknown low-bit format {dec.fmt!r}")
        if not c.stores_lowbit(dec.fmt):
            raise InvalidPlanError(f"{where}: {dec.fmt} may not store it (only "
                                   f"{', '.join(map(str, c.lowbit_formats))})")
    if dec.kind.offloaded:
        if c.copy_us <= 0 or not c.bwd_uses:
            raise InvalidPlanError(f"{where}: not eligible for offload")
        if min(dem) < problem.anchor(c.bwd_uses[0]):
            raise InvalidPlanError(f"{where}: a recomputation reads it at step {min(dem)}, "
                                   f"before its own first backward use {c.bwd_uses[0]}")


def intervals(problem: Problem, i: int, dec: Decision, dem: Sequence[int]
              ) -> list[tuple[int, int, int]]:
    """(first step, last step, bytes) pieces of candidate i's life under `dec` (NOTE above)."""
    c = problem.candidates[i]
    f, full, small = c.last_fwd_use, c.bytes, c.lowbit_bytes
    out = [(c.produced, f, full)]
    if not dem:
        return out
    last, kind = max(dem), dec.kind
    if kind is Kind.KEEP:
        out.append((f + 1, last, full))
        return out
    r = dec.restore_step
    assert r is not None  # every kind but KEEP has one (Decision checks it)
    if kind is Kind.RECOMPUTE:
        out.append((r, last, full))
    elif kind is Kind.LOWBIT:
        out += [(f + 1, r - 1, small), (r, last, full)]
    elif kind is Kind.OFFLOAD:
        out += [(f + 1, d2h_window(problem, c, False)[0], full), (r, last, full)]
    else:
        b = c.bwd_uses[0]
        out += [(f + 1, d2h_window(problem, c, True)[0], small), (r, b - 1, small),
                (b, last, full)]
    return out


def bytes_at(problem: Problem, i: int, dec: Decision, dem: Sequence[int], step: int) -> int:
    return sum(b for lo, hi, b in intervals(problem, i, dec, dem) if lo <= step <= hi)


def simulate(problem: Problem, decisions: Sequence[Decision]) -> Simulation:
    """Memory at every step, the peak and the time costs of `decisions`; raises
    InvalidPlanError when the decisions break a structural rule."""
    n = len(problem.candidates)
    if len(decisions) != n:
        raise InvalidPlanError(f"plan has {len(decisions)} decisions for {n} candidates")
    S = problem.num_steps
    delta = [0] * (S + 1)
    dem_all = demands(problem, decisions)
    rec = cast = lowbit = 0
    d2h: list[tuple[int, int]] = []
    h2d: list[tuple[int, int, int]] = []
    for i, (c, dec) in enumerate(zip(problem.candidates, decisions)):
        dem = dem_all[i]
        _check(problem, i, dec, dem)
        if dec.kind is Kind.RECOMPUTE:
            for j in c.inputs:
                if decisions[j].kind.lowbit:
                    raise InvalidPlanError(
                        f"tensor {c.name!r} (recompute) would read the low-bit copy of "
                        f"{decisions[j].name!r}; a recomputation reads full-precision inputs")
        for lo, hi, nbytes in intervals(problem, i, dec, dem):
            if lo <= hi and nbytes:
                delta[lo] += nbytes
                delta[hi + 1] -= nbytes
        kind = dec.kind
        if kind is Kind.RECOMPUTE:
            rec += c.recompute_us
        if kind.lowbit:
            cast += c.cast_us
            lowbit += 1
        if kind.offloaded:
            lb = kind is Kind.LOWBIT_OFFLOAD
            copy = c.lowbit_copy_us if lb else c.copy_us
            assert c.first_bwd_use is not None and dec.restore_step is not None
            d2h.append((d2h_issue(c, lb), copy))
            h2d.append((c.first_bwd_use, copy, h2d_exposed(problem, c, dec.restore_step, lb)))
    memory = []
    live = problem.other_copies * held_per_copy(problem, decisions, dem_all) \
        if problem.other_copies else 0
    for s in range(S):
        live += delta[s]
        memory.append(problem.fixed_bytes[s] + live)
    peak = max(memory)
    return Simulation(
        memory=tuple(memory), peak_bytes=peak, peak_step=memory.index(peak), recompute_us=rec,
        cast_us=cast, lowbit_count=lowbit,
        exposed_d2h_us=d2h_queue_exposed(problem, d2h),
        exposed_h2d_us=h2d_queue_exposed(problem, h2d))


def canonical(problem: Problem, kinds: Sequence[Kind], prefetch: Sequence[int | None],
              fmt: LowbitFormat | None) -> tuple[Decision, ...]:
    """Decisions from kinds alone: recompute / dequantise at the first demand (the latest valid
    point, best for memory at equal cost), prefetch where `prefetch` says. A non-keep tensor
    that nothing demands becomes KEEP."""
    n = len(problem.candidates)
    dem: list[list[int]] = [list(c.bwd_uses) for c in problem.candidates]
    restore: list[int | None] = [None] * n
    out_kind = list(kinds)
    for i in sorted(range(n), key=lambda j: -problem.candidates[j].produced):
        kind = kinds[i]
        if kind is Kind.KEEP:
            continue
        if not dem[i]:
            out_kind[i] = Kind.KEEP
            continue
        restore[i] = prefetch[i] if kind.offloaded else problem.anchor(min(dem[i]))
        if kind is Kind.RECOMPUTE:
            for j in problem.candidates[i].inputs:
                dem[j].append(restore[i])  # type: ignore[arg-type]
    return tuple(
        Decision(c.name, k, restore[i] if k is not Kind.KEEP else None, fmt if k.lowbit else None)
        for i, (c, k) in enumerate(zip(problem.candidates, out_kind)))


def keep_all(problem: Problem) -> tuple[Decision, ...]:
    """Keep everything the model allows: what its own checkpoint policy marks must-recompute is
    recomputed at its first demand, the rest is kept."""
    if not any(c.must_recompute for c in problem.candidates):
        return tuple(Decision(c.name, Kind.KEEP) for c in problem.candidates)
    kinds = [Kind.RECOMPUTE if c.must_recompute else Kind.KEEP for c in problem.candidates]
    return canonical(problem, kinds, [None] * len(kinds), None)


def baseline_peak(problem: Problem) -> int:
    """The keep-everything peak (what fractional budgets are relative to)."""
    return simulate(problem, keep_all(problem)).peak_bytes


def validate(problem: Problem, plan: Plan) -> Simulation:
    """Simulate `plan` and check that it is structurally valid, within its budget, and that its
    recorded peak and time are the simulated ones. Returns the simulation."""
    if plan.problem_hash != problem.content_hash:
        raise InvalidPlanError("plan was made for a different problem (problem hash differs)")
    sim = simulate(problem, plan.decisions)
    if sim.peak_bytes != plan.peak_bytes or sim.extra_time_us != plan.extra_time_us:
        raise InvalidPlanError(
            f"plan records peak {plan.peak_bytes} B / {plan.extra_time_us} us but simulates to "
            f"{sim.peak_bytes} B / {sim.extra_time_us} us")
    if sim.peak_bytes > plan.budget_bytes:
        raise InvalidPlanError(f"plan peak {sim.peak_bytes} B exceeds its budget "
                               f"{plan.budget_bytes} B (step {sim.peak_step})")
    return sim
