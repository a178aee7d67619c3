"""The `torch.compile` backend: AOTAutograd with Inductor's decompositions and fxopt's partition,
then Inductor code generation for the forward and backward graphs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fxopt.config import Options

CompiledFn = Callable[..., Any]


class FxoptBackend:
    """A `torch.compile` backend configured with fixed `Options`."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def __repr__(self) -> str:
        return f"fxopt.backend({self.options})"

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> CompiledFn:
        from torch._inductor.compile_fx import compile_fx

        from fxopt.partition import FxoptPartitioner

        # compile_fx runs AOTAutograd with Inductor's decompositions and joint-graph passes, then
        # calls the custom partitioner on the joint graph and compiles both halves with Inductor.
        # NOTE [Plans are never served from AOTAutograd's cache]: a cache hit would skip the
        # partitioner, leaving no report for the graph; the plan itself is cached on disk by the
        # solver, and Inductor's code cache still serves the compiled kernels.
        with torch._functorch.config.patch(enable_autograd_cache=False):
            return compile_fx(gm, example_inputs, config_patches={
                "custom_partitioner_fn": FxoptPartitioner(self.options)})


def backend(**options: Any) -> FxoptBackend:
    """A backend for `torch.compile(model, backend=fxopt.backend(budget=0.5))`.

    Keyword arguments are the fields of `fxopt.Options`; FXOPT_* environment variables are not
    read here (options in code win over the environment).
    """
    return FxoptBackend(Options(**options))


def entry_point_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                        options: Mapping[str, Any] | None = None) -> CompiledFn:
    """`torch.compile(model, backend="fxopt", options={...})`, registered by entry point.

    Options come from the FXOPT_* environment variables, overridden by `options=`.
    """
    return FxoptBackend(Options.from_env(**dict(options or {})))(gm, example_inputs)
