"""Every private PyTorch API fxopt uses, in one module.

When torch changes, this is the file to read and fix: each name says what fxopt needs it for.
`tests/test_house.py` checks that no other fxopt module reaches into a private torch module.
Inductor, Dynamo and AOTAutograd internals are imported on first use, so that `import fxopt`
stays cheap and the FXOPT hook can run inside `import torch`.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch._guards import CompileContext, detect_fake_mode
from torch._inductor.custom_graph_pass import CustomPartitionerFn
from torch._ops import HigherOrderOperator, OpOverload, OpOverloadPacket
from torch._prims_common import is_non_overlapping_and_dense_or_false as is_dense
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake
from torch.utils._pytree import tree_leaves

__all__ = [
    "CompileContext", "CustomPartitionerFn", "FakeTensorMode", "HigherOrderOperator",
    "OpOverload", "OpOverloadPacket", "TESTED_TORCH", "aot_autograd", "autograd_cache_off",
    "backend_compiler_failed", "check_torch_version", "compile_fx", "current_frame_id",
    "default_partition", "detect_fake_mode", "dynamo_reset", "functional_tensor_type",
    "functorch_config", "inductor_choices", "inductor_compile_inner", "inductor_config",
    "inductor_lowering", "inductor_partition_fn",
    "inductor_partition_with", "inductor_wrapper_class", "is_dense", "is_fake",
    "make_boxed_func", "mark_dynamic",
    "min_cut_partition", "partitioners", "saved_for_backward_descriptor", "select_decomp_table",
    "set_inductor_fake_mode", "tree_leaves", "outside_tracing",
]

MIN_TORCH = (2, 9)  # CustomPartitionerFn, AOTAutograd's output descriptors
TESTED_TORCH = (2, 13)  # the newest torch these names were checked against


def _version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_torch_version() -> None:
    """Refuses a torch older than fxopt needs; warns once on one newer than it was checked on."""
    have = _version()
    if have < MIN_TORCH:
        raise ImportError(f"fxopt needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (it uses "
                          f"Inductor's custom partitioner hook); found {torch.__version__}")
    if have > TESTED_TORCH:
        warnings.warn(f"fxopt was checked against torch up to {TESTED_TORCH[0]}."
                      f"{TESTED_TORCH[1]}; torch {torch.__version__} may have moved a private "
                      "API it uses (all of them are in fxopt/compat.py)", RuntimeWarning,
                      stacklevel=2)


check_torch_version()


# ---- configuration ----------------------------------------------------------------------------

def inductor_config() -> Any:
    """`torch._inductor.config`: the custom partitioner hook lives there."""
    import torch._inductor.config as config

    return config


def functorch_config() -> Any:
    """`torch._functorch.config`: AOTAutograd's cache switch."""
    import torch._functorch.config as config

    return config


def autograd_cache_off() -> Any:
    """A context in which AOTAutograd serves no cached graph (NOTE [Plans are never served from
    AOTAutograd's cache] in fxopt/compiler.py)."""
    return functorch_config().patch(enable_autograd_cache=False)


# ---- compiling ---------------------------------------------------------------------------------

def compile_fx(*args: Any, **kwargs: Any) -> Any:
    """Inductor's `compile_fx`: AOTAutograd, the partitioner hook, code generation."""
    from torch._inductor.compile_fx import compile_fx as inductor_compile

    return inductor_compile(*args, **kwargs)


def inductor_compile_inner() -> Callable[..., Any]:
    """Inductor's `compile_fx_inner`: lowers, schedules and generates one forward or backward
    graph (`compile_fx`'s default `inner_compile`)."""
    from torch._inductor.compile_fx import compile_fx_inner

    return compile_fx_inner


def inductor_choices() -> tuple[Any, Callable[[Any], Any]]:
    """The heuristics object Inductor's scheduler asks about fusions (`V.choices`, an
    `InductorChoices`), and the setter of a thread's handler, whose result is a context that
    restores the previous one."""
    from torch._inductor.virtualized import V

    return V.choices, V.set_choices_handler


def inductor_partition_fn() -> Any:
    """Inductor's partition function, which runs its joint-graph passes before the hook."""
    from torch._inductor import compile_fx as module

    return module.partition_fn


class _OneShotPartitioner(CustomPartitionerFn):
    """`partition` in the shape Inductor's `custom_partitioner_fn` takes (torch 2.11)."""

    def __init__(self, partition: Callable[..., Any]) -> None:
        self.partition = partition

    def uuid(self) -> str | None:
        return None  # never cached: the capture runs with the compile caches off

    def __call__(self, gm: Any, joint_inputs: Any, **kwargs: Any) -> Any:
        kwargs.pop("compiler", None)
        return self.partition(gm, joint_inputs, **kwargs)


def inductor_partition_with(partition: Callable[..., Any]) -> Callable[..., Any]:
    """Inductor's partition function (its joint-graph passes first) ending in `partition`.

    torch 2.13 takes `partitioner_fn_override`; torch 2.11 has no such argument and reads
    `config.custom_partitioner_fn`, which is then set for the call only."""
    fn = inductor_partition_fn()
    if "partitioner_fn_override" in inspect.signature(fn).parameters:
        return functools.partial(fn, partitioner_fn_override=partition)
    from torch._inductor import config

    def run(gm: Any, joint_inputs: Any, **kwargs: Any) -> Any:
        with config.patch(custom_partitioner_fn=_OneShotPartitioner(partition)):
            return fn(gm, joint_inputs, **kwargs)

    return run


def inductor_wrapper_class() -> Any:
    """The object plain `torch.compile(model)` compiles through (None on another torch)."""
    return getattr(torch, "_TorchCompileInductorWrapper", None)


def select_decomp_table() -> Any:
    from torch._inductor.decomposition import select_decomp_table as table

    return table()


def inductor_lowering() -> Any:
    """`torch._inductor.lowering` (which ops Inductor lowers, falls back on, realises)."""
    from torch._inductor import lowering

    return lowering


def set_inductor_fake_mode(mode: Any) -> Any:
    """Inductor's joint-graph passes read the fake mode from its virtualized state."""
    from torch._inductor.virtualized import V

    return V.set_fake_mode(mode)


def aot_autograd(**kwargs: Any) -> Any:
    from torch._dynamo.backends.common import aot_autograd as make

    return make(**kwargs)


def make_boxed_func(fn: Any) -> Any:
    from torch._functorch._aot_autograd.utils import make_boxed_func as boxed

    return boxed(fn)


def saved_for_backward_descriptor() -> type:
    """AOTAutograd's descriptor of a forward output saved for the backward."""
    from torch._functorch._aot_autograd.descriptors import SavedForBackwardsAOTOutput

    return SavedForBackwardsAOTOutput


def partitioners() -> Any:
    """`torch._functorch.partitioners`: node classification and graph extraction."""
    from torch._functorch import partitioners as module

    return module


def min_cut_partition(*args: Any, **kwargs: Any) -> Any:
    """PyTorch's default partition (Inductor's min-cut rematerialisation)."""
    return partitioners().min_cut_rematerialization_partition(*args, **kwargs)


def default_partition(*args: Any, **kwargs: Any) -> Any:
    """PyTorch's save-everything partition."""
    return partitioners().default_partition(*args, **kwargs)


# ---- Dynamo -------------------------------------------------------------------------------------

def current_frame_id() -> int | None:
    """The frame Dynamo is compiling (None outside a compile)."""
    compile_id = CompileContext.current_compile_id()
    return None if compile_id is None else compile_id.frame_id


def dynamo_reset() -> None:
    torch._dynamo.reset()


def mark_dynamic(t: torch.Tensor, dims: Any) -> None:
    torch._dynamo.mark_dynamic(t, dims)


def backend_compiler_failed() -> type:
    from torch._dynamo.exc import BackendCompilerFailed

    return BackendCompilerFailed


def functional_tensor_type() -> type:
    from torch._subclasses.functional_tensor import FunctionalTensor

    return FunctionalTensor


def outside_tracing() -> Any:
    """A context in which real tensors are made (the partitioner runs under a fake mode):
    for collectives at compile time (fxopt.distributed)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily()


def in_backward() -> bool:
    """Whether the autograd engine is running a backward in this thread."""
    return torch._C._current_graph_task_id() != -1


def weak_id_dict() -> Any:
    """A dictionary keyed by object identity that does not keep its keys alive (storages)."""
    return torch.utils.weak.WeakIdKeyDictionary()
