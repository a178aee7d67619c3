"""What fxopt did, to the side of the data path: the report model (`model`), its text and HTML
views (`text`, `html`, sharing `graph_code`), the dump folder (`dump`) and the process-wide list
of reports (`records`)."""

from __future__ import annotations

from fxopt.report.model import Report, SavedTensor, Stage, StepReport, TensorRow, Timeline

__all__ = ["Report", "SavedTensor", "Stage", "StepReport", "TensorRow", "Timeline"]
