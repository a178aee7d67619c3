"""Runs inside `import torch` (entry point group `torch.backends`): with FXOPT=1, plain
`torch.compile(model)` goes through fxopt's partitioner.

This module must stay cheap and must never make `import torch` fail: without FXOPT it returns
before importing anything, and any failure becomes a warning.
"""

from __future__ import annotations

import sys
import warnings


def activate() -> None:
    from fxopt.config import env_requested

    if not env_requested():
        return
    # A failure here must not break `import torch` for an unrelated script: report it instead.
    try:
        _install()
    except Exception as err:  # noqa: BLE001 - reported in full below, import continues
        warnings.warn(f"fxopt: FXOPT is set but fxopt could not be enabled: {err!r}; "
                      "torch.compile runs without fxopt.", RuntimeWarning, stacklevel=2)


# NOTE [Environment activation]
# `torch.compile(model)` uses the Inductor backend, which partitions joint graphs with
# `torch._inductor.config.custom_partitioner_fn` when it is set. The hook sets it at import
# time, unless the user already set their own. Each `torch.compile(model)` call makes one
# `torch._TorchCompileInductorWrapper`; the hook also routes that object's compiles through an
# `FxoptBackend` of its own, so that the graphs of one compiled model share one step budget and
# can be re-planned (NOTE [Step budgets] in fxopt/step.py), with the mode's Inductor options
# passed on. Bad FXOPT_* values must not break `import torch`, so they install a partitioner
# that raises the error at the first training compile, where the user sees it, and a warning is
# printed right away.
def _install() -> None:
    from fxopt.compat import inductor_config
    from fxopt.config import Options, OptionsError, env_enabled
    from fxopt.env_partitioner import InvalidEnvironmentPartitioner
    from fxopt.hook import FxoptPartitioner

    partitioner: FxoptPartitioner | InvalidEnvironmentPartitioner
    try:
        if not env_enabled():
            return
        partitioner = FxoptPartitioner(Options.from_env())
    except OptionsError as err:
        print(f"fxopt: {err}", file=sys.stderr)
        partitioner = InvalidEnvironmentPartitioner(err)
    config = inductor_config()
    if config.custom_partitioner_fn is None:
        config.custom_partitioner_fn = partitioner
        if isinstance(partitioner, FxoptPartitioner):
            _route_inductor(partitioner.options)
        # See NOTE [Plans are never served from AOTAutograd's cache] in fxopt/compiler.py.
        from fxopt.compat import functorch_config

        functorch_config().enable_autograd_cache = False



def _route_inductor(options: object) -> None:
    """Plain `torch.compile(model)` compiles through a step-owning fxopt backend per model."""

    from fxopt.compat import inductor_wrapper_class

    wrapper = inductor_wrapper_class()
    if wrapper is None or getattr(wrapper, "_fxopt_routed", False):
        return  # another torch: the partitioner alone still plans each graph
    inductor_call = wrapper.__call__

    def __call__(self, model_, inputs_, *, config_patches=None):  # noqa: N807
        from fxopt.compiler import FxoptBackend

        be = self.__dict__.get("_fxopt_backend")
        if be is None:
            be = self.__dict__["_fxopt_backend"] = FxoptBackend(options)
        patches = {**self.config, **(config_patches or {})}
        return be(model_, inputs_, config_patches=patches,
                  **({"compile_region_name": self.name} if hasattr(self, "name") else {}))

    __call__.__wrapped__ = inductor_call  # type: ignore[attr-defined]
    wrapper.__call__ = __call__
    wrapper._fxopt_routed = True
