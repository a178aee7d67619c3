"""Tracing a training step with fake tensors, for `fxopt.explain`: no kernel of the model runs.

The joint graph is built the way `torch.compile` builds it (AOTAutograd with Inductor's
decompositions, then Inductor's joint-graph passes) and handed to the same partition function
the backend uses, so the report matches what a compile would do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch._functorch._aot_autograd.utils import make_boxed_func
from torch._functorch.aot_autograd import aot_function
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

PartitionFn = Callable[..., tuple[fx.GraphModule, fx.GraphModule]]
LossFn = Callable[..., torch.Tensor]  # loss_fn(output, *targets) -> scalar


def _default_loss(output: Any, *targets: Any) -> torch.Tensor:
    if targets:
        raise TypeError("targets= were given without loss_fn=: pass the loss that takes them")
    if isinstance(output, torch.Tensor):
        return output if output.dim() == 0 else output.sum()
    raise TypeError(f"the model returned {type(output).__name__}, not a tensor: pass loss_fn= "
                    "to turn its output into a scalar loss")


def trace_training_step(model: nn.Module, example_inputs: Sequence[Any],
                        loss_fn: LossFn | None, partition: PartitionFn,
                        targets: Sequence[Any] = ()) -> None:
    """Builds the joint graph of `loss_fn(model(*example_inputs))` + backward and calls
    `partition(joint_gm, joint_inputs, **kwargs)` on it, all on fake tensors. `targets` are
    passed to `loss_fn` after the output (faked like the inputs).

    Sizes are traced symbolically; a model whose graph AOTAutograd cannot build with symbolic
    sizes (Python scalars computed from sizes, as batch norm's variance correction) is traced
    again with static sizes. Errors raised by `partition` itself are never retried."""
    reached: list[bool] = []

    def partition_once(*args: Any, **kwargs: Any) -> tuple[fx.GraphModule, fx.GraphModule]:
        reached.append(True)
        return partition(*args, **kwargs)

    try:
        _trace(model, example_inputs, targets, loss_fn, partition_once, static_shapes=False)
    except Exception:
        if reached:
            raise
        try:
            _trace(model, example_inputs, targets, loss_fn, partition, static_shapes=True)
        except AssertionError as err:
            if "FakeTensor" not in str(err):
                raise
            raise TypeError(
                "the model or loss_fn uses a real tensor that fxopt.explain did not fake (a "
                "target the loss closes over, a tensor created outside the model): pass "
                "targets with targets=(...) so that loss_fn(output, *targets) receives them, "
                "or keep such tensors as module buffers") from err


def _trace(model: nn.Module, example_inputs: Sequence[Any], targets: Sequence[Any],
           loss_fn: LossFn | None, partition: PartitionFn, *, static_shapes: bool) -> None:
    from torch._inductor import compile_fx
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.virtualized import V

    loss_of = loss_fn or _default_loss
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    if not any(p.requires_grad for p in params.values()):
        raise ValueError("the model has no parameter that requires grad: there is no backward "
                         "pass to plan")
    param_names, buffer_names = list(params), list(buffers)

    n_inputs = len(example_inputs)

    def step(param_values: list[torch.Tensor], buffer_values: list[torch.Tensor],
             *values: Any) -> torch.Tensor:
        inputs, target_values = values[:n_inputs], values[n_inputs:]
        state = {**dict(zip(param_names, param_values)), **dict(zip(buffer_names, buffer_values))}
        loss = loss_of(torch.func.functional_call(model, state, inputs), *target_values)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError("loss_fn must return a scalar tensor")
        return loss

    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=False,
                          static_shapes=static_shapes)

    # Meta tensors carry no device to compute on, and autograd does not trace through meta
    # kernels the way it does on a real device: they become fake tensors on the device the
    # step would run on (CUDA when present, else CPU); nothing is allocated either way.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def fake(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_meta:
            with mode:
                out = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype,
                                          device=device)
        else:
            out = mode.from_tensor(value)
        if isinstance(value, nn.Parameter) and value.requires_grad:
            out.requires_grad_(True)
        return out

    fake_params = [fake(p) for p in params.values()]
    fake_buffers = [fake(b) for b in buffers.values()]
    fake_inputs = [fake(x) for x in (*example_inputs, *targets)]

    boxed = lambda gm, _inputs: make_boxed_func(gm)  # noqa: E731 - graphs run on fake tensors
    compiled = aot_function(
        step, fw_compiler=boxed, bw_compiler=boxed,
        partition_fn=functools.partial(compile_fx.partition_fn, partitioner_fn_override=partition),
        decompositions=select_decomp_table())
    # Inductor's joint-graph passes read the fake mode from its virtualized state.
    with V.set_fake_mode(mode), mode:
        compiled(fake_params, fake_buffers, *fake_inputs)
