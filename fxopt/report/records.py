"""The process-wide list of reports, one per graph the backend compiled."""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING

from fxopt.report.model import Report, StepReport

if TYPE_CHECKING:
    from fxopt.step import Step

_LOCK = threading.Lock()
_REPORTS: list[Report] = []
_LAST_STEP: list[Step] = []  # the step whose graph was compiled last


def add_report(report: Report, step: Step | None = None) -> Report:
    """Stores a report, stamped with its position in the list, and returns the stamped one;
    `step`: the step its graph belongs to (the one `step_report()` describes from now on)."""
    with _LOCK:
        report = dataclasses.replace(report, index=len(_REPORTS))
        _REPORTS.append(report)
        if step is not None:
            _LAST_STEP[:] = [step]
    return report


def step_report(step: Step | None = None) -> StepReport:
    """The training step as a whole (`StepReport`): its graphs' latest reports in the order the
    step runs them, the predicted step peak and, once a step ran under a budget, the measured
    one. Default: the step of the graph fxopt compiled last."""
    if step is None:
        with _LOCK:
            if not _LAST_STEP:
                raise LookupError("fxopt has compiled no training graph in this process yet")
            step = _LAST_STEP[0]
    reports = tuple(step.ordered_reports())
    return StepReport(reports, len(reports), sum(r.seconds for r in reports),
                      measured_peak_bytes=step.measured_peak_bytes,
                      unplanned_bytes=step.unplanned_bytes, note=step.measure_note,
                      copies=tuple(step.ordered_copies()), reserved_bytes=step.options.reserved,
                      order=step.run_order([r.step_key for r in reports]))


def reports() -> tuple[Report, ...]:
    """Every graph fxopt partitioned in this process, oldest first (graph breaks give several)."""
    with _LOCK:
        return tuple(_REPORTS)


def last_report() -> Report:
    """The report of the most recent graph the backend compiled."""
    with _LOCK:
        if not _REPORTS:
            raise LookupError("fxopt has compiled no training graph in this process yet: run a "
                              "forward and backward through torch.compile(..., backend='fxopt') "
                              "first, or use fxopt.explain(model, *inputs)")
        return _REPORTS[-1]


def clear_reports() -> None:
    with _LOCK:
        _REPORTS.clear()
        _LAST_STEP.clear()
