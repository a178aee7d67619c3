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
* The gradients a graph's backward returns (parameter gradients, the gradient of its inputs)
  stay alive while the graphs before it run their backward (`grads_after`): fixed memory on
  the backward steps of those graphs' Problems.
* So the predicted step peak is the largest, over graphs, of what the graphs before hold plus
  the largest of its forward peak, its backward peak plus `grads_after`, and its boundary plus
  `later_need` (`step_peak`).
* When a graph joins, the graphs after it are not known yet (`later_need` is 0, or what the
  step before showed after a recompile). When a graph does not fit under what the earlier ones
  hold, it is planned as low as it goes (that step may exceed the budget, with a warning) and
  every earlier graph that no longer fits is re-planned with the new coupling; the backend
  recompiles those at their next call (`fxopt.compiler.StepGraph`). Each graph is re-planned at
  most `MAX_REPLANS` times, so a step settles after its second run.
* A graph compiled again for the same frame (new shapes, a failed guard) replaces its entry and
  keeps its place: gradient accumulation and a model called on several batches add nothing.
  Several forwards of one graph before a single backward (a model called twice per step) hold
  its saved tensors twice; a compile cannot see that, but the measured step does.
* A graph can run several times before the first of those runs reaches its backward: blocks
  compiled one by one share one graph, a pipeline stage has microbatches in flight
  (`copies`, from `Options.in_flight` and from what the step shows: NOTE [Copies in flight]
  in fxopt/solver/validate.py). The other runs hold its saved tensors while the last one
  runs, and all of them while later graphs run; its Problem carries the others, since what
  they hold depends on its plan.
* `Options.resident` is memory held before the step begins (parameters, optimizer state) and
  `Options.reserved` memory outside the graphs for the whole step (FSDP's unsharded
  parameters and gradient buffers): both are taken off a size before the graphs share it;
  the predicted step peak (above what is held before it) counts `reserved`, and errors name
  peaks with both, in the terms of the size the user gave.
* Once the plans settle, one real step is measured (NOTE [Measuring the step in training] in
  fxopt/meter.py). What it held outside the graphs (eager code between or after them, such
  as a loss on a large output) counts from then on as one more graph after the last one: on
  top of every graph's saved tensors, where an eager loss runs, so it is the measured peak
  less the predicted bytes there, not less the predicted peak (which may lie in a backward).
  Under a size the graphs that no longer fit are planned once more.
* A fraction is a fraction of the step's keep-everything peak (the same sum, every graph
  keeping everything), best effort; a size is a promise: when even re-planned earlier graphs
  leave a graph no room, the compile fails and names the step's peak with every graph at its
  lowest plan beside the others, which a budget of that size then gets.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from fxopt.config import Options
from fxopt.runs import is_other_graph
from fxopt.step_runs import Coupling, GraphUse, Outside, couplings, own_peak, step_peak

MAX_REPLANS = 2
TOLERANCE = 0.05  # how far a plan may simulate above a size the user gave


class Agreement(Protocol):
    """Ranks that must run the same plans settle each search outcome together
    (NOTE [One plan on every rank] in fxopt/distributed/agree.py)."""

    def plan(self, problem: Any, found: Any) -> Any:
        """The plan every rank uses, from this rank's Plan or search error `found`."""

    def number(self, value: int) -> int:
        """The value every rank uses (the largest)."""


@dataclass(frozen=True)
class Share:
    """The budget one graph is planned against."""

    budget_bytes: int  # for this graph alone: the step's budget less what the others hold
    strict: bool  # the user gave a size: more than TOLERANCE above it is an error
    coupling: Coupling
    step_budget_bytes: int | None  # the budget of the whole step; None: no budget
    room_elsewhere: bool = False  # another graph could still be re-planned to leave more


@dataclass
class Runs:
    """Runs of one graph in flight (NOTE [Counting runs] in fxopt/runs.py), shared by
    every compile of its frame (a recompile for inputs that now need gradients is the same
    graph of the step)."""

    in_flight: int = 0  # runs whose backward has not run yet
    wave: int = 0  # the most in flight since the count was last 0
    backwards: int = 0  # runs of this wave whose backward ran


@dataclass
class _Entry:
    key: str
    keep: GraphUse | None = None  # keeping everything
    default: GraphUse | None = None  # PyTorch's partition
    use: GraphUse | None = None  # as planned
    planned_with: Coupling | None = None
    replans: int = 0
    static_inputs: tuple[int, ...] | None = None  # from the first compile (recompiles lose it)
    copies: int | None = None  # runs in flight at once, as the step showed (None: not yet seen)


class Step:
    """The training graphs of one compile and the budget they share."""

    def __init__(self, options: Options, defer_errors: bool = False) -> None:
        """`defer_errors`: a size that cannot be met is refused once every graph of the step
        has been planned (`fxopt.explain`, which sees the whole step before it answers);
        otherwise at the compile that finds it, so that a GPU run stops before it runs out of
        memory."""
        self.options = options
        self.defer_errors = defer_errors
        self.refused: dict[str, Any] = {}  # graph key -> InfeasibleBudgetError of its plan
        self._entries: list[_Entry] = []
        self._stale: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()
        self.reports: dict[str, Any] = {}  # the latest fxopt.Report of each graph
        # NOTE [Measuring the step in training] (fxopt/meter.py): what the real step
        # held, and the part of it no graph planned (eager code between and after the graphs),
        # which counts as one more graph at the end of the step once it is known.
        self.measured_peak_bytes: int | None = None
        self.planned_peak_bytes: int | None = None  # the prediction that was measured
        self.unplanned_bytes = 0
        self.measure_note = ""
        self.measurements = 0
        self._measured_at = -1  # `compiles` when the step was last measured
        self._order: list[str] = []  # every graph's key, training or not, in compile order
        self.meter: Any = None  # the measurement of the step in progress
        self.in_flight = 0  # runs of its graphs whose backward has not run yet
        self.agreement: Agreement | None = None  # set where ranks must plan alike
        self._runs: dict[str, Runs] = {}
        # the training runs of the last step, forward order, once seen (NOTE [The step's runs]
        # in fxopt/step_runs.py)
        self._run_order: list[str] | None = None
        # the memory outside the graphs along those runs, where explain's fake step saw it
        # (NOTE [Memory outside the graphs] in fxopt/outside.py)
        self._outside_runs: Outside | None = None
        self._wave: list[str] = []  # the runs of the step in progress
        self._signatures: dict[str, Any] = {}  # each graph's input shapes, by key
        self._compiles_before = 0  # `compiles` when the step in progress began
        self._quiet = False  # the last step compiled nothing
        self._wave_most = 0  # the most runs of it in flight at once
        self.compiles = 0  # graphs planned so far: a step that compiles is not measured

    def __len__(self) -> int:
        return len(self._entries)

    # Inductor pickles its config, this object included (through the partitioner), to key its
    # caches and to compile in worker processes; the partitioner's uuid() stands for it there.
    # The graphs it holds (fake tensors, locks) cannot be pickled: a copy starts empty.
    def __getstate__(self) -> dict:
        return {"options": self.options, "defer_errors": self.defer_errors}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["options"], state["defer_errors"])  # type: ignore[misc]

    def keys(self) -> list[str]:
        return [e.key for e in self._entries]

    def _live(self) -> list[_Entry]:
        """The graphs of the step: once its runs are seen, those that ran (a graph that Dynamo
        compiled again for other shapes, and whose new graph now runs in its place, is gone
        from the step; NOTE [Graphs of one frame] in fxopt/runs.py)."""
        if self._run_order is None:
            return list(self._entries)
        ran = set(self._run_order)
        return [e for e in self._entries if e.key in ran]

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

    def _tail(self) -> list[GraphUse]:
        """The measured memory no graph planned, as one more graph after the last one (its
        forward peak sits on top of every graph's saved tensors, where an eager loss runs)."""
        return [GraphUse(0, self.unplanned_bytes, 0, 0)] if self.unplanned_bytes > 0 else []

    def _indexed(self, keys: Sequence[str]) -> list[int] | None:
        """The step's runs as indices into `keys` (NOTE [The step's runs]; None: not seen
        yet). Runs of graphs not among them are left out."""
        return self._runs_of(keys)[0]

    def _runs_of(self, keys: Sequence[str], planning: bool = False
                 ) -> tuple[list[int] | None, Outside | None]:
        """`_indexed(keys)`, and the memory outside the graphs along those runs; where it is
        for `planning`, only under a size (NOTE [Memory outside the graphs] in
        fxopt/outside.py: a fraction is planned as the backend plans it, which does not see
        that memory)."""
        if self._run_order is None:
            return None, None
        where = {k: i for i, k in enumerate(keys)}
        kept = [t for t, k in enumerate(self._run_order) if k in where]
        outside = None if self._outside_runs is None or (planning and self._size() is None) else \
            self._outside_runs.of_runs(kept)
        return [where[self._run_order[t]] for t in kept], outside

    def _coupling(self, key: str, own: GraphUse) -> Coupling:
        """Graph `key`'s coupling to the planned graphs around it (its own use: `own`)."""
        live = {e.key for e in self._live()}
        graphs = [e for e in self._entries
                  if (e.use is not None and e.key in live) or e.key == key]
        keys = [e.key for e in graphs]
        uses = [own if e.key == key else e.use for e in graphs]
        mine = [u for u in uses if u is not None] + self._tail()
        return couplings(mine, *self._runs_of(keys, planning=True))[keys.index(key)]

    def _planned(self, tail: bool = True, planning: bool = False
                 ) -> tuple[list[_Entry], list[GraphUse], list[int] | None, Outside | None]:
        """The planned graphs, their uses (with `tail`, the measured memory outside the
        graphs as one more after the last: `_tail`), the step's runs among them and the
        memory outside the graphs along those runs (see `_runs_of` for `planning`)."""
        planned = [e for e in self._live() if e.use is not None]
        uses = [e.use for e in planned if e.use is not None] + (self._tail() if tail else [])
        return planned, uses, *self._runs_of([e.key for e in planned], planning)

    def share(self, key: str, keep: GraphUse, default: GraphUse | None) -> Share:
        """The budget graph `key` is planned against, given what it holds keeping everything
        and with PyTorch's partition (NOTE [Best-effort budgets] in fxopt/pipeline.py)."""
        with self._lock:
            copies = self._copies(key)
            keep = replace(keep, copies=copies)
            default = replace(default, copies=copies) if default is not None else None
            self._entry(key).keep = keep
            self._entry(key).default = default
            coupling = self._coupling(key, keep)
            budget = self.options.budget
            cap = min(own_peak(keep, coupling),
                      own_peak(default, coupling) if default else own_peak(keep, coupling))
            if budget is None:
                return Share(cap, False, coupling, None)
            step_budget = self._graphs_budget()
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
            entry.use = replace(use, copies=self._copies(key))
            entry.planned_with = coupling
            self._stale.discard(key)
            self.refused.pop(key, None)
            self.compiles += 1
            return self._mark_unfit(skip=key)

    def _mark_unfit(self, skip: str | None, tolerance: float = TOLERANCE) -> list[str]:
        """Marks for re-planning every planned graph that no longer fits the step's budget
        (a size as budget: within `tolerance`, as a plan is accepted). Without a budget, every
        graph that peaks above PyTorch's partition of it beside the graphs around it as they
        are now: a graph planned before the later ones joined did not know the room they need
        after its forward (NOTE [Never above PyTorch's default] in fxopt/partition.py)."""
        step_budget, size = self._graphs_budget(), self._size()
        if step_budget is not None and size is not None:
            step_budget += int(size * tolerance)

        def unfit(e: _Entry, u: GraphUse, c: Coupling) -> bool:
            if step_budget is None:
                return e.default is not None and own_peak(u, c) > own_peak(e.default, c)
            return c.held_before + own_peak(u, c) > step_budget

        planned, uses, order, outside = self._planned(planning=True)
        stale = []
        for e, u, c in zip(planned, uses, couplings(uses, order, outside)):
            if e.key == skip or e.replans >= MAX_REPLANS or c == e.planned_with:
                continue
            if unfit(e, u, c):
                e.replans += 1
                self._stale.add(e.key)
                stale.append(e.key)
        return stale

    def refuse(self, key: str, error: Any) -> Any:
        """Graph `key` (already recorded with its lowest plan) cannot meet the size the user
        gave; returns the error for the step, which names the step's predicted peak with the
        lowest plans found: a budget that asks for it gets a plan. None where the step's
        own prediction holds the size after all: the graph's Problem bounds the runs around it
        on the safe side (NOTE [The step's runs]), the step counts them exactly."""
        with self._lock:
            size = self._size()
            if size is not None and len(self._live()) > 1 \
                    and self._predicted() <= size * (1 + TOLERANCE) - self.options.resident:
                return None
            self.refused[key] = error
            return self._infeasible(error)

    def over_budget_error(self) -> Any:
        """Under a size, the error for a step whose plans have settled (nothing left to
        re-plan) above the budget: every graph as low as it goes beside the others, with the
        memory measured outside the graphs. None while the step still fits or may still be
        re-planned."""
        from fxopt.solver import InfeasibleBudgetError

        with self._lock:
            size = self._size()
            if size is None or self._stale:
                return None
            resident = self.options.resident
            peak = self._predicted()
            limit = size * (1 + TOLERANCE) - resident
            # A measurement of these very plans (nothing compiled since) is the better judge.
            measured = self.measured_peak_bytes if self._measured_at == self.compiles else None
            if measured is not None and measured > limit:
                peak = max(peak, measured)
            elif peak <= limit:
                return None
            outside = (f", with the {self.unplanned_bytes} B measured outside the compiled "
                       "graphs" if self.unplanned_bytes else "")
            # keeping everything, with what was measured outside the graphs on top
            keep = self._keep_peak() + self.unplanned_bytes + self.options.reserved
            return InfeasibleBudgetError(
                size, peak + resident, False, max(keep, peak) + resident, {},
                context=f"for the training step of {len(self._live())} graphs, each re-planned "
                        f"as low as it goes beside the others{outside}{self._held_text()}")

    def infeasible_error(self) -> Any:
        """The error for the step when a graph refused the budget (None: none did)."""
        with self._lock:
            if not self.refused:
                return None
            return self._infeasible(next(iter(self.refused.values())))

    def _infeasible(self, error: Any) -> Any:
        from fxopt.solver import InfeasibleBudgetError

        planned = [e.use for e in self._entries if e.use is not None]
        held = self.options.resident + self.options.reserved
        if len(planned) <= 1 and not self.unplanned_bytes and not held:
            return error  # the step is this one graph, as far as it is known
        resident = self.options.resident
        peak = self._predicted() + resident
        # the graph's options that would lower its peak, as peaks of the step
        shift = peak - error.min_peak_bytes
        better = {k: v + shift for k, v in error.alternatives.items()}
        return InfeasibleBudgetError(
            (self._step_budget() or 0) + resident, peak, False,
            self._keep_peak() + self.options.reserved + resident, better,
            context=f"for the training step of {len(planned)} graph(s), each planned as low as "
                    f"it goes beside the others{self._held_text()}",
            limit=getattr(error, "limit", None), restricted=getattr(error, "restricted", False))

    def _held_text(self) -> str:
        o = self.options
        if not (o.resident or o.reserved):
            return ""
        from fxopt.config import format_bytes

        return (f", with {format_bytes(o.resident)} held before the step and "
                f"{format_bytes(o.reserved)} outside the compiled graphs during it")

    def attach(self, key: str, report: Any) -> None:
        """Keeps the latest report of graph `key` (for the step's report)."""
        with self._lock:
            self.reports[key] = report

    def ordered_reports(self) -> list[Any]:
        with self._lock:
            return [self.reports[e.key] for e in self._live() if e.key in self.reports]

    def ordered_copies(self) -> list[int]:
        """Runs in flight of each graph of `ordered_reports`."""
        with self._lock:
            return [self._copies(e.key) for e in self._live() if e.key in self.reports]

    def cannot_measure(self, reason: str) -> None:
        with self._lock:
            self.measure_note, self.measurements = reason, 2

    def first_key(self) -> str | None:
        """The first training graph: its backward is the step's last."""
        with self._lock:
            return self._entries[0].key if self._entries else None

    def note_graph(self, key: str) -> None:
        """Every graph of the compile, training or not, in the order they were compiled."""
        with self._lock:
            if key not in self._order:
                self._order.append(key)

    def start_key(self) -> str | None:
        """The first graph the step runs (a graph without backward may come before the first
        training graph): where a measurement of the step starts."""
        with self._lock:
            return self._order[0] if self._order else None

    def measure_due(self) -> bool:
        """Whether the next step is measured: under a budget, once the plans have settled and
        a step ran without compiling, at most twice (the second time after a re-plan for what
        the first one found)."""
        with self._lock:
            # a graph compiled during the last step ran its first run there, or runs it now:
            # that run loads kernels and fills the runtime's buffers, not measured
            settled = not self._stale and all(e.use is not None for e in self._entries) \
                and self._quiet
            wanted = self.measurements == 0 or (self.measurements == 1
                                                and self.unplanned_bytes > 0)
            return self.options.budget is not None and settled and bool(wanted)

    def _predicted(self) -> int:
        """The step's predicted peak, with the memory reserved outside the graphs."""
        _, uses, order, outside = self._planned()
        return step_peak(uses, order, outside) + self.options.reserved

    def measured(self, peak: int) -> list[str]:
        """Takes the measured peak of one step; under a size as budget, the first excess over
        the prediction is counted as memory after the last graph's forward (`_outside`) and
        the graphs that no longer fit are returned for re-planning."""
        with self._lock:
            self.measurements += 1
            self._measured_at = self.compiles
            predicted = self._predicted()
            self.measured_peak_bytes, self.planned_peak_bytes = peak, predicted
            excess = peak - predicted
            size = self._size()
            if excess <= 0 or self.unplanned_bytes or size is None \
                    or peak <= size - self.options.resident:
                return []
            self.unplanned_bytes = self._outside(peak)
            for e in self._entries:
                e.replans = min(e.replans, MAX_REPLANS - 1)  # one more re-plan for this
                e.planned_with = None  # re-checked whatever their coupling
            # The real step overshot once already: no tolerance on top of that.
            return self._mark_unfit(skip=None, tolerance=0.0)

    def _outside(self, peak: int) -> int:
        """The memory outside the graphs that makes the predicted step peak `peak`, held
        after the last graph's forward (an eager loss holds its own tensors there, on top of
        every graph's saved ones): `peak` less the step's predicted live bytes at that point.
        The excess over the predicted peak would be too little where the prediction peaks
        elsewhere, in a backward."""
        _, uses, order, _ = self._planned(tail=False)
        # with `peak` outside, the point after the forwards dominates: its bytes are the rest
        at_turn = step_peak([*uses, GraphUse(0, peak, 0, 0)], order) - peak
        return max(0, peak - self.options.reserved - at_turn)

    def _size(self) -> int | None:
        """The budget in bytes where the user gave a size (a promise), else None."""
        budget = self.options.budget
        return None if budget is None else budget.nbytes

    def _step_budget(self) -> int | None:
        budget = self.options.budget
        if budget is None:
            return None
        if budget.nbytes is not None:  # what the step may add to what is held before it
            return budget.nbytes - self.options.resident
        return budget.resolve(self._keep_peak() + self.options.reserved)

    def _keep_peak(self) -> int:
        """The step's predicted peak with every graph keeping everything."""
        kept = [e for e in self._live() if e.keep is not None]
        return step_peak([e.keep for e in kept if e.keep is not None],
                         *self._runs_of([e.key for e in kept], planning=True))

    def _graphs_budget(self) -> int | None:
        """What the compiled graphs may use: the step's budget less `Options.reserved`."""
        whole = self._step_budget()
        return None if whole is None else whole - self.options.reserved

    def _copies(self, key: str) -> int:
        """How many runs of graph `key` are in flight at once: as the step showed, or as
        declared (`Options.in_flight`)."""
        seen = self._entry(key).copies
        return seen if seen is not None else self.options.in_flight

    def runs(self, key: str) -> Runs:
        with self._lock:
            return self._runs.setdefault(key, Runs())

    def started_run(self, key: str) -> None:
        """A run of training graph `key` began its forward (NOTE [The step's runs])."""
        with self._lock:
            if not self.in_flight:  # the first run of a step
                self._wave, self._wave_most = [], 0
                self._compiles_before = self.compiles
            self._wave.append(key)
            self._wave_most = max(self._wave_most, self.in_flight + 1)

    def step_done(self) -> list[str]:
        """The step's last backward ran: its runs are the step's order from now on where every
        forward ran before the first backward (a pipeline's schedule may interleave them: those
        keep counting copies). Returns the graphs that no longer fit the budget beside it."""
        with self._lock:
            wave, self._wave = self._wave, []
            self._quiet = self.compiles == self._compiles_before
            known = {e.key for e in self._entries}
            if self._wave_most != len(wave) or wave == self._run_order \
                    or not set(wave) <= known:
                return []
            assumed = self._run_order or [e.key for e in self._entries
                                          for _ in range(self._copies(e.key))]
            self._run_order = wave
            if wave == assumed:
                return []
            for e in self._entries:
                e.planned_with = None  # re-checked whatever their coupling
            return self._mark_unfit(skip=None)

    def saw_order(self, keys: Sequence[str]) -> list[str]:
        """The runs of one step, every forward before the first backward (`fxopt.explain`'s
        fake step); as `step_done`."""
        with self._lock:
            self._wave, self._wave_most = list(keys), len(keys)
        return self.step_done()

    def saw_outside(self, outside: Outside) -> list[str]:
        """The memory outside the graphs along the step's runs (`fxopt.explain`'s fake step;
        NOTE [Memory outside the graphs] in fxopt/outside.py). Returns the graphs that no
        longer fit the budget beside it."""
        with self._lock:
            if self._run_order is None or len(outside.forward) != len(self._run_order):
                return []
            self._outside_runs = outside
            if self._size() is None:
                return []  # planned without it (`_runs_of`): only the prediction changes
            for e in self._entries:
                e.planned_with = None  # re-checked whatever their coupling
            return self._mark_unfit(skip=None)

    def outside(self, keys: Sequence[str]) -> Outside | None:
        """The memory outside the graphs along the runs of `run_order(keys)`."""
        with self._lock:
            return self._runs_of(keys)[1]

    def run_order(self, keys: Sequence[str]) -> tuple[int, ...] | None:
        """The step's runs as indices into `keys` (None: not seen yet)."""
        with self._lock:
            runs = self._indexed(keys)
            return None if runs is None else tuple(runs)

    def other_graph(self, key: str, signature: Any) -> bool:
        """Whether a graph compiled for inputs of `signature` is another graph than `key`'s
        run in flight, and not its replacement (NOTE [Graphs of one frame] in
        fxopt/runs.py). Records the signature of `key`'s graph otherwise."""
        with self._lock:
            runs = self._runs.get(key)
            return is_other_graph(self._signatures, key, signature,
                                  runs is not None and runs.in_flight > 0)

    def copies(self, key: str) -> int:
        with self._lock:
            return self._copies(key)

    def saw_copies(self, key: str, copies: int) -> list[str]:
        """The step ran `copies` runs of graph `key` at once (NOTE [Copies in flight]).
        Returns the graphs to re-plan: this one when its plan assumed another number, and
        those that no longer fit beside it."""
        with self._lock:
            entry = self._entry(key)
            known = copies == self._copies(key)
            entry.copies = copies
            if entry.use is None or known:
                return []
            entry.use = replace(entry.use, copies=copies)
            if entry.keep is not None:
                entry.keep = replace(entry.keep, copies=copies)
            if entry.default is not None:
                entry.default = replace(entry.default, copies=copies)
            stale = []
            if entry.replans < MAX_REPLANS:
                entry.replans += 1
                self._stale.add(key)
                stale.append(key)
            return stale + self._mark_unfit(skip=key)

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
        """Whether another graph could still be re-planned to leave `key` more room: one
        before it holds saved tensors while it runs, and one after it needs room while it
        holds its own (NOTE [The step's runs])."""
        return any(e.key != key and e.use is not None and e.use.held_bytes > 0
                   and e.replans < MAX_REPLANS for e in self._entries)

    def peak_bytes(self) -> int:
        """The predicted step peak of the graphs as planned so far (with the measured memory
        that no graph planned, once known)."""
        with self._lock:
            return self._predicted()
