"""The `torch.compile` backend: AOTAutograd with Inductor's decompositions and fxopt's partition,
then Inductor code generation for the forward and backward graphs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx

from fxopt.compat import autograd_cache_off, compile_fx, inductor_compile_inner
from fxopt.config import Options
from fxopt.kernel_order import keeping_kernel_order
from fxopt.runs import distinct_key, signature, watch_run
from fxopt.step import Step

CompiledFn = Callable[..., Any]
log = logging.getLogger("fxopt")


def _compile(gm: fx.GraphModule, example_inputs: Sequence[Any], options: Options, step: Step,
             key: str | None, config_patches: Mapping[str, Any] | None = None,
             **compile_kwargs: Any) -> CompiledFn:
    from fxopt.hook import FxoptPartitioner

    # compile_fx runs AOTAutograd with Inductor's decompositions and joint-graph passes, then
    # calls the custom partitioner on the joint graph and compiles both halves with Inductor.
    # NOTE [Plans are never served from AOTAutograd's cache]: a cache hit would skip the
    # partitioner, leaving no report for the graph; the plan itself is cached on disk by the
    # solver, and Inductor's code cache still serves the compiled kernels. Each half is
    # scheduled in the plan's kernel order (NOTE [Inductor keeps fxopt's kernel order]).
    inner = keeping_kernel_order(compile_kwargs.pop("inner_compile", inductor_compile_inner()))
    with autograd_cache_off():
        return compile_fx(gm, list(example_inputs), config_patches={
            **(config_patches or {}), **offload_patches(options), **FREE_AT_LAST_USE,
            "custom_partitioner_fn": FxoptPartitioner(options, step, key)},
            inner_compile=inner, **compile_kwargs)


# NOTE [Each buffer is freed at its last use]
# Inductor's generated code hands a dead buffer to a later allocation of the same size and
# dtype (`allow_buffer_reuse`) when its own estimate says the peak allows it; until that
# allocation the dead buffer stays allocated, which a plan's liveness does not see. Measured on
# the CPU zoo at budget 0.5 (bench_zoo --quick, RSS peak), with reuse and without: FNO 29.9 and
# 25.3 MiB (the plan: 25.6), HF Llama 13.6 and 13.2, HF Llama with gradient checkpointing 11.9
# and 11.0; step times the same within noise (HF Llama 22.0 and 21.5 ms, FNO at batch 64 27.8
# and 25.2 ms, medians of 15 steps). fxopt's graphs are compiled without it: each buffer goes
# back to the allocator (malloc, or CUDA's caching allocator, which recycles it as cheaply) at
# the kernel after its last use, where the plan frees it. Plain torch.compile keeps its default.
FREE_AT_LAST_USE = {"allow_buffer_reuse": False}


def offload_patches(options: Options) -> dict[str, Any]:
    """Inductor settings a plan with offload needs (NOTE [Offload invariants] (7) in
    fxopt/ops/offload.py): no reordering for peak memory, which would pull each copy's join up
    to the copy's start and push each prefetch down to its use, so that the main stream waits
    for every copy."""
    return {"reorder_for_peak_memory": False} if options.offload else {}


def _symbolic(gm: fx.GraphModule) -> bool:
    """Whether the graph has symbolic sizes (a recompile from real inputs would specialise)."""
    for node in gm.graph.find_nodes(op="placeholder"):
        val = node.meta.get("example_value", node.meta.get("val"))
        if isinstance(val, torch.SymInt):
            return True
        if isinstance(val, torch.Tensor) and any(
                isinstance(d, torch.SymInt) for d in (*val.shape, *val.stride())):
            return True
    return False


class StepGraph:
    """One compiled graph of the step, recompiled with a new plan when the step asks for it.

    NOTE [Re-planning a compiled graph]: when a later graph of the step leaves an earlier one
    too little room (NOTE [Step budgets] in fxopt/step.py), the earlier graph is compiled again
    at its next call, from a copy of the graph Dynamo gave and that call's inputs, under the
    same key, so that the step's coupling reaches its partition. Dynamo's cache keeps this
    object, so its guards are unchanged. A graph with symbolic sizes would be specialised by
    real inputs: it keeps its first plan, and the warning says so.
    """

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], options: Options,
                 step: Step, **compile_kwargs: Any) -> None:
        from fxopt.hook import graph_key
        from fxopt.partition import copy_graph

        # NOTE [Graphs of one frame] (fxopt/runs.py): another graph of a frame whose graph is
        # in flight is a graph of its own in the step, not a replacement
        shapes = signature(example_inputs)
        self.key = distinct_key(graph_key(), lambda k: step.other_graph(k, shapes))
        step.note_graph(self.key)
        self.options, self.step, self._kwargs = options, step, compile_kwargs
        self._source = None if _symbolic(gm) else copy_graph(gm)
        self._compiled = _compile(gm, example_inputs, options, step, self.key, **compile_kwargs)
        self.recompiles = 0
        self._calls = 0
        self._runs = step.runs(self.key)  # shared by every compile of this frame
        self._waves = 0  # backwards run since this compile (the first wave warms up)
        self._trains = False  # a run has had an autograd node (a training graph)

    def __call__(self, *args: Any) -> Any:
        if self.step.is_stale(self.key):
            self._replan(args)
        # A step starts when its first graph runs with nothing in flight and ends when the
        # last run in flight has done its backward (NOTE [Measuring the step in training]).
        # The first wave after a compile still loads kernels and fills the runtime's buffers
        # (a pipeline stage's first call may be a shape probe without backward): not measured.
        warm = self._waves > 0 if self._trains else self._calls > 0
        starts = warm and self.key == self.step.start_key() and not self.step.in_flight
        if starts and (refused := self.step.over_budget_error()) is not None:
            raise refused  # NOTE [Step budgets]: a size is a promise
        if starts and self.step.meter is None and self.step.measure_due():
            self.step.meter = self._meter(args)
        self._calls += 1
        out = self._compiled(*args)
        if not self._count_run(out) and not self.step.in_flight \
                and self.key == self.step.first_key() and self.step.meter is not None:
            self.step.meter.running = False  # no backward follows: nothing to measure
            self.step.meter = None
        return out

    def _count_run(self, out: Any) -> bool:
        """Counts a run in flight until its backward (NOTE [Counting runs] in fxopt/runs.py;
        False: it has none)."""
        runs = self._runs

        def finish(backward: bool) -> None:
            runs.in_flight -= 1
            self.step.in_flight -= 1
            runs.backwards += backward
            if backward:
                self._waves += 1
            if runs.in_flight == 0:
                wave, runs.wave = runs.wave, 0
                if runs.backwards:  # runs dropped unused (a shape probe) say nothing
                    self._saw(wave)
                runs.backwards = 0
            if self.step.in_flight:
                return
            meter = self.step.meter
            if meter is not None:
                self.step.meter = None
                meter.stop()
            if stale := self.step.step_done():
                log.info("fxopt: re-planning %s for the order the step runs its graphs in "
                         "(NOTE [The step's runs])", ", ".join(stale))

        if not watch_run(out, finish):
            return False
        self._trains = True
        self.step.started_run(self.key)
        runs.in_flight += 1
        self.step.in_flight += 1
        runs.wave = max(runs.wave, runs.in_flight)
        return True

    def _saw(self, copies: int) -> None:
        planned = self.step.copies(self.key)
        stale = self.step.saw_copies(self.key, copies)
        if stale:
            log.warning("fxopt: %s had %d runs in flight before their backward (blocks sharing "
                        "one compiled graph, or microbatches), planned for %d; re-planning %s "
                        "(in_flight=%d plans it so from the first step)",
                        self.key, copies, planned, ", ".join(stale), copies)

    def _meter(self, args: Sequence[Any]) -> Any:
        """A meter for this step (NOTE [Measuring the step in training]), or None."""
        from fxopt.meter import StepMeter, cpu_unmeasurable_reason

        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if device == "cpu" and (why := cpu_unmeasurable_reason()) is not None:
            self.step.cannot_measure(why)
            return None
        if device not in ("cpu", "cuda"):
            self.step.cannot_measure(f"steps on {device} are not measured")
            return None
        compiles = self.step.compiles
        meter = StepMeter(device, lambda peak: self._measured(peak, compiles))
        meter.start()
        return meter

    def _measured(self, peak: int, compiles: int) -> None:
        from fxopt.config import format_bytes

        if self.step.compiles != compiles:
            return  # a graph compiled during this step: its memory is not the step's
        if self.step.agreement is not None:  # ranks re-plan alike: the largest rank's peak
            peak = self.step.agreement.number(peak)
        stale = self.step.measured(peak)
        predicted = self.step.planned_peak_bytes or 0
        excess = peak - predicted
        text = (f"fxopt: measured step peak {format_bytes(peak)}, predicted "
                f"{format_bytes(predicted)}")
        if excess > 0:
            # once counted, the outside memory is what lies on top of the graphs' live bytes
            # after their forwards, which can be more than the excess over the predicted peak
            outside = self.step.unplanned_bytes or excess
            text += (f"; {format_bytes(outside)} held outside the compiled graphs: "
                     f"{unplanned_hint(self.step.ordered_reports())}")
        if stale:
            text += f"; re-planning {', '.join(stale)} with it counted"
        log.log(logging.WARNING if stale else logging.INFO, "%s", text)

    def _replan(self, args: Sequence[Any]) -> None:
        if self._source is None:
            self.step.keep_plan(self.key)
            strict = self.options.budget is not None and self.options.budget.nbytes is not None
            log.log(logging.WARNING if strict else logging.INFO,
                    "fxopt: %s has symbolic sizes and keeps its plan; the step may exceed its "
                    "budget (give a larger budget or mark fewer dimensions dynamic)", self.key)
            return
        from fxopt.partition import copy_graph

        log.info("fxopt: re-planning %s for the step's budget", self.key)
        self._compiled = _compile(copy_graph(self._source), args, self.options, self.step,
                                  self.key, **self._kwargs)
        self.recompiles += 1
        self._waves = 0


def unplanned_hint(reports: Sequence[Any]) -> str:
    """Where memory outside the compiled graphs usually comes from, for this step."""
    hint = ("memory held by eager code between or after the compiled graphs, such as a loss "
            "computed on the model's outputs (compile the loss with the model)")
    outputs = [r.largest_output for r in reports if getattr(r, "largest_output", None)]
    if outputs:
        from fxopt.config import format_bytes

        big = max(outputs, key=lambda t: t.nbytes)
        hint += (f"; the largest tensor the graphs hand to eager code is {big.name} "
                 f"[{', '.join(big.shape)}] {big.dtype}, {format_bytes(big.nbytes)}")
    return hint


class FxoptBackend:
    """A `torch.compile` backend configured with fixed `Options`. Its graphs share one budget:
    the training step (NOTE [Step budgets] in fxopt/step.py)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.step = Step(options)

    def __repr__(self) -> str:
        return f"fxopt.backend({self.options})"

    def step_report(self) -> Any:
        """The step this backend's graphs make up (`fxopt.StepReport`)."""
        from fxopt.report.records import step_report

        return step_report(self.step)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                 **compile_kwargs: Any) -> CompiledFn:
        """`compile_kwargs` go to Inductor's `compile_fx` (`config_patches`, ...)."""
        return StepGraph(gm, example_inputs, self.options, self.step, **compile_kwargs)


def backend(**options: Any) -> FxoptBackend:
    """A backend for `torch.compile(model, backend=fxopt.backend(budget=0.5))`.

    Keyword arguments are the fields of `fxopt.Options`; FXOPT_* environment variables are not
    read here (options in code win over the environment). Use one backend per model: its
    graphs share the budget.
    """
    return FxoptBackend(Options(**options))


_ENTRY_POINT_BACKENDS: dict[Options, FxoptBackend] = {}


def entry_point_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                        options: Mapping[str, Any] | None = None) -> CompiledFn:
    """`torch.compile(model, backend="fxopt", options={...})`, registered by entry point.

    Options come from the FXOPT_* environment variables, overridden by `options=`. Graphs
    compiled with the same options share one step.
    """
    opts = Options.from_env(**dict(options or {}))
    be = _ENTRY_POINT_BACKENDS.setdefault(opts, FxoptBackend(opts))
    return be(gm, example_inputs)
