"""Searches that use repeated blocks (blocks.py): a block-shared start and block-wise large
neighbourhoods around the incumbent, both on the CP-SAT model itself."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fxopt.plan import Decision, Kind
from fxopt.solver.blocks import Blocks
from fxopt.solver.cpsat import Model
from fxopt.solver.lazy import solve_lazy
from fxopt.solver.options import SolverOptions
from fxopt.solver.problem import Problem
from fxopt.solver.validate import Simulation

# NOTE [Block search]
# Where the greedy planner finds no plan (tight budgets), the full search starts from keep-
# everything and spends its work finding any plan. Two searches on the same model, with the
# blocks' structure, give it a good one first:
# 1. The tied start: corresponding choices of neighbouring blocks are made equal, which leaves
#    CP-SAT the choices of one block plus those of the untied ones, so its search grows with
#    the block, not with the depth. Layers are not symmetric for the peak (the last ones'
#    tensors are freed first in the backward), so the last FREE_TAIL blocks stay untied. A
#    choice one block has and its neighbour lacks (restore points are cut at the model's
#    edges, NOTE [CP-SAT model] in cpsat.py) is off.
# 2. Large neighbourhoods, with at least LNS_MIN_BLOCKS blocks: every candidate outside a
#    window of WINDOW consecutive blocks is fixed to the incumbent's choice, CP-SAT re-solves
#    the window (WINDOW_WORK each), windows slide from the last blocks to the first by half a
#    window, and sweeps repeat until one improves nothing or LNS_SHARE of the work is spent.
#    With fewer blocks the full model is small enough for CP-SAT to move on its own. With
#    deterministic=False the clock is the limit: the tied start gets BLOCK_SHARE of it and
#    there are no windows.
# Both are restrictions of the model: their plans are simulated exactly like every other
# (lazy.py), never a bound. The full search then starts from the best of them, with most of
# the work left (1 - IMPROVE_AFTER_BLOCKS of it) raising the bound, which is the proof.
# Measured on the meta-device GPT of benchmarks/bench_planner.py (fp8) at the budgets where
# the greedy planner finds none (work limit 3.9 for 12 layers, 15.1 for 48, 30.1 for 96):
#   12 layers, 0.4 of keep-everything: the full search alone spent 3.8 units on a plan within
#     0.08% of its bound; from the tied start 0.7 (the same 11758 us).
#   12 layers, smallest feasible budget: 16919 us 1.08% from the bound -> the same plan 0.93%
#     from it (with windows of 3 blocks 16911 us, 0.95%, for 3 s more of 10 on 2 shared
#     cores: hence LNS_MIN_BLOCKS).
#   48 layers, smallest feasible budget: the full search found no plan (the answer was the
#     lowest-peak plan, 91504 us); the tied start alone found 71878 us (optimal over the tied
#     model) and the full search from it nothing better in 12.9 more units; the windows took
#     it to 67282 us, 0.10% from the full model's bound.
#   96 layers, smallest feasible budget: the lowest-peak plan, 183328 us, no bound -> 136520
#     us, 1.44% from the bound (work 30.1).
# Untying the last 0, 1, 2 or 3 of 12 blocks gave 20001, 19575, 17381 and 16919 us at the
# smallest feasible budget; 6 of 48 untied found no plan within the tied start's work. Where
# the greedy planner finds a plan, the tied start did not pay: at 0.6 and 0.5 of 48 layers it
# found nothing better, at 0.8 the full search from it failed to prove the optimum it proved
# from the greedy plan, and windows from the greedy plan at 0.6 found nothing in 5.3 units
# (15822 us; the full search alone reaches 15801). The full search's bound wants the work:
# with 0.75 of the rest spent improving (the default) the 48-layer bound above was 54914 us,
# 19% below the plan. Cloning one built model per window instead of building it again gave
# the same plans and saved nothing measurable (53.3 against 53.6 s at 48 layers): CP-SAT's
# own time is most of it.
FREE_TAIL = 3
BLOCK_SHARE = 0.15  # of the solve's work, at most; the tied model usually proves its optimum
WINDOW = 6  # blocks per neighbourhood
LNS_MIN_BLOCKS = 4 * WINDOW
WINDOW_WORK = 0.6  # per neighbourhood (the subproblem's size does not grow with the depth)
LNS_SHARE = 0.35
IMPROVE_AFTER_BLOCKS = 0.25  # of the rest, for the full search; its bound needs the work

Found = tuple[tuple[Decision, ...], Simulation]


def tie(blocks: Blocks, free_tail: int = FREE_TAIL) -> Callable[[Model], None]:
    """Constraints making block k's choices those of block k-1, shifted by the blocks'
    backward shift, for every block but the last `free_tail` (NOTE [Block search])."""

    def restrict(mdl: Model) -> None:
        m = mdl.model
        for k in range(1, blocks.count - free_tail):
            for a, b in zip(blocks.members[k - 1], blocks.members[k]):
                if a in blocks.odd or b in blocks.odd:
                    continue
                m.add(mdl.keep[a] == mdl.keep[b])
                prev = {(kind, pt): v for kind, pt, v in mdl.choices[a]}
                this = {(kind, pt - blocks.bwd_shift): v for kind, pt, v in mdl.choices[b]}
                for key in sorted(prev.keys() | this.keys(), key=lambda t: (t[0].value, t[1])):
                    if key in prev and key in this:
                        m.add(prev[key] == this[key])
                    else:
                        m.add((prev[key] if key in prev else this[key]) == 0)

    return restrict


def fix_outside(decisions: Sequence[Decision], free: set[int]) -> Callable[[Model], None]:
    """Constraints fixing every candidate not in `free` to its choice in `decisions` (one the
    model lacks, such as a greedy plan's restore step outside its points, stays free)."""

    def restrict(mdl: Model) -> None:
        for i, d in enumerate(decisions):
            if i in free:
                continue
            if d.kind is Kind.KEEP:
                mdl.model.add(mdl.keep[i] == 1)
                continue
            for kind, k, v in mdl.choices[i]:
                if kind is d.kind and k == d.restore_step:
                    mdl.model.add(v == 1)

    return restrict


def windows(blocks: Blocks) -> list[set[int]]:
    """The neighbourhoods of one sweep, last blocks first (NOTE [Block search])."""
    width = min(WINDOW, blocks.count)
    stride = max(1, (width + 1) // 2)
    firsts = list(range(blocks.count - width, 0, -stride)) + [0]
    return [{i for k in range(f, f + width) for i in blocks.members[k]} for f in firsts]


def block_plan(problem: Problem, opts: SolverOptions, budget: int, blocks: Blocks,
               starts: Sequence[tuple[Decision, ...]], work: float, deadline: float
               ) -> tuple[Found | None, float]:
    """(the best plan of the tied start and the neighbourhoods around it, the work they spent)
    within `work` (NOTE [Block search])."""
    if not opts.deterministic:  # the clock is the limit: the tied start gets its share of it
        now = time.monotonic()
        deadline = now + BLOCK_SHARE * (deadline - now)
    tied = solve_lazy(problem, opts, budget, starts, BLOCK_SHARE * work, deadline,
                      restrict=tie(blocks), improve_share=1.0)
    best, spent = tied.best, tied.work
    if best is None or blocks.count < LNS_MIN_BLOCKS or not opts.deterministic:
        return best, spent
    pen = opts.lowbit_penalty_us
    limit = (BLOCK_SHARE + LNS_SHARE) * work
    improved = True
    while improved:
        improved = False
        for free in windows(blocks):
            if spent >= limit * (1 - 1e-6):
                return best, spent
            res = solve_lazy(problem, opts, budget, [best[0]], min(WINDOW_WORK, limit - spent),
                             deadline, restrict=fix_outside(best[0], free), improve_share=1.0)
            spent += res.work
            if res.best is not None and res.best[1].objective(pen) < best[1].objective(pen):
                best, improved = res.best, True
    return best, spent
