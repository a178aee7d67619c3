"""On-disk plan cache keyed by the Problem, the solver options and the budget in bytes, so a
second run of the same script does not solve again."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from fxopt.plan import Plan
from fxopt.solver.errors import InvalidPlanError
from fxopt.solver.options import SolverOptions
from fxopt.solver.problem import Problem
from fxopt.solver.validate import validate

_FORMAT = "fxopt-plan-v2"


def cache_key(problem: Problem, options: SolverOptions, budget_bytes: int) -> str:
    text = f"{_FORMAT}:{problem.content_hash}:{options.content_hash}:{budget_bytes}"
    return hashlib.sha256(text.encode()).hexdigest()


class PlanCache:
    """One JSON file per key under `directory` (created on first write). Writes go to a
    temporary file in the same directory and are renamed into place, so readers never see a
    partial file and concurrent writers (ranks) leave one complete plan."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str, problem: Problem) -> Plan | None:
        """The cached plan, or None when absent, unreadable or not valid for `problem`."""
        try:
            text = self.path(key).read_text()
        except FileNotFoundError:
            return None
        try:
            plan = Plan.from_json(text)
            validate(problem, plan)
        except (ValueError, KeyError, TypeError, InvalidPlanError):
            return None  # stale or corrupt entry: solve again and overwrite it
        return plan

    def store(self, key: str, plan: Plan) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(plan.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path(key)
