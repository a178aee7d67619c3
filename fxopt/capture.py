"""Capture a training step through Dynamo on fake tensors, for `fxopt.explain`.

The step runs exactly as under `torch.compile`: Dynamo captures the model (graph breaks and
all), AOTAutograd builds each joint graph with Inductor's decompositions and joint-graph
passes, and the same partition function the backend uses is called on it. Only code generation
is left out: the forward and backward graphs run as FX code on fake tensors, so no kernel of
the model runs and nothing is allocated.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxopt.compat import (
    aot_autograd,
    autograd_cache_off,
    backend_compiler_failed,
    detect_fake_mode,
    dynamo_reset,
    inductor_partition_with,
    make_boxed_func,
    mark_dynamic,
    select_decomp_table,
    set_inductor_fake_mode,
)
from fxopt.outside import StorageTimeline, TrackedFakeMode
from fxopt.runs import InFlight, distinct_key, is_other_graph, signature
from fxopt.step_runs import Outside

PartitionFn = Callable[..., tuple[fx.GraphModule, fx.GraphModule]]
LossFn = Callable[..., torch.Tensor]  # loss_fn(output, *targets) -> scalar


def default_loss(output: Any, *targets: Any) -> torch.Tensor:
    """A scalar output is the loss; a tensor is summed; an object with a `.loss` (Hugging Face
    model outputs) gives that loss."""
    if targets:
        raise TypeError("targets= were given without loss_fn=: pass the loss that takes them")
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        output = loss
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    if isinstance(output, torch.Tensor):
        return output if output.dim() == 0 else output.sum()
    raise TypeError(f"the model returned {type(output).__name__}, not a tensor: pass loss_fn= "
                    "to turn its output into a scalar loss")


def fake_device(model: nn.Module, gpu_profile: bool) -> torch.device:
    """Where the step is traced: CUDA for a GPU cost profile where CUDA is present, else the
    model's own device (a meta model: the CPU). Dynamo cannot trace fake CUDA tensors on a
    build without CUDA (the process aborts in a device guard), so there the CPU graph is
    traced and planned as a CUDA graph (`plan_joint(device_type="cuda")`)."""
    if gpu_profile and torch.cuda.is_available():
        return torch.device("cuda")
    for t in (*model.parameters(), *model.buffers()):
        if t.device.type not in ("meta",):
            return t.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _faked(model: nn.Module, mode: Any, device: torch.device) -> Iterator[None]:
    """Swaps every parameter and buffer of `model` for a fake tensor on `device`, and back."""
    saved: list[tuple[dict[str, Any], str, Any]] = []
    # Plain attributes too: a model that caches a tensor on first call (neuraloperator's
    # positional grid) must not keep a fake one. Each module's own attributes are put back.
    attributes = [(m, dict(m.__dict__)) for m in model.modules()]

    try:
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, value in list(table.items()):
                    if value is None:
                        continue
                    saved.append((table, name, value))
                    new = _fake_like(value, mode, device)
                    if isinstance(value, nn.Parameter):
                        new = nn.Parameter(new, requires_grad=value.requires_grad)
                    table[name] = new
        yield
    finally:
        for table, name, value in reversed(saved):
            table[name] = value
        for module, before in attributes:
            for name in [k for k in module.__dict__ if k not in before]:
                del module.__dict__[name]
            for name, value in before.items():
                if module.__dict__.get(name) is not value:
                    module.__dict__[name] = value


def _fake_like(t: torch.Tensor, mode: Any, device: torch.device) -> torch.Tensor:
    """A fake tensor of `t`'s size, strides and dtype on `device` (nothing is allocated)."""
    with mode:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


def fake_input(value: Any, mode: Any, device: torch.device) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    out = _fake_like(value, mode, device)
    out.requires_grad_(value.requires_grad)
    dynamic = getattr(value, "_dynamo_dynamic_indices", None)  # the user's mark_dynamic
    if dynamic:
        mark_dynamic(out, sorted(dynamic))
    return out


class CaptureBackend:
    """A Dynamo backend: AOTAutograd with Inductor's decompositions, joint-graph passes and the
    given partition; both halves run as FX graphs on fake tensors. Counts the graphs, and the
    runs of each training graph in flight at once (NOTE [Counting runs] in fxopt/runs.py)."""

    def __init__(self, partition: PartitionFn, key_of: Callable[[], str] = lambda: "graph",
                 pass_key: bool = False, timeline: StorageTimeline | None = None) -> None:
        """`key_of()`: the frame being compiled (`fxopt.hook.graph_key`); each training graph
        gets a key from it (NOTE [Graphs of one frame] in fxopt/runs.py), which `partition`
        is given as `key=` with `pass_key`. `timeline`: told where the training runs are
        (NOTE [Memory outside the graphs] in fxopt/outside.py)."""
        self.timeline = timeline
        self.partitions = 0
        # the runs of each training graph, by its key: a frame compiled again (other guards)
        # with no run in flight is the same graph of the step, as the backend counts it
        self.in_flight: dict[str, InFlight] = {}
        self.key_of = key_of
        self.key = "graph"  # of the graph being compiled
        self.order: list[str] = []  # the training runs, forward order (NOTE [The step's runs])
        self.most = 0  # the most runs in flight at once
        self.signatures: dict[str, tuple] = {}  # each graph's input shapes, by key
        self.saved: dict[str, int] = {}  # how many values each forward saves, by key

        def counted(*args: Any, **kwargs: Any) -> tuple[fx.GraphModule, fx.GraphModule]:
            self.partitions += 1
            fwd, bwd = partition(*args, **({"key": self.key} if pass_key else {}), **kwargs)
            self.saved[self.key] = sum(1 for n in bwd.graph.find_nodes(op="placeholder")
                                       if not n.name.startswith("tangents"))
            return fwd, bwd

        self.partition: PartitionFn = counted
        self.graphs = 0

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        self.graphs += 1
        before = self.partitions
        shapes = signature(example_inputs)
        self.key = key = distinct_key(self.key_of(), lambda k: is_other_graph(
            self.signatures, k, shapes, k in self.in_flight and self.in_flight[k].now > 0))
        tl = self.timeline
        boxed = lambda g, _inputs: make_boxed_func(g)  # noqa: E731 - runs on fake tensors
        fw, bw = boxed, boxed
        if tl is not None:
            fw = lambda g, _inputs: _boxed(make_boxed_func(g), lambda _a: None,  # noqa: E731
                                           lambda _t, out: tl.forward_raw(out, self.saved[key]))
            bw = lambda g, _inputs: _boxed(  # noqa: E731
                make_boxed_func(g), lambda args: tl.backward_start(key, args), tl.backward_end)
        inner = aot_autograd(
            fw_compiler=fw, bw_compiler=bw, inference_compiler=boxed,
            partition_fn=inductor_partition_with(self.partition),
            decompositions=select_decomp_table())
        # Inductor's joint-graph passes read the fake mode from its virtualized state.
        with set_inductor_fake_mode(detect_fake_mode(example_inputs)), autograd_cache_off():
            run = inner(gm, example_inputs)
        if tl is not None:  # what the compile left in cycles is not the step's memory
            gc.collect()
        if self.partitions == before:  # no backward: nothing held
            return run
        runs = self.in_flight.setdefault(key, InFlight())

        def counted_run(*args: Any) -> Any:
            t = tl.forward_start(key) if tl is not None else 0
            out = run(*args)
            started = runs.started(out)
            if tl is not None:
                tl.forward_end(t, out, started)
            if started:
                self.order.append(key)
                self.most = max(self.most, sum(r.now for r in self.in_flight.values()))
            return out

        return counted_run


def _boxed(run: Callable[[list], Any], before: Callable[[list], Any],
           after: Callable[[Any, Any], Any]) -> Callable[[list], Any]:
    """A boxed function (arguments as a list, which it may clear) that calls `before(args)`
    and `after(what before returned, outputs)` around `run`; `after` may return the outputs
    to hand on instead (None: the same)."""
    def call(args: list) -> Any:
        token = before(args)
        out = run(args)
        new = after(token, out)
        return out if new is None else new

    call._boxed_call = True  # type: ignore[attr-defined]
    return call


@dataclass(frozen=True)
class Captured:
    graphs: int  # how many graphs Dynamo built
    in_flight: dict[str, int]  # most runs of each training graph in flight, by graph key
    # the training runs in forward order, every forward before the first backward (NOTE [The
    # step's runs] in fxopt/step_runs.py); None where backwards came between
    order: tuple[str, ...] | None = None
    # the memory outside the graphs along those runs (NOTE [Memory outside the graphs] in
    # fxopt/outside.py); None where the order is
    outside: Outside | None = None


def capture_step(model: nn.Module, inputs: Sequence[Any], kwargs: dict[str, Any],
                 loss_fn: LossFn | None, targets: Sequence[Any], partition: PartitionFn, *,
                 device: torch.device, key_of: Callable[[], str] = lambda: "graph",
                 cpu_kernels: bool = True) -> Captured:
    """Runs `loss_fn(torch.compile(model)(*inputs, **kwargs), *targets).backward()` on fake
    tensors, calling `partition(gm, joint_inputs, key=..., **kwargs)` on every joint graph with
    its key (from `key_of()`, the frame being compiled: `fxopt.hook.graph_key`).
    `cpu_kernels`: the traced step stands for a CPU step (NOTE [CPU losses keep their
    elementwise buffer] in fxopt/outside.py)."""
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no parameter that requires grad: there is no backward "
                         "pass to plan")
    loss_of = loss_fn or default_loss
    timeline = StorageTimeline(cpu_kernels=cpu_kernels and device.type == "cpu")
    mode = TrackedFakeMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True, timeline=timeline)
    backend = CaptureBackend(partition, key_of, pass_key=True, timeline=timeline)
    fake = functools.partial(fake_input, mode=mode, device=device)
    args = [fake(x) for x in inputs]
    kw = {k: fake(v) for k, v in kwargs.items()}
    fake_targets = [fake(t) for t in targets]
    dynamo_reset()  # the step is captured afresh, not served from an earlier compile
    try:
        with _faked(model, mode, device), _no_real_tensors(mode):
            compiled = torch.compile(model, backend=backend)
            timeline.existing([*model.parameters(), *model.buffers(), args, kw, fake_targets])
            with mode:
                timeline.start()
                loss = loss_of(compiled(*args, **kw), *fake_targets)
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise TypeError("loss_fn must return a scalar tensor")
                loss.backward()
                del loss
                timeline.stop()
    finally:
        dynamo_reset()
    order = tuple(backend.order) if backend.most == len(backend.order) else None
    outside = timeline.outside() if order is not None else None
    return Captured(backend.graphs, {k: r.most for k, r in backend.in_flight.items()}, order,
                    outside)


@contextlib.contextmanager
def _no_real_tensors(mode: Any) -> Iterator[None]:
    """A real tensor reaching the fake step (a target the loss closes over) gets a clear error."""
    BackendCompilerFailed = backend_compiler_failed()

    try:
        yield
    except BackendCompilerFailed as err:
        # An error of fxopt's own (an unreachable absolute budget, bad options, a search the
        # wall-clock safety net stopped) is raised as itself, not inside Dynamo's wrapper.
        inner = getattr(err, "inner_exception", None)
        if isinstance(inner, (ValueError, TypeError, RuntimeError)) and \
                type(inner).__module__.startswith("fxopt"):
            raise inner from None
        raise
    except AssertionError as err:
        if "FakeTensor" not in str(err) and "fake" not in str(err).lower():
            raise
        raise TypeError(
            "the model or loss_fn uses a real tensor that fxopt.explain did not fake (a target "
            "the loss closes over, a tensor created outside the model): pass targets with "
            "targets=(...) so that loss_fn(output, *targets) receives them, or keep such "
            "tensors as module buffers") from err
