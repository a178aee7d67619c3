"""The plan and its vocabulary: plain data on the ground floor, shared by the solver (which
produces a `Plan`), the passes (which apply it and tag what they insert) and the report.

Nothing here imports torch or any other fxopt module.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

LOWBIT_BLOCK = 128  # elements per fp32 scale in a low-bit tensor stored by blocks


# NOTE [String enums]
# The plan's enums are `str` subclasses whose value is what users type and files hold ("fp8",
# "recompute", "OPTIMAL"), so that user input, dict keys, JSON plans and cached plans read as
# before. With `str` as the first base, equality and hashing are the string's: the member and
# its value are the same dict key ({LowbitFormat.FP8: x}["fp8"] is x). What differs is
# printing: since Python 3.11, str(member) and f"{member}" give "LowbitFormat.FP8" (Enum's
# __str__ comes before str's), so a member formatted into a node name, a message or a lookup
# through str() would not read "fp8". Each enum here returns its value from __str__.
class LowbitFormat(str, enum.Enum):
    """The storage formats of a low-bit saved tensor (NOTE [String enums])."""

    FP8 = "fp8"  # float8 e4m3fn with fp32 scales
    INT8 = "int8"  # symmetric int8 with fp32 scales

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object) -> LowbitFormat:
        """The format named by `value` (a member or its value); a ValueError naming the
        formats otherwise."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            forms = ", ".join(repr(f.value) for f in cls)
            raise ValueError(f"unknown low-bit format {value!r}; use one of {forms}") from None


LOWBIT_FORMATS = tuple(LowbitFormat)


class Status(str, enum.Enum):
    """How a plan was found. A `str`, so that it prints, compares and serialises as its name
    (NOTE [String enums]). Which choices the search had (`Choices`) and how far the plan may be
    from the best one (`Plan.gap`) are on the plan beside it."""

    KEEP_ALL = "KEEP_ALL"  # the budget allows keeping everything
    OPTIMAL = "OPTIMAL"  # proven cheapest over the choices the search had (Plan.choices)
    WITHIN_GAP = "WITHIN_GAP"  # proven within SolverOptions.relative_gap of the bound
    IMPROVED = "IMPROVED"  # better than the greedy plan; the work limit ended the search
    FEASIBLE = "FEASIBLE"  # found by the search where the greedy plan found none; not proven
    GREEDY = "GREEDY"  # the search did not improve on the greedy plan within its work limit
    LOWEST_PEAK = "LOWEST_PEAK"  # the plan with the lowest peak found (at the edge of reach)
    DEFAULT_LOWER = "DEFAULT_LOWER"  # PyTorch's partition was chosen: it peaks lower
    GIVEN = "GIVEN"  # written by hand, not searched (a forced plan in a test or a benchmark)
    INFEASIBLE = "INFEASIBLE"  # (search) no choice of the model fits
    UNKNOWN = "UNKNOWN"  # (search) a limit was hit before any plan

    def __str__(self) -> str:
        return self.value


class Choices(str, enum.Enum):
    """Which choices the search had. FULL: every restore step (recompute, dequantise, prefetch)
    that the exact simulator accepts for every tensor, so OPTIMAL means optimal. RESTRICTED: a
    few restore and prefetch points per tensor (SolverOptions.max_restore_points,
    restore_window, prefetch_points), so OPTIMAL means optimal over those and the bound holds
    for those only."""

    FULL = "full"
    RESTRICTED = "restricted"

    def __str__(self) -> str:
        return self.value


class Kind(str, enum.Enum):
    """What a decision does with a saved tensor (NOTE [String enums])."""

    KEEP = "keep"
    RECOMPUTE = "recompute"
    OFFLOAD = "offload"
    LOWBIT = "lowbit"
    LOWBIT_OFFLOAD = "lowbit_offload"

    def __str__(self) -> str:
        return self.value

    @property
    def offloaded(self) -> bool:
        return self in (Kind.OFFLOAD, Kind.LOWBIT_OFFLOAD)

    @property
    def lowbit(self) -> bool:
        return self in (Kind.LOWBIT, Kind.LOWBIT_OFFLOAD)


@dataclass(frozen=True)
class Decision:
    """What happens to one candidate after its last forward use.

    restore_step: for RECOMPUTE the step before which it is recomputed, for LOWBIT the step
        before which it is dequantised, for OFFLOAD / LOWBIT_OFFLOAD the step at which its
        prefetch is issued (and its device buffer allocated); None for KEEP.
    fmt: the storage format for the low-bit kinds (given as a member or "fp8" / "int8"),
        else None.
    """

    name: str
    kind: Kind
    restore_step: int | None = None
    fmt: LowbitFormat | None = None

    def __post_init__(self) -> None:
        if type(self.kind) is not Kind:
            object.__setattr__(self, "kind", Kind(self.kind))
        if self.fmt is not None and type(self.fmt) is not LowbitFormat:  # "fp8", or from JSON
            object.__setattr__(self, "fmt", LowbitFormat.parse(self.fmt))
        if (self.kind is Kind.KEEP) != (self.restore_step is None):
            raise ValueError(f"{self.name}: restore_step must be given exactly for non-keep kinds")
        if self.kind.lowbit != (self.fmt is not None):
            raise ValueError(f"{self.name}: fmt must be given exactly for low-bit kinds")


@dataclass(frozen=True)
class Plan:
    """decisions: one per candidate, in the Problem's candidate order.
    peak_bytes: simulated true peak with this plan; baseline_peak_bytes: keep everything.
    extra_time_us: estimated step-time increase (recompute + exposed copies + casts + low-bit
        penalties). status: how it was found ("OPTIMAL", "FEASIBLE", "GREEDY", "KEEP_ALL", ...).
    problem_hash / options_hash: provenance; warnings: anything the caller should surface.
    objective_bound_us: CP-SAT's proven lower bound on the objective (extra_time_us plus the
        low-bit penalties) over the choices it modelled; None when CP-SAT did not finish a run.
    objective_us: the plan's own objective (what the bound bounds); None for a plan not searched.
    choices: which choices the search had (`Choices`); None for a plan not searched.
    work: deterministic work the search spent (CP-SAT's deterministic seconds), the measure its
        work limit is given in; None for a plan not searched.
    greedy_objective_us: the objective of the greedy plan the search started from; None where
        the greedy planner found none or nothing was searched.
    """

    decisions: tuple[Decision, ...]
    peak_bytes: int
    budget_bytes: int
    baseline_peak_bytes: int
    extra_time_us: int
    status: Status
    solve_seconds: float
    problem_hash: str
    options_hash: str
    warnings: tuple[str, ...] = field(default=())
    objective_bound_us: int | None = None
    objective_us: int | None = None
    choices: Choices | None = None
    work: float | None = None
    greedy_objective_us: int | None = None

    def __post_init__(self) -> None:
        if type(self.status) is not Status:  # read back from JSON
            object.__setattr__(self, "status", Status(self.status))
        if self.choices is not None and type(self.choices) is not Choices:
            object.__setattr__(self, "choices", Choices(self.choices))

    @property
    def gap(self) -> float | None:
        """(objective - bound) / objective: how much cheaper a plan over the same choices could
        at most be (0.0: proven optimal over them); None without a bound."""
        if self.objective_bound_us is None or self.objective_us is None:
            return None
        if self.objective_us <= 0:
            return 0.0
        return max(self.objective_us - self.objective_bound_us, 0) / self.objective_us

    def quality(self) -> str:
        """The status in words: which plan it is (the greedy plan, or one the search found) and
        what is proven about it over which choices, e.g. 'OPTIMAL: improved on the greedy plan
        (5169 -> 5112 us); optimal over a restricted choice set' or 'GREEDY: the greedy plan;
        0.42% from the bound over a restricted choice set'."""
        if self.choices is None:
            return str(self.status)
        over = "the full choice set" if self.choices is Choices.FULL else \
            "a restricted choice set"
        if self.status is Status.LOWEST_PEAK:
            return f"{self.status}: the plan with the lowest peak found over {over}"
        greedy = self.greedy_objective_us
        if greedy is None:
            origin = "found by the search (the greedy planner found none)"
        elif self.objective_us is not None and self.objective_us < greedy:
            origin = f"improved on the greedy plan ({greedy} -> {self.objective_us} us)"
        else:
            origin = "the greedy plan"
        gap = self.gap
        proof = (f"optimal over {over}" if self.status is Status.OPTIMAL else
                 f"no bound proven over {over}" if gap is None else
                 f"{100 * gap:.2f}% from the bound over {over}")
        return f"{self.status}: {origin}; {proof}"

    def decision(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name:
                return d
        raise KeyError(f"no decision for tensor {name!r} in this plan")

    def counts(self) -> dict[str, int]:
        out = {k.value: 0 for k in Kind}
        for d in self.decisions:
            out[d.kind.value] += 1
        return out

    def to_json(self) -> str:
        data = asdict(self)
        for d in data["decisions"]:
            d["kind"] = Kind(d["kind"]).value
        if data["choices"] is not None:
            data["choices"] = Choices(data["choices"]).value
        return json.dumps(data, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        decisions = tuple(Decision(**d) for d in data.pop("decisions"))
        return cls(decisions=decisions, **{**data, "warnings": tuple(data["warnings"])})

    @property
    def content_hash(self) -> str:
        """Hash of what the plan decides and predicts; leaves out solve_seconds and warnings so
        two runs that choose the same plan hash equal."""
        core = [(d.name, d.kind.value, d.restore_step, d.fmt) for d in self.decisions]
        text = json.dumps([core, self.peak_bytes, self.budget_bytes, self.extra_time_us,
                           self.problem_hash, self.options_hash], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def with_(self, **changes: Any) -> Plan:
        return replace(self, **changes)


# ---- provenance of the nodes the passes insert --------------------------------------------------

META_KEY = "fxopt"  # node.meta key of an inserted node's `Inserted`


@dataclass(frozen=True)
class Inserted:
    """Which pass put this node here, and for which planned tensor and decision."""

    pass_name: str  # "recompute", "lowbit", "offload", "schedule"
    tensor: str  # name of the planned tensor in the joint graph
    decision: str  # the plan's decision kind ("recompute", "lowbit", ...)


def tag(node: Any, pass_name: str, tensor: str, decision: str) -> None:
    """Marks an FX node (anything with a `.meta` dict) as inserted by a pass."""
    node.meta[META_KEY] = Inserted(pass_name, tensor, decision)


def inserted_by(node: Any) -> Inserted | None:
    value = node.meta.get(META_KEY)
    return value if isinstance(value, Inserted) else None
