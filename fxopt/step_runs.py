"""The step's peak, run by run, on plain data: what one planned graph holds (`GraphUse`), how
the rest of the step bears on its plan (`Coupling`), and the peak of a step of such graphs
(NOTE [The step's runs]). `fxopt.step.Step` keeps the graphs of one compile and shares the
budget with these (NOTE [Step budgets] in fxopt/step.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Coupling:
    """How the rest of the step bears on one graph's plan (see NOTE [Step budgets])."""

    held_before: int = 0  # saved bytes of the graphs before it, alive while it runs
    later_need: int = 0  # what the graphs after it add on top of its forward/backward boundary
    grads_after: int = 0  # gradients the graphs after it returned, alive during its backward
    copies: int = 1  # its own runs in flight at once (the others hold its saved tensors)
    inputs: int = 0  # its inputs, the previous run's outputs, live during its forward


@dataclass(frozen=True)
class GraphUse:
    """What one planned graph holds, as the step sees it (its own peaks are above its
    parameters and inputs)."""

    held_bytes: int  # saved tensors on the device from its forward to its backward
    fwd_peak_bytes: int  # its own peak during its forward
    bwd_peak_bytes: int  # its own peak during its backward
    boundary_bytes: int  # its own live bytes at its last forward step
    grad_bytes: int = 0  # the gradients its backward returns, alive to the end of the step
    copies: int = 1  # runs in flight at once: each holds `held_bytes` until its backward

    @property
    def peak_bytes(self) -> int:
        return max(self.fwd_peak_bytes, self.bwd_peak_bytes)


@dataclass(frozen=True)
class Outside:
    """Memory that no graph plans (eager code between and after the graphs), per run of the
    step in forward order (NOTE [Memory outside the graphs] in fxopt/outside.py)."""

    forward: tuple[int, ...] = ()  # alive during run t's forward, beside its inputs
    after: tuple[int, ...] = ()  # the most after its forward until the next run, beside its
    # boundary
    backward: tuple[int, ...] = ()  # the most from the backward after it to its own end,
    # beside the gradients of the runs after it
    before: int = 0  # the most before the first run
    end: int = 0  # the most after the last backward, beside every gradient

    def of_runs(self, kept: Sequence[int]) -> Outside:
        """Only the runs at positions `kept`."""
        pick = lambda xs: tuple(xs[t] for t in kept)  # noqa: E731
        return Outside(pick(self.forward), pick(self.after), pick(self.backward),
                       self.before, self.end)


# NOTE [The step's runs]
# The step runs its training graphs' forwards in an order (`runs`: indices into the graphs'
# uses, one per run) and their backwards in reverse. Blocks that share one compiled graph
# interleave with the others (neuraloperator's FNO: lifting, then per layer its 5 graphs,
# then the projection), so the step counts runs, not graphs, once it has seen the order;
# before that, each graph's `copies` runs follow each other in compile order. While run t
# runs, the runs before it hold their saved tensors (H_t), and the gradients the runs after
# it returned (G_t) are alive during its backward. A graph's own peaks leave out its inputs:
# the previous run's outputs (its boundary less its saved bytes) are live during run t's
# forward (I_t), and after that they are saved tensors of run t or freed, not carried to the
# end of the step. The step's peak is the largest over runs of
# H_t + max(I_t + forward peak, boundary, backward peak + G_t). Memory outside the graphs,
# where explain's fake step measured it (`Outside`), adds to each term: during the forward,
# after it (on the boundary), during the backward; and before the first run and after the last
# backward (beside every gradient) on its own.
def runs_of(uses: Sequence[GraphUse], order: Sequence[int] | None = None) -> list[int]:
    """The step's training runs in forward order, as indices into `uses` (NOTE [The step's
    runs]): `order` as the step ran them, or each graph's `copies` in turn; a graph absent from
    `order` (one more graph after the last, the memory outside the graphs) runs after it."""
    runs = list(order) if order is not None else []
    seen = set(runs)
    runs += [i for i, u in enumerate(uses) if i not in seen for _ in range(u.copies)]
    return runs


def _nth(values: tuple[int, ...], t: int) -> int:
    return values[t] if t < len(values) else 0


def _outputs(use: GraphUse) -> int:
    """A run's outputs that are not also its saved tensors: the next run's inputs."""
    return max(0, use.boundary_bytes - use.held_bytes)


@dataclass(frozen=True)
class _Runs:
    """Per run of the step (NOTE [The step's runs]): the saved bytes of the runs before it
    (H), its inputs (I), and its own largest need on top of H."""

    runs: list[int]
    held: list[int]
    inputs: list[int]
    grads: list[int]  # the gradients of the runs after it
    need: list[int]
    bare: list[int]  # its need without its inputs


def _run_terms(uses: Sequence[GraphUse], runs: list[int], outside: Outside | None = None
               ) -> _Runs:
    held, total = [], 0
    for r in runs:
        held.append(total)
        total += uses[r].held_bytes
    grads, total = [0] * len(runs), 0
    for t in range(len(runs) - 1, -1, -1):
        grads[t] = total
        total += uses[runs[t]].grad_bytes
    o = outside or Outside()
    # the outside memory joins the inputs on the forward and the gradients on the backward
    inputs = [(_outputs(uses[runs[t - 1]]) if t else 0) + _nth(o.forward, t)
              for t in range(len(runs))]
    grads = [g + _nth(o.backward, t) for t, g in enumerate(grads)]
    bare = [max(uses[r].fwd_peak_bytes + _nth(o.forward, t),
                uses[r].boundary_bytes + _nth(o.after, t), uses[r].bwd_peak_bytes + g)
            for t, (r, g) in enumerate(zip(runs, grads))]
    need = [max(i + uses[r].fwd_peak_bytes, b) for r, i, b in zip(runs, inputs, bare)]
    return _Runs(runs, held, inputs, grads, need, bare)


def step_peak(uses: Sequence[GraphUse], order: Sequence[int] | None = None,
              outside: Outside | None = None) -> int:
    """The predicted peak of a step of these graphs (NOTE [The step's runs])."""
    runs = runs_of(uses, order)
    terms = _run_terms(uses, runs, outside)
    ends = (0, 0) if outside is None else (
        outside.before, outside.end + sum(uses[r].grad_bytes for r in runs))
    return max(max((h + n for h, n in zip(terms.held, terms.need)), default=0), *ends)


def couplings(uses: Sequence[GraphUse], order: Sequence[int] | None = None,
              outside: Outside | None = None) -> list[Coupling]:
    """The coupling of every graph of a step, such that `held_before + own_peak(use,
    coupling)` bounds the need of every run that its plan bears on (NOTE [The step's runs]):
    its own runs, and the runs after its first, during which it holds saved tensors. Its
    saved bytes are the Problem's to decide; the rest is fixed: the other graphs' saved bytes
    before its last run (`held_before`), its other runs' saved bytes (`copies - 1` of them),
    its inputs during its forwards, and on top of its boundary what the later runs need; with
    the memory outside the graphs (`outside`) during its runs and theirs.
    Safe: the later runs are charged with its whole boundary, not only its saved bytes, and
    where other graphs' runs come between its own, with all its other runs' saved bytes."""
    terms = _run_terms(uses, runs := runs_of(uses, order), outside)
    after = (outside or Outside()).after
    out = []
    for i, u in enumerate(uses):
        mine = [t for t, r in enumerate(runs) if r == i]
        # saved bytes of the other graphs' runs before run t: less its own runs before t
        other, own_before = [], 0
        for t, r in enumerate(runs):
            other.append(terms.held[t] - u.held_bytes * own_before)
            own_before += r == i
        base = other[mine[-1]]
        inputs = max(terms.inputs[t] + other[t] for t in mine) - base
        grads_after = max(terms.grads[t] + other[t] for t in mine) - base
        # charged on top of its whole boundary: the part of it that is not saved (its
        # outputs) differs between its plans, so it is not taken off
        # (a run right after one of its own gets its outputs, which its boundary counts)
        later = max((other[t] + (terms.bare[t] if runs[t - 1] == i else terms.need[t])
                     for t in range(mine[0] + 1, len(runs)) if runs[t] != i), default=base)
        # the memory outside the graphs after its own forwards
        later = max([later] + [other[t] + after[t] for t in mine if t < len(after)])
        out.append(Coupling(base, max(0, later - base), max(0, grads_after), len(mine),
                            max(0, inputs)))
    return out


def own_peak(use: GraphUse, coupling: Coupling) -> int:
    """A graph's peak with what the graphs after it add (those before it: `held_before`)
    and what its other runs in flight hold."""
    return (use.copies - 1) * use.held_bytes + max(
        use.fwd_peak_bytes + coupling.inputs, use.bwd_peak_bytes + coupling.grads_after,
        use.boundary_bytes + coupling.later_need)
