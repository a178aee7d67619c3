"""The training step as a whole: the graphs of one compile, in the order the step runs them, and
the part of the budget each graph may use.

NOTE [Step budgets]
A budget bounds the peak of the whole training step, however many graphs Dynamo cuts it into.
One `Step` belongs to one compile (one `fxopt.backend(...)` object, one `fxopt.explain` call,
or the process under FXOPT=1) and lists its training graphs in the order Dynamo compiled them,
which is the order the forward first reaches them; the backward runs them in reverse.

* While graph i runs, forward or backward, every graph before it holds its saved tensors
  (`held`): they are fixed memory for i, so i is planned against the budget less those bytes.
* Graph i's own saved tensors stay alive while every later graph runs: what the later graphs
  add on top of i's forward/backward boundary (`later_need`: the most that the graphs between
  hold plus a later graph's own peak) is added at the last forward step of i's Problem. Graph
  i's outputs are live at that boundary and are the next graph's inputs, which a graph's own
  peak leaves out: the sum counts them once.
* So the predicted step peak is the largest, over graphs, of what the graphs before hold plus
  the larger of the graph's own peak and its boundary plus `later_need` (`step_peak`).
* When a graph joins, the graphs after it are not known yet (`later_need` is 0, or what the
  step before showed after a recompile). When a graph does not fit under what the earlier ones
  hold, it is planned as low as it goes (that step may exceed the budget, with a warning) and
  every earlier graph that no longer fits is re-planned with the new coupling; the backend
  recompiles those at their next call (`fxopt.compiler.StepGraph`). Each graph is re-planned at
  most `MAX_REPLANS` times, so a step settles after its second run.
* A graph compiled again for the same frame (new shapes, a failed guard) replaces its entry and
  keeps its place: gradient accumulation and a model called on several batches add nothing.
  Several forwards of one graph before a single backward (a model called twice per step) hold
  its saved tensors twice; a compile cannot see that, and the measured step shows it.
* A fraction is a fraction of the step's keep-everything peak (the same sum, every graph
  keeping everything), best effort; a size is a promise: when even re-planned earlier graphs
  leave a graph no room, the compile fails and names the smallest step peak found.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from fxopt.config import Options

MAX_REPLANS = 2
TOLERANCE = 0.05  # as in pipeline.py: how far a plan may simulate above an explicit budget


@dataclass(frozen=True)
class Coupling:
    """How the rest of the step bears on one graph's plan (see NOTE [Step budgets])."""

    held_before: int = 0  # saved bytes of the graphs before it, alive while it runs
    later_need: int = 0  # what the graphs after it add on top of its forward/backward boundary


@dataclass(frozen=True)
class GraphUse:
    """What one planned graph holds, as the step sees it."""

    held_bytes: int  # saved tensors on the device from its forward to its backward
    peak_bytes: int  # its own peak, above its parameters and inputs
    boundary_bytes: int  # its own live bytes at its last forward step


def step_peak(uses: Sequence[GraphUse]) -> int:
    """The predicted peak of a step whose graphs run in this order (NOTE [Step budgets])."""
    return max((c.held_before + _own_peak(u, c) for u, c in zip(uses, couplings(uses))),
               default=0)


def couplings(uses: Sequence[GraphUse]) -> list[Coupling]:
    """The coupling of every graph of a step from what each graph holds."""
    out = []
    for i in range(len(uses)):
        held_before = sum(u.held_bytes for u in uses[:i])
        later, between = 0, 0
        for u in uses[i + 1:]:
            later = max(later, between + u.peak_bytes)
            between += u.held_bytes
        out.append(Coupling(held_before, later))
    return out


def _own_peak(use: GraphUse, coupling: Coupling) -> int:
    return max(use.peak_bytes, use.boundary_bytes + coupling.later_need)


@dataclass(frozen=True)
class Share:
    """The budget one graph is planned against."""

    budget_bytes: int  # for this graph alone: the step's budget less what the others hold
    strict: bool  # the user gave a size: more than TOLERANCE above it is an error
    coupling: Coupling
    step_budget_bytes: int | None  # the budget of the whole step; None: no budget
    room_elsewhere: bool = False  # an earlier graph could still be re-planned to leave more


@dataclass
class _Entry:
    key: str
    keep: GraphUse | None = None  # keeping everything
    use: GraphUse | None = None  # as planned
    planned_with: Coupling | None = None
    replans: int = 0
    static_inputs: tuple[int, ...] | None = None  # from the first compile (recompiles lose it)


class Step:
    """The training graphs of one compile and the budget they share."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._entries: list[_Entry] = []
        self._stale: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    # Inductor pickles its config, the partitioner and so this object included; a lock cannot.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return [e.key for e in self._entries]

    def _entry(self, key: str) -> _Entry:
        for e in self._entries:
            if e.key == key:
                return e
        entry = _Entry(key)
        self._entries.append(entry)
        return entry

    def static_inputs(self, key: str, given: Sequence[int] | None) -> list[int] | None:
        """The first compile's static-lifetime input indices for this graph: a recompile from
        outside Dynamo is not told which inputs are parameters."""
        with self._lock:
            entry = self._entry(key)
            if entry.static_inputs is None and given is not None:
                entry.static_inputs = tuple(given)
            return None if entry.static_inputs is None else list(entry.static_inputs)

    def _coupling(self, key: str, own: GraphUse) -> Coupling:
        """Graph `key`'s coupling to the planned graphs around it (its own use: `own`)."""
        order = [e for e in self._entries if e.use is not None or e.key == key]
        uses = [own if e.key == key else e.use for e in order]
        return couplings(uses)[[e.key for e in order].index(key)]

    def share(self, key: str, keep: GraphUse, default_peak: int | None) -> Share:
        """The budget graph `key` is planned against, its keep-everything use given."""
        with self._lock:
            self._entry(key).keep = keep
            coupling = self._coupling(key, keep)
            budget = self.options.budget
            cap = min(keep.peak_bytes, default_peak or keep.peak_bytes)
            if budget is None:
                return Share(cap, False, coupling, None)
            step_budget = self._step_budget()
            assert step_budget is not None
            room = self._can_make_room(key)
            if budget.nbytes is not None:
                return Share(step_budget - coupling.held_before, True, coupling, step_budget,
                             room)
            return Share(min(step_budget - coupling.held_before, cap), False, coupling,
                         step_budget, room)

    def record(self, key: str, use: GraphUse, coupling: Coupling | None) -> list[str]:
        """Stores graph `key` as planned under `coupling`; returns the keys of earlier graphs
        that no longer fit and are to be re-planned (see NOTE [Step budgets])."""
        with self._lock:
            entry = self._entry(key)
            entry.use, entry.planned_with = use, coupling
            self._stale.discard(key)
            step_budget = self._step_budget()
            if step_budget is None:
                return []
            if self.options.budget is not None and self.options.budget.nbytes is not None:
                step_budget = int(step_budget * (1 + TOLERANCE))
            uses = [e.use for e in self._entries if e.use is not None]
            planned = [e for e in self._entries if e.use is not None]
            stale = []
            for e, u, c in zip(planned, uses, couplings(uses)):
                if e.key == key or e.replans >= MAX_REPLANS or c == e.planned_with:
                    continue
                if c.held_before + _own_peak(u, c) > step_budget:
                    e.replans += 1
                    self._stale.add(e.key)
                    stale.append(e.key)
            return stale

    def _step_budget(self) -> int | None:
        budget = self.options.budget
        if budget is None:
            return None
        if budget.nbytes is not None:
            return budget.nbytes
        keeps = [e.keep for e in self._entries if e.keep is not None]
        return budget.resolve(step_peak(keeps))

    def first_warning(self) -> bool:
        """True once per step: a best-effort budget is announced once, not per graph."""
        with self._lock:
            first, self._warned = not self._warned, True
            return first

    def keep_plan(self, key: str) -> None:
        """Graph `key` cannot be re-planned: it keeps the plan it has."""
        with self._lock:
            self._stale.discard(key)

    def stale_keys(self) -> list[str]:
        """The graphs to re-plan, in step order."""
        with self._lock:
            return [e.key for e in self._entries if e.key in self._stale]

    def is_stale(self, key: str) -> bool:
        with self._lock:
            return key in self._stale

    def _can_make_room(self, key: str) -> bool:
        """Whether an earlier graph could still be re-planned to leave `key` more room."""
        for e in self._entries:
            if e.key == key:
                return False
            if e.use is not None and e.use.held_bytes > 0 and e.replans < MAX_REPLANS:
                return True
        return False

    def peak_bytes(self) -> int:
        """The predicted step peak of the graphs as planned so far."""
        with self._lock:
            return step_peak([e.use for e in self._entries if e.use is not None])
