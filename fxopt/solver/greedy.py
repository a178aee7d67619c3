"""A fast greedy planner: the CP-SAT hint, and the fallback when the solver finds nothing."""

from __future__ import annotations

from collections.abc import Sequence

from fxopt.plan import Decision, Kind
from fxopt.solver.errors import InvalidPlanError
from fxopt.solver.options import SolverOptions
from fxopt.solver.problem import Candidate, Problem
from fxopt.solver.validate import (
    Simulation,
    bytes_at,
    canonical,
    d2h_window,
    demands,
    h2d_exposed,
    prefetch_points,
    simulate,
)

# NOTE [Greedy planner]
# Start from keep-everything. While the simulated peak is over budget, look at the peak step and
# change tensors (with the recomputable tensors only recomputations read, when that is what
# recomputing them needs) to the choice with the best (bytes freed at the peak step) / (time it
# costs) ratio, best first until the excess is covered, re-deriving every restore step
# (`canonical`) and re-simulating exactly. Then undo, most expensive first, every change the
# budget does not need. The first pass changes kept tensors only and can fail where CP-SAT
# succeeds. If it fails with offload or low-bit allowed, further passes rank storage choices
# first (for the tensors that cannot be recomputed, then for all) and let a tensor move up
# keep -> low-bit -> offload -> low-bit + offload -> recompute (so they end after at most 4n
# rounds): recomputing a tensor pins its inputs on the device, so recompute-first can leave no
# storage choice for them. Those passes are slower and their plans often costly; the planner
# uses them only as a fallback, never as the CP-SAT hint (CP-SAT stays close to its hint).


# A tensor's choice only moves up this order (keep -> storage -> recompute).
_RANK = {Kind.KEEP: 0, Kind.LOWBIT: 1, Kind.OFFLOAD: 2, Kind.LOWBIT_OFFLOAD: 3, Kind.RECOMPUTE: 4}


def _link_state(problem: Problem, decisions: Sequence[Decision]) -> list[int]:
    """[exposed d2h, copied d2h, exposed h2d, copied h2d] summed over offloaded tensors."""
    state = [0, 0, 0, 0]
    for c, d in zip(problem.candidates, decisions):
        if d.kind.offloaded:
            lb = d.kind is Kind.LOWBIT_OFFLOAD
            copy = c.lowbit_copy_us if lb else c.copy_us
            state[0] += d2h_window(problem, c, lb)[1]
            state[1] += copy
            state[2] += h2d_exposed(problem, c, d.restore_step, lb)  # type: ignore[arg-type]
            state[3] += copy
    return state


def _link_cost(problem: Problem, link: Sequence[int], d2h: int, h2d: int, copy: int) -> int:
    """Increase of the exposed copy time (validate.py NOTE [Copy exposure model]) when one more
    tensor is offloaded."""
    F, S = problem.num_fwd_steps, problem.num_steps
    fwd, bwd = problem.compute_us(0, F - 1), problem.compute_us(F, S - 1)
    e_d, c_d, e_h, c_h = link
    before = max(e_d, c_d - fwd) + max(e_h, c_h - bwd)
    after = max(e_d + d2h, c_d + copy - fwd) + max(e_h + h2d, c_h + copy - bwd)
    return after - before


def _options_for(problem: Problem, i: int, opts: SolverOptions, dem: Sequence[int],
                 link: Sequence[int], read_by_recompute: bool
                 ) -> list[tuple[Kind, int | None, int]]:
    """(kind, prefetch, time cost) for every non-keep choice tensor i may take;
    read_by_recompute: a recomputation reads i, so it may not be low-bit."""
    c = problem.candidates[i]
    out: list[tuple[Kind, int | None, int]] = []
    if not dem:
        return out
    if c.recomputable:
        out.append((Kind.RECOMPUTE, None, c.recompute_us))
    if not c.bwd_uses or min(dem) < problem.anchor(c.bwd_uses[0]):
        return out
    lowbit = c.stores_lowbit(opts.allow_lowbit) and not read_by_recompute
    if lowbit:
        out.append((Kind.LOWBIT, None, c.cast_us + opts.lowbit_penalty_us))
    if opts.allow_offload and c.copy_us > 0:
        kinds = [Kind.OFFLOAD] + ([Kind.LOWBIT_OFFLOAD] if lowbit else [])
        for kind in kinds:
            lb = kind is Kind.LOWBIT_OFFLOAD
            extra = c.cast_us + opts.lowbit_penalty_us if lb else 0
            for q in prefetch_points(problem, c, lb, opts.prefetch_points):
                copy = c.lowbit_copy_us if lb else c.copy_us
                cost = extra + _link_cost(problem, link, d2h_window(problem, c, lb)[1],
                                          h2d_exposed(problem, c, q, lb), copy)
                out.append((kind, q, cost))
    return out


def _ranked_moves(problem: Problem, decisions: Sequence[Decision], kinds: Sequence[Kind],
                  step: int, opts: SolverOptions, storage_first: str, upgrade: bool
                  ) -> list[tuple[tuple[int, float, int], int, dict[int, tuple[Kind, int | None]]]]:
    """(score, bytes freed at `step`, move) for the best further choice of every tensor alive
    at `step`, best first; a move maps tensor -> (kind, prefetch)."""
    dem = demands(problem, decisions)
    link = _link_state(problem, decisions)
    ranked = []
    cands = problem.candidates
    for i, c in enumerate(cands):
        if (kinds[i] is not Kind.KEEP and not upgrade) or kinds[i] is Kind.RECOMPUTE or \
                not dem[i] or not c.produced <= step <= max(dem[i]):
            continue
        before = bytes_at(problem, i, decisions[i], dem[i], step)
        if before == 0:
            continue
        r_first = problem.anchor(min(dem[i]))
        best = None
        now_cost = c.cast_us + opts.lowbit_penalty_us if kinds[i].lowbit else 0
        read = any(kinds[j] is Kind.RECOMPUTE for j in problem.consumers[i])
        for kind, q, cost in _options_for(problem, i, opts, dem[i], link, read):
            if _RANK[kind] <= _RANK[kinds[i]]:
                continue  # only ever move up the ranks, so the greedy ends
            cost = max(cost - now_cost, 0)
            r = q if kind.offloaded and q is not None else r_first
            dec = Decision(c.name, kind, r, opts.allow_lowbit if kind.lowbit else None)
            gain = before - bytes_at(problem, i, dec, dem[i], step)
            move = {i: (kind, q)}
            if kind is Kind.RECOMPUTE:
                for j in c.inputs:  # inputs are now also read at r
                    dj = decisions[j]
                    if dj.kind is not Kind.KEEP and dj.restore_step is not None and \
                            dj.restore_step > r and not dj.kind.offloaded:
                        dj = Decision(dj.name, dj.kind, r, dj.fmt)
                    # a kept input nothing else needs in backward: recompute it too if possible
                    if dj.kind is Kind.KEEP and not cands[j].bwd_uses and cands[j].recomputable \
                            and kinds[j] is Kind.KEEP:
                        move[j] = (Kind.RECOMPUTE, None)
                        cost += cands[j].recompute_us
                        dj = Decision(dj.name, Kind.RECOMPUTE, r)
                    elif dj.kind.lowbit or (
                            dj.kind.offloaded and r < problem.anchor(cands[j].bwd_uses[0])):
                        gain = -1  # nor early offloaded or low-bit inputs (validate.py)
                        break
                    gain -= bytes_at(problem, j, dj, [*dem[j], r], step) - \
                        bytes_at(problem, j, decisions[j], dem[j], step)
            if gain <= 0:
                continue
            tier = 0
            if storage_first == "unrecomputable":  # storage for what has no other choice
                tier = int(not c.recomputable)
            elif storage_first == "all":
                tier = int(kind is not Kind.RECOMPUTE)
            score = (tier, gain / (cost + 1), -i)
            if best is None or score > best[0]:
                best = (score, gain, move)
        if best is not None:
            ranked.append(best)
    ranked.sort(key=lambda t: t[0], reverse=True)
    return ranked


def greedy(problem: Problem, budget: int, opts: SolverOptions, best_effort: bool = False,
           storage_pass: bool = True) -> tuple[tuple[Decision, ...], Simulation] | None:
    """Decisions whose simulated peak is within `budget`, or None if the greedy gets stuck;
    with best_effort, the lowest-peak decisions it reached instead of None. With offload or
    low-bit allowed, when the first pass fails it also tries storage choices first."""
    runs = [_greedy(problem, budget, opts, best_effort, "")]
    if storage_pass and (opts.allow_offload or opts.allow_lowbit):
        for order in ("unrecomputable", "all"):
            if best_effort or all(r is None for r in runs):
                runs.append(_greedy(problem, budget, opts, best_effort, order))
    found = [r for r in runs if r is not None]
    if not found:
        return None
    pen = opts.lowbit_penalty_us
    if best_effort:
        return min(found, key=lambda r: (r[1].peak_bytes, r[1].objective(pen)))
    return min(found, key=lambda r: r[1].objective(pen))


def _greedy(problem: Problem, budget: int, opts: SolverOptions, best_effort: bool,
            storage_first: str) -> tuple[tuple[Decision, ...], Simulation] | None:
    n = len(problem.candidates)
    fmt = opts.allow_lowbit
    kinds = [Kind.RECOMPUTE if c.must_recompute else Kind.KEEP for c in problem.candidates]
    pref: list[int | None] = [None] * n
    decisions = canonical(problem, kinds, pref, fmt)
    sim = simulate(problem, decisions)
    lowest = (decisions, sim)
    while sim.peak_bytes > budget:
        ranked = _ranked_moves(problem, decisions, kinds, sim.peak_step, opts, storage_first,
                               upgrade=bool(storage_first))
        if not ranked:
            return lowest if best_effort else None
        # Apply the best moves on disjoint tensors until they free the excess at the peak step
        # (always at least one); the simulation below is the judge.
        excess, freed, offloads = sim.peak_bytes - budget, 0, 0
        touched: set[int] = set()
        for _, gain, move in ranked:
            if freed >= excess:
                break
            reach = set(move) | {j for i in move for j in problem.candidates[i].inputs}
            n_off = sum(k.offloaded for k, _ in move.values())
            if touched & reach or (n_off and offloads):
                continue  # one offload per round: its cost depends on the others (one link)
            offloads += n_off
            touched |= reach
            freed += gain
            for i, (kind, q) in move.items():
                kinds[i], pref[i] = kind, q
        decisions = canonical(problem, kinds, pref, fmt)
        try:
            sim = simulate(problem, decisions)
        except InvalidPlanError:
            return lowest if best_effort else None
        if sim.peak_bytes < lowest[1].peak_bytes:
            lowest = (decisions, sim)
    # Undo what the budget does not need, most expensive first.
    order = sorted((i for i in range(n) if kinds[i] is not Kind.KEEP
                    and not problem.candidates[i].must_recompute),
                   key=lambda i: (-_cost(problem.candidates[i], decisions[i], opts), i))
    for i in order:
        if decisions[i].kind is Kind.KEEP:  # became undemanded by an earlier undo
            kinds[i], pref[i] = Kind.KEEP, None
            continue
        # Reverting i adds at most its bytes between its last forward use and its restore
        # step (its inputs only lose a demand): skip the simulation when that cannot fit.
        added = _revert_added(problem, i, decisions[i], sim.memory)
        if added > budget:
            continue
        old = kinds[i], pref[i]
        kinds[i], pref[i] = Kind.KEEP, None
        trial = canonical(problem, kinds, pref, fmt)
        try:
            trial_sim: Simulation | None = simulate(problem, trial)
        except InvalidPlanError:
            trial_sim = None
        pen = opts.lowbit_penalty_us
        if trial_sim is not None and trial_sim.peak_bytes <= budget and \
                trial_sim.objective(pen) <= sim.objective(pen):
            decisions, sim = trial, trial_sim
        else:
            kinds[i], pref[i] = old
    return decisions, sim


def _cost(c: Candidate, d: Decision, opts: SolverOptions) -> int:
    if d.kind is Kind.RECOMPUTE:
        return c.recompute_us
    if d.kind.lowbit:
        return c.cast_us + opts.lowbit_penalty_us + (c.lowbit_copy_us if d.kind.offloaded else 0)
    return c.copy_us if d.kind.offloaded else 0


def _revert_added(problem: Problem, i: int, d: Decision, memory: Sequence[int]) -> int:
    """Highest memory over the steps where keeping tensor i would add its bytes."""
    c = problem.candidates[i]
    r = d.restore_step
    assert r is not None
    lo, hi = c.last_fwd_use + 1, r - 1
    if d.kind is Kind.LOWBIT_OFFLOAD and c.bwd_uses:
        hi = c.bwd_uses[0] - 1
    if hi < lo:
        return max(memory)
    return max(memory[lo:hi + 1]) + c.bytes
