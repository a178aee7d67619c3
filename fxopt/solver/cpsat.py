"""The CP-SAT model of the decision problem, with lazily added memory constraints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from fxopt.plan import Choices, Decision, Kind
from fxopt.solver.options import SolverOptions
from fxopt.solver.problem import Problem, byte_unit
from fxopt.solver.validate import (
    d2h_issue,
    d2h_window,
    demands,
    h2d_exposed,
    prefetch_points,
    simulate,
)

# NOTE [CP-SAT model]
# Per candidate i, one boolean per choice, exactly one true: keep_i, rec[i,k] / lb[i,k] for each
# restore point k in P_i, off[i,q] / lbo[i,q] for each prefetch point q. P_i holds i's first
# backward use, the restore points of its recomputable consumers (a recomputation reads i at
# its own restore point) and the last own backward uses of i's inputs (recomputing no later than
# that does not stretch an input's life), all no later than i's first demand; the latest
# `max_restore_points` of them are kept, which bounds recompute chains. Added to those: the
# `restore_window` steps just before the latest point (a restore point can pay off just before
# or after a step with a large fixed part). With both limits at least the number of backward
# steps, every restore step validate.py accepts is in the model, so its optimum is exact; the
# tests check that against brute force.
# z[i,j] = "i is still demanded at its j-th extension point", for consumer restore points beyond
# i's last own backward use (for a tensor only recomputations read: all of them), monotone in j.
# With Z_i(s) = 1 up to the last own use, else z at the first extension point >= s, the bytes of
# i alive at a backward step s are exactly (validate.py is the spec)
#     full * (Z_i(s) - [restore point of i > s]) + lowbit bytes while quantised,
# because a non-keep tensor's restore point never lies after its last demand, so at most one of
# the two indicators is 0. Constraints: a recomputation at k needs each input kept, restored at
# a point <= k, or offloaded with k >= its first own use (availability); z >= the consumer
# choices that demand it; a support tensor's own restore point lies inside its demanded range.
# Memory rows sum these expressions at a step; they are added lazily (solve_lazy). With other
# copies of the graph in flight (NOTE [Copies in flight] in validate.py) every row also carries
# other_copies * (what one run holds across the boundary): keep_i * full for a tensor with own
# backward uses, lb * low-bit bytes, and for a support tensor kept and demanded
# z_first - (its non-keep choices), since its non-keep choices imply z_first.

# CP-SAT's linear relaxation: 2 puts every constraint and its cuts into the LP (NOTE [Search]).
LINEARIZATION_LEVEL = 2


@dataclass
class Model:
    problem: Problem
    opts: SolverOptions
    model: cp_model.CpModel
    unit: int
    keep: list[cp_model.IntVar]
    # per candidate: list of (kind, point, var)
    choices: list[list[tuple[Kind, int, cp_model.IntVar]]]
    ext: list[list[tuple[int, cp_model.IntVar]]]  # per candidate: (extension point, z var)
    last_own: list[int]
    objective_terms: list[tuple[cp_model.IntVar, int]] = field(default_factory=list)
    # copy queues (NOTE [Copy queues]): per direction, the cumulative copy time variables by
    # step and, for each, the (choice variable, µs) terms it adds; and the exposed-time
    # variables (device->host, host->device)
    queues: list[list[tuple[cp_model.IntVar, list[tuple[cp_model.IntVar, int]]]]] = field(
        default_factory=list)
    exposed: list[cp_model.IntVar] = field(default_factory=list)
    rows: set[int] = field(default_factory=set)


def restore_points(problem: Problem, opts: SolverOptions) -> list[tuple[int, ...]]:
    """P_i for every candidate (see NOTE [CP-SAT model])."""
    n = len(problem.candidates)
    pts: list[tuple[int, ...]] = [()] * n
    for i in sorted(range(n), key=lambda j: -problem.candidates[j].produced):
        c = problem.candidates[i]
        got: set[int] = set()
        for j in problem.consumers[i]:
            if problem.candidates[j].recomputable:
                got.update(pts[j])
        hi = problem.anchor(c.bwd_uses[0]) if c.bwd_uses else max(got, default=-1)
        # recomputing before an input's last own use keeps that input from living longer
        got |= {problem.anchor(problem.candidates[j].bwd_uses[-1]) for j in c.inputs
                if problem.candidates[j].bwd_uses}
        got = {k for k in got if problem.num_fwd_steps <= k <= hi}
        if c.bwd_uses:
            got.add(hi)
        window = {problem.anchor(k) for k in range(max(problem.num_fwd_steps,
                                                       hi - opts.restore_window), hi + 1)} \
            if got else set()
        pts[i] = tuple(sorted(set(sorted(got)[-opts.max_restore_points:]) | window))
    return pts


def choice_set(problem: Problem, opts: SolverOptions) -> Choices:
    """FULL when the model offers every restore and prefetch step validate.py accepts, else
    RESTRICTED (see fxopt.plan.Choices)."""
    everything = SolverOptions(max_restore_points=problem.num_steps,
                               restore_window=problem.num_steps)
    if restore_points(problem, opts) != restore_points(problem, everything):
        return Choices.RESTRICTED
    if opts.allow_offload:
        F = problem.num_fwd_steps
        for c in problem.candidates:
            if c.bwd_uses and c.copy_us > 0:
                steps = {problem.anchor(s) for s in range(F, c.bwd_uses[0] + 1)}
                kinds = [False] + ([True] if c.stores_lowbit(opts.allow_lowbit) else [])
                if any(set(prefetch_points(problem, c, lb, opts.prefetch_points)) != steps
                       for lb in kinds):
                    return Choices.RESTRICTED
    return Choices.FULL


def build(problem: Problem, opts: SolverOptions, exact_bytes: bool = False) -> Model:
    """The model without memory rows; exact_bytes counts bytes in unit 1 (the min-peak model,
    whose rows compare against a peak variable)."""
    m = cp_model.CpModel()
    pts = restore_points(problem, opts)
    F = problem.num_fwd_steps
    unit = 1 if exact_bytes else byte_unit(problem)
    mdl = Model(problem, opts, m, unit, [], [], [], [])
    obj = mdl.objective_terms
    d2h: dict[int, list[tuple[cp_model.IntVar, int]]] = {}  # issue step -> (var, µs)
    h2d: dict[int, list[tuple[cp_model.IntVar, int]]] = {}  # first use -> (var, µs)
    h2d_own: list[tuple[cp_model.IntVar, int]] = []  # (var, exposure of its own window)
    for i, c in enumerate(problem.candidates):
        keep = m.new_bool_var(f"keep{i}")
        ch: list[tuple[Kind, int, cp_model.IntVar]] = []
        if c.recomputable:
            for k in pts[i]:
                v = m.new_bool_var(f"rec{i}_{k}")
                ch.append((Kind.RECOMPUTE, k, v))
                obj.append((v, c.recompute_us))
        if c.bwd_uses and c.stores_lowbit(opts.allow_lowbit):
            for k in pts[i]:
                v = m.new_bool_var(f"lb{i}_{k}")
                ch.append((Kind.LOWBIT, k, v))
                obj.append((v, c.cast_us + opts.lowbit_penalty_us))
        if c.bwd_uses and opts.allow_offload and c.copy_us > 0:
            kinds = [Kind.OFFLOAD]
            if c.stores_lowbit(opts.allow_lowbit):
                kinds.append(Kind.LOWBIT_OFFLOAD)
            for kind in kinds:
                lb = kind is Kind.LOWBIT_OFFLOAD
                copy = c.lowbit_copy_us if lb else c.copy_us
                assert c.first_bwd_use is not None
                for q in prefetch_points(problem, c, lb, opts.prefetch_points):
                    v = m.new_bool_var(f"{kind.value}{i}_{q}")
                    ch.append((kind, q, v))
                    if lb:
                        obj.append((v, c.cast_us + opts.lowbit_penalty_us))
                    d2h.setdefault(d2h_issue(c, lb), []).append((v, copy))
                    h2d.setdefault(c.first_bwd_use, []).append((v, copy))
                    h2d_own.append((v, h2d_exposed(problem, c, q, lb)))
        if c.must_recompute and pts[i]:  # the model's checkpoint policy: nothing else
            for kind, _, v in ch:
                if kind is not Kind.RECOMPUTE:
                    m.add(v == 0)
            m.add(keep == 0)
        m.add_exactly_one([keep] + [v for _, _, v in ch])
        mdl.keep.append(keep)
        mdl.choices.append(ch)
        mdl.last_own.append(c.bwd_uses[-1] if c.bwd_uses else -1)
    # extension points and availability
    for i, c in enumerate(problem.candidates):
        demand_pts = sorted({k for j in problem.consumers[i] for kind, k, _ in mdl.choices[j]
                             if kind is Kind.RECOMPUTE})
        ext = [(k, m.new_bool_var(f"z{i}_{k}")) for k in demand_pts if k > mdl.last_own[i]]
        for (_, a), (_, b) in zip(ext, ext[1:]):
            m.add_implication(b, a)
        mdl.ext.append(ext)
        ext_of = dict(ext)
        b_own = problem.anchor(c.bwd_uses[0]) if c.bwd_uses else None
        for j in problem.consumers[i]:
            for kind, k, v in mdl.choices[j]:
                if kind is not Kind.RECOMPUTE:
                    continue
                avail = [mdl.keep[i]] + [w for kd, kk, w in mdl.choices[i] if not kd.lowbit and (
                    (not kd.offloaded and kk <= k)
                    or (kd.offloaded and b_own is not None and k >= b_own))]
                m.add_bool_or(avail).only_enforce_if(v)
                if k > mdl.last_own[i]:
                    m.add_implication(v, ext_of[k])
        if not c.bwd_uses:  # a support tensor restores inside its demanded range
            for kind, k, v in mdl.choices[i]:
                m.add_implication(v, next(z for kk, z in ext if kk >= k))
    # the copy queues (NOTE [Copy queues]), one exposed-time variable per direction
    if d2h:
        x = m.new_int_var(0, sum(us for ts in d2h.values() for _, us in ts), "exposed_d2h")
        for total, step in zip(_cumulative(mdl, d2h, reverse=True), sorted(d2h, reverse=True)):
            m.add(x >= total - problem.compute_us(step, F - 1))
        hi = sum(us for ts in h2d.values() for _, us in ts) + sum(e for _, e in h2d_own)
        y = m.new_int_var(0, hi, "exposed_h2d")
        m.add(y >= _wsum(h2d_own))
        for total, step in zip(_cumulative(mdl, h2d, reverse=False), sorted(h2d)):
            m.add(y >= total - problem.compute_us(F, step - 1))
        obj += [(x, 1), (y, 1)]
        mdl.exposed += [x, y]
    m.minimize(_wsum(obj))
    return mdl


def _cumulative(mdl: Model, by_step: dict[int, list[tuple[cp_model.IntVar, int]]],
                reverse: bool) -> list[cp_model.IntVar]:
    """Copy time issued at or after each step (reverse) or read at or before it, as a chain
    of variables, one per step in that order (NOTE [Copy queues])."""
    m = mdl.model
    top = sum(us for ts in by_step.values() for _, us in ts)
    out: list[cp_model.IntVar] = []
    queue: list[tuple[cp_model.IntVar, list[tuple[cp_model.IntVar, int]]]] = []
    for step in sorted(by_step, reverse=reverse):
        total = m.new_int_var(0, top, f"copies_{'after' if reverse else 'by'}_{step}")
        terms = by_step[step]
        added = cp_model.LinearExpr.weighted_sum([v for v, _ in terms], [us for _, us in terms])
        m.add(total == (added + out[-1] if out else added))
        out.append(total)
        queue.append((total, by_step[step]))
    mdl.queues.append(queue)
    return out


def _wsum(terms: Iterable[tuple[cp_model.IntVar, int]]) -> cp_model.LinearExprT:
    pairs = [(v, w) for v, w in terms if w]
    return cp_model.LinearExpr.weighted_sum([v for v, _ in pairs], [w for _, w in pairs])


def add_rows(mdl: Model, budget: int | cp_model.IntVar, steps: Iterable[int]) -> None:
    """Add `memory at s <= budget` for each new step s (in bytes / mdl.unit; a variable budget
    needs unit 1)."""
    p, u = mdl.problem, mdl.unit
    F = p.num_fwd_steps
    for s in sorted(set(steps) - mdl.rows):
        mdl.rows.add(s)
        const = p.fixed_bytes[s]
        coef: dict[cp_model.IntVar, int] = {}

        def put(v: cp_model.IntVar, w: int) -> None:
            coef[v] = coef.get(v, 0) + w

        for i, c in enumerate(p.candidates):
            if s < c.produced:
                continue
            if s <= c.last_fwd_use:
                const += c.bytes
                continue
            full, small = c.bytes // u, c.lowbit_bytes // u
            ch = mdl.choices[i]
            # Z_i(s) as (constant, var or None)
            if s <= mdl.last_own[i]:
                z_const, z_var = 1, None
            else:
                nxt = [v for k, v in mdl.ext[i] if k >= s]
                z_const, z_var = 0, (nxt[0] if nxt else None)
            if z_const == 0 and z_var is None:
                continue
            if s < F:  # forward tail: kept (and demanded) or still being copied out
                for kind, q, v in ch:
                    if kind is Kind.LOWBIT:
                        put(v, small)
                    elif kind is Kind.OFFLOAD and s <= d2h_window(p, c, False)[0]:
                        put(v, full)
                    elif kind is Kind.LOWBIT_OFFLOAD and s <= d2h_window(p, c, True)[0]:
                        put(v, small)
                    elif kind is Kind.RECOMPUTE and z_var is not None:
                        put(v, -full)
                if z_var is None:
                    put(mdl.keep[i], full)
                else:
                    put(z_var, full)
                continue
            if z_var is None:
                const += c.bytes
            else:
                put(z_var, full)
            b = c.bwd_uses[0] if c.bwd_uses else None
            for kind, k, v in ch:
                if kind is Kind.LOWBIT_OFFLOAD:
                    if b is not None and s < b:
                        put(v, -full + (small if k <= s else 0))
                elif k > s:
                    put(v, -full + (small if kind is Kind.LOWBIT else 0))
        if p.other_copies:
            for v, w in held_terms(mdl):
                put(v, p.other_copies * w)
        expr = _wsum(coef.items())
        if isinstance(budget, int):
            mdl.model.add(expr <= (budget - const) // u)  # exact: u divides every coefficient
        else:
            assert u == 1
            mdl.model.add(expr + const <= budget)


def held_terms(mdl: Model) -> list[tuple[cp_model.IntVar, int]]:
    """What one run holds across the boundary, as (var, bytes / unit) terms."""
    out: list[tuple[cp_model.IntVar, int]] = []
    u = mdl.unit
    for i, c in enumerate(mdl.problem.candidates):
        full, small = c.bytes // u, c.lowbit_bytes // u
        if c.bwd_uses:
            out.append((mdl.keep[i], full))
            out += [(v, small) for kind, _, v in mdl.choices[i] if kind is Kind.LOWBIT]
        elif mdl.ext[i]:
            out.append((mdl.ext[i][0][1], full))
            out += [(v, -full) for _, _, v in mdl.choices[i]]
    return out


def decode(mdl: Model, solver: cp_model.CpSolver | cp_model.CpSolverSolutionCallback
           ) -> tuple[Decision, ...]:
    """Decisions from a solution (a finished solver or a solution callback)."""
    p = mdl.problem
    fmt = mdl.opts.allow_lowbit
    out: list[Decision] = []
    for i, c in enumerate(p.candidates):
        d = Decision(c.name, Kind.KEEP)
        for kind, k, v in mdl.choices[i]:
            if solver.boolean_value(v):
                d = Decision(c.name, kind, k, fmt if kind.lowbit else None)
        out.append(d)
    return _drop_undemanded(p, out)


def _drop_undemanded(p: Problem, decs: list[Decision]) -> tuple[Decision, ...]:
    """A non-keep choice nothing demands (possible in the model, useless) becomes KEEP."""
    changed = True
    while changed:
        changed = False
        dem = [bool(c.bwd_uses) for c in p.candidates]
        for c, d in zip(p.candidates, decs):
            if d.kind is Kind.RECOMPUTE:
                for j in c.inputs:
                    dem[j] = True
        for i, d in enumerate(decs):
            if d.kind is not Kind.KEEP and not dem[i]:
                decs[i] = Decision(d.name, Kind.KEEP)
                changed = True
    return tuple(decs)


def hint(mdl: Model, decisions: Sequence[Decision],
         peak: tuple[cp_model.IntVar, int] | None = None) -> None:
    """Hints every variable with `decisions` (and the peak variable with its value), so that
    CP-SAT starts from that plan: a partial hint it must complete, which on large models it
    may fail to do within its budget for that, would let it start from a worse one."""
    mdl.model.clear_hints()
    value: dict[cp_model.IntVar, bool] = {}
    for i, d in enumerate(decisions):
        mdl.model.add_hint(mdl.keep[i], d.kind is Kind.KEEP)
        for kind, k, v in mdl.choices[i]:
            value[v] = kind is d.kind and k == d.restore_step
            mdl.model.add_hint(v, value[v])
    last = [max(dem, default=-1) for dem in demands(mdl.problem, decisions)]
    for i, ext in enumerate(mdl.ext):
        for k, z in ext:  # still demanded at k: some recomputation reads i at or after k
            mdl.model.add_hint(z, last[i] >= k)
    for queue in mdl.queues:
        total = 0
        for var, terms in queue:
            total += sum(us for v, us in terms if value[v])
            mdl.model.add_hint(var, total)
    if mdl.exposed:
        sim = simulate(mdl.problem, decisions)
        for var, val in zip(mdl.exposed, (sim.exposed_d2h_us, sim.exposed_h2d_us)):
            mdl.model.add_hint(var, val)
    if peak is not None:
        mdl.model.add_hint(*peak)


def parameters(opts: SolverOptions, wall_s: float, work: float | None,
               relative_gap: float | None = None) -> cp_model.CpSolver:
    """A solver that stops after `work` deterministic seconds (None: on the wall clock only),
    with the wall clock at `wall_s` as the safety net, or within `relative_gap` (default:
    opts.relative_gap) of its bound."""
    # NOTE [Determinism]
    # CP-SAT's answer depends only on the model and parameters when (a) the search is one
    # worker, or several with interleave_search (subsolver tasks run in fixed batches) and
    # (b) it stops on a deterministic-time limit, the gap limit or optimality, never on the
    # wall clock. opts.deterministic sets both and keeps the wall limit only as a safety net; a
    # run that hits it raises SearchTimeoutError (lazy.py). The rest of the pipeline (greedy,
    # lazy rounds that stop at the first solution breaking a missing row, the best-plan
    # callback) is deterministic given the solver's answers. Measured on 2 shared cores,
    # interleaved search with 2 workers was 5-10x slower than one worker on the synthetic GPT,
    # hence the default workers=1. deterministic=False with 2 workers (the default portfolio
    # with LNS) finds much better plans on hard offload / low-bit instances but may differ
    # from run to run: then plan on one rank and broadcast the Plan (it is JSON).
    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.num_workers = opts.workers
    prm.random_seed = opts.seed
    prm.max_time_in_seconds = max(wall_s, 0.01)
    prm.relative_gap_limit = opts.relative_gap if relative_gap is None else relative_gap
    prm.linearization_level = LINEARIZATION_LEVEL
    if opts.deterministic:
        prm.interleave_search = opts.workers > 1
        if work is not None:
            prm.max_deterministic_time = max(work, 0.001)
    return solver
