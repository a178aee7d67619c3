"""The hook Inductor calls with each joint forward-backward graph.

Inductor runs its joint-graph passes, then calls `config.custom_partitioner_fn(joint_gm,
joint_inputs, num_fwd_outputs=..., ...)` and compiles the forward and backward graphs it returns.
`FxoptPartitioner` is that object: it hands the graph to the compile's owner
(`fxopt.partition.partition_joint`) and keeps the report (`fxopt.report.records`, the dump).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from fxopt.compat import CustomPartitionerFn, current_frame_id
from fxopt.config import Options, OptionsError
from fxopt.partition import partition_joint
from fxopt.report.dump import dump_report
from fxopt.report.model import Report
from fxopt.report.records import add_report
from fxopt.solver import InfeasibleBudgetError, SearchTimeoutError
from fxopt.step import Step

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
    """Partitions the joint graph under fxopt's options and records what it did.

    `step`: the graphs this one shares the budget with (NOTE [Step budgets] in fxopt/step.py);
    a partitioner of its own makes one. `key`: which graph of the step this is; by default
    Dynamo's frame being compiled, so that a recompile of the same code replaces its graph."""

    def __init__(self, options: Options, step: Step | None = None, key: str | None = None
                 ) -> None:
        self.options = options
        self.step = step if step is not None else Step(options)
        self.key = key
        if options.debug:
            _enable_debug_logging()

    def uuid(self) -> str:
        return hashlib.sha256(
            f"fxopt|{source_fingerprint()}|{self.options.cache_key()}|{torch.__version__}".encode()
        ).hexdigest()

    def __call__(self, gm: fx.GraphModule, joint_inputs: Any, **kwargs: Any
                 ) -> tuple[fx.GraphModule, fx.GraphModule]:
        try:
            fwd, bwd, report = partition_joint(gm, joint_inputs, self.options, step=self.step,
                                               key=self.key or graph_key(), **kwargs)
        except (InfeasibleBudgetError, SearchTimeoutError, OptionsError) as err:
            if isinstance(getattr(err, "report", None), Report):
                self._keep(err.report)  # the report stays inspectable; the error goes on
            raise
        self._keep(report)
        return fwd, bwd

    def _keep(self, report: Report) -> None:
        report = add_report(report, self.step)
        self.step.attach(report.step_key, report)
        if self.options.dump_dir:
            dump_report(report, self.options.dump_dir)
        if self.options.debug:
            log.info("%s", report.summary())


def graph_key() -> str:
    """Which graph of the step is being compiled: Dynamo's frame (see `FxoptPartitioner`)."""
    frame = current_frame_id()
    return "graph" if frame is None else f"frame {frame}"


def _enable_debug_logging() -> None:
    """FXOPT_DEBUG / debug=True: one INFO line per graph on stderr unless logging is configured."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[fxopt] %(message)s"))
        log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
