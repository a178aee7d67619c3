"""fxopt's partition function: the hook Inductor calls with the joint forward-backward graph.

Inductor runs its joint-graph passes, then calls `config.custom_partitioner_fn(joint_gm,
joint_inputs, num_fwd_outputs=..., ...)` and compiles the forward and backward graphs it returns.
`FxoptPartitioner` is that object. Each call leaves a `Report` (see `fxopt.records`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._inductor.custom_graph_pass import CustomPartitionerFn

from fxopt.config import Options
from fxopt.records import add_report
from fxopt.report import Report, SavedTensor, Stage

log = logging.getLogger("fxopt")

_PACKAGE_ROOT = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """A hash of fxopt's own source files: a changed pass must never hit a stale compile cache."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_ROOT.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# NOTE [Compile caches]
# Inductor's FX graph cache and AOTAutograd's cache key a compiled graph by, among other things,
# `custom_partitioner_fn.uuid()`. On a cache hit the partitioner is not called at all. If the
# uuid did not change with fxopt's source or with any option, a second run with another budget
# (or after plain torch.compile populated the cache) would silently reuse a graph fxopt never
# saw. The uuid therefore folds in the source fingerprint, every option and torch's version.
class FxoptPartitioner(CustomPartitionerFn):
    """Partitions the joint graph under fxopt's options and records what it did."""

    def __init__(self, options: Options) -> None:
        self.options = options
        if options.debug:
            _enable_debug_logging()

    def uuid(self) -> str:
        return hashlib.sha256(
            f"fxopt|{source_fingerprint()}|{self.options.cache_key()}|{torch.__version__}".encode()
        ).hexdigest()

    def __call__(self, gm: fx.GraphModule, joint_inputs: Any, **kwargs: Any
                 ) -> tuple[fx.GraphModule, fx.GraphModule]:
        fwd, bwd, report = partition_joint(gm, joint_inputs, self.options, **kwargs)
        report = add_report(report)
        if self.options.debug:
            log.info("%s", report.summary())
        return fwd, bwd


def partition_joint(gm: fx.GraphModule, joint_inputs: Any, options: Options, **kwargs: Any
                    ) -> tuple[fx.GraphModule, fx.GraphModule, Report]:
    """Partitions one joint graph under `options`; returns both halves and the report."""
    start = time.perf_counter()
    stages: list[Stage] = []
    t0 = time.perf_counter()
    # Until the planner decides, the partition is PyTorch's min-cut; the report is real.
    fwd, bwd = min_cut_rematerialization_partition(gm, joint_inputs, **kwargs)
    stages.append(Stage("partition", time.perf_counter() - t0))
    saved = _saved_tensors(bwd)
    report = Report(
        options=options, strategy="min-cut", fallback_reason=None, plan=None, peak_bytes=None,
        baseline_peak_bytes=None, budget_bytes=None, solve_seconds=0.0,
        joint_ops=_count_ops(gm), forward_ops=_count_ops(fwd), backward_ops=_count_ops(bwd),
        saved=saved, seconds=time.perf_counter() - start, stages=tuple(stages),
        forward_graph=fwd, backward_graph=bwd)
    return fwd, bwd, report


def _enable_debug_logging() -> None:
    """FXOPT_DEBUG / debug=True: one INFO line per graph on stderr unless logging is configured."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[fxopt] %(message)s"))
        log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)


def _hint(value: Any) -> int:
    if isinstance(value, torch.SymInt):
        return int(value.node.hint) if value.node.has_hint() else int(value.node.expr.subs({}))
    return int(value)


def _saved_tensors(bwd: fx.GraphModule) -> tuple[SavedTensor, ...]:
    saved = []
    for node in bwd.graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if node.name.startswith("tangents") or not isinstance(val, torch.Tensor):
            continue
        shape = tuple(str(d) for d in val.shape)
        numel = 1
        for d in val.shape:
            numel *= _hint(d)
        saved.append(SavedTensor(node.name, shape, str(val.dtype).removeprefix("torch."),
                                 numel * val.element_size()))
    return tuple(saved)


def _count_ops(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function")
