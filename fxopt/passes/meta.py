"""What a pass raises when a plan cannot be applied safely (provenance tags: fxopt.plan)."""

from __future__ import annotations


class PlanApplyError(RuntimeError):
    """A plan cannot be applied safely to this graph (the backend falls back, with a warning)."""
