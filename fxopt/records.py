"""The process-wide list of reports, one per graph the backend compiled."""

from __future__ import annotations

import dataclasses
import threading

from fxopt.report import Report

_LOCK = threading.Lock()
_REPORTS: list[Report] = []


def add_report(report: Report) -> Report:
    """Stores a report, stamped with its position in the list, and returns the stamped one."""
    with _LOCK:
        report = dataclasses.replace(report, index=len(_REPORTS))
        _REPORTS.append(report)
    return report


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
