"""The planning problem on plain integers: bytes and microseconds, no graph, no solver.

A `Problem` is what the graph adapter hands to the planner. Everything here is an integer; the
only conversions from floats (seconds from the runtime model, fractional budgets) live in the
`to_us` / `budget_bytes` helpers of this module, so the integer scaling happens in one place.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import cached_property

from fxopt.plan import LOWBIT_FORMATS, LowbitFormat

# NOTE [Schedule and lifetimes]
# Steps 0..S-1 are the fixed execution order: forward steps [0, num_fwd_steps), then backward
# steps [num_fwd_steps, S). Memory at step s is
#     fixed_bytes[s] + sum over candidates of the bytes that candidate has alive at s,
# and a tensor "alive at s" occupies memory during the whole of step s. A candidate is a forward
# tensor (after coarsening, the materialised output of one fused unit). Its forward life
# [produced, last_fwd_use] is the same under every decision; what happens after that depends on
# the decision (see validate.py, which is the spec). Parameters and graph inputs are live before
# the step begins, so they are not candidates and add nothing (the peak is measured above them).


@dataclass(frozen=True)
class Candidate:
    """One forward tensor the planner decides about.

    name: unique, stable name (the adapter's node name), used as the key in the `Plan`.
    bytes: full size on device.
    produced: forward step that writes it.
    last_fwd_use: last forward step that reads it (== produced when only backward reads it).
    bwd_uses: sorted backward steps that read it; empty for a tensor that only recomputations
        of other candidates need (a "support" tensor).
    inputs: indices of the candidates its recomputation reads (parameters and graph inputs are
        always available and not listed).
    recompute_us: time to recompute it from its inputs.
    recomputable: False for in-place mutation, collectives, RNG without state replay.
    lowbit_bytes: size of the low-bit copy including scales; 0 when it is not eligible.
    lowbit_formats: the low-bit formats that may store it where it is eligible (fp8 only for a
        tensor the backward compares with zero: NOTE [Comparisons and int8] in
        fxopt/lowbit_rules.py).
    cast_us: quantise + dequantise time for the low-bit copy.
    copy_us: host<->device copy time of the full tensor, per direction; 0 disables offload.
    must_recompute: the model's own checkpoint policy requires recomputing it (a hard
        constraint wherever something in backward needs it; implies recomputable).
    """

    name: str
    bytes: int
    produced: int
    last_fwd_use: int
    bwd_uses: tuple[int, ...] = ()
    inputs: tuple[int, ...] = ()
    recompute_us: int = 0
    recomputable: bool = True
    lowbit_bytes: int = 0
    cast_us: int = 0
    copy_us: int = 0
    must_recompute: bool = False
    lowbit_formats: tuple[LowbitFormat, ...] = LOWBIT_FORMATS

    @property
    def first_bwd_use(self) -> int | None:
        return self.bwd_uses[0] if self.bwd_uses else None

    @property
    def last_bwd_use(self) -> int | None:
        return self.bwd_uses[-1] if self.bwd_uses else None

    def stores_lowbit(self, fmt: LowbitFormat | None) -> bool:
        """Whether low-bit storage in `fmt` (the options' format; None: none) is a choice."""
        return fmt is not None and self.lowbit_bytes > 0 and fmt in self.lowbit_formats

    @property
    def lowbit_copy_us(self) -> int:
        """Copy time of the low-bit copy (copy time scales with bytes moved)."""
        if self.bytes == 0:
            return 0
        return -(-self.copy_us * self.lowbit_bytes // self.bytes)


@dataclass(frozen=True)
class Problem:
    """Candidates, the fixed part of memory and per-step compute time of one training step.

    step_us[s] is the compute time of step s; copies overlap with it (see validate.py).
    anchors[s] is the first step that runs at the same point of the graph as step s: an action
    scheduled at s (a recomputation, a prefetch) really runs before anchors[s], so only steps
    that are their own anchor are valid restore steps. Empty: every step is its own anchor.
    other_copies: how many other runs of this same graph hold their saved tensors during the
    whole of this one (NOTE [Copies in flight] in validate.py).
    """

    num_steps: int
    num_fwd_steps: int
    fixed_bytes: tuple[int, ...]
    step_us: tuple[int, ...]
    candidates: tuple[Candidate, ...]
    anchors: tuple[int, ...] = ()
    other_copies: int = 0

    def __post_init__(self) -> None:
        _check_problem(self)

    @cached_property
    def consumers(self) -> tuple[tuple[int, ...], ...]:
        """consumers[i] = candidates whose recomputation reads candidate i."""
        out: list[list[int]] = [[] for _ in self.candidates]
        for j, cand in enumerate(self.candidates):
            for i in cand.inputs:
                out[i].append(j)
        return tuple(tuple(c) for c in out)

    def anchor(self, step: int) -> int:
        """The step before which an action scheduled at `step` runs (see `anchors`)."""
        return self.anchors[step] if self.anchors else step

    @cached_property
    def prefix_us(self) -> tuple[int, ...]:
        """prefix_us[s] = sum of step_us[:s]; compute(a..b) = prefix_us[b+1] - prefix_us[a]."""
        acc = [0]
        for t in self.step_us:
            acc.append(acc[-1] + t)
        return tuple(acc)

    def compute_us(self, first: int, last: int) -> int:
        """Compute time of steps first..last inclusive (0 for an empty range)."""
        if last < first:
            return 0
        return self.prefix_us[last + 1] - self.prefix_us[first]

    def to_json_dict(self) -> dict:
        out = asdict(self)
        if not self.other_copies:  # hashes of single-run problems stay what they were
            del out["other_copies"]
        for c in out["candidates"]:  # and so do those where every format may store each
            if tuple(c["lowbit_formats"]) == LOWBIT_FORMATS:
                del c["lowbit_formats"]
            else:
                c["lowbit_formats"] = [f.value for f in c["lowbit_formats"]]
        return out

    @classmethod
    def from_json_dict(cls, data: dict) -> Problem:
        cands = tuple(
            Candidate(**{**c, "bwd_uses": tuple(c["bwd_uses"]), "inputs": tuple(c["inputs"]),
                         "lowbit_formats": tuple(LowbitFormat.parse(f) for f in c.get(
                             "lowbit_formats", LOWBIT_FORMATS))})
            for c in data["candidates"]
        )
        return cls(data["num_steps"], data["num_fwd_steps"], tuple(data["fixed_bytes"]),
                   tuple(data["step_us"]), cands, tuple(data.get("anchors", ())),
                   data.get("other_copies", 0))

    @cached_property
    def content_hash(self) -> str:
        """Stable hash of the whole problem (cache key, plan provenance)."""
        text = json.dumps(self.to_json_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class ProblemError(ValueError):
    """A Problem that breaks its own invariants (a bug in whoever built it)."""


def _check_problem(p: Problem) -> None:
    n, f = p.num_steps, p.num_fwd_steps
    if not 0 < f < n:
        raise ProblemError(f"need 0 < num_fwd_steps < num_steps, got {f} and {n}")
    if len(p.fixed_bytes) != n or len(p.step_us) != n:
        raise ProblemError(f"fixed_bytes and step_us need {n} entries, got "
                           f"{len(p.fixed_bytes)} and {len(p.step_us)}")
    if not isinstance(p.other_copies, int) or p.other_copies < 0:
        raise ProblemError(f"other_copies must be a non-negative integer, got {p.other_copies!r}")
    if any(b < 0 for b in p.fixed_bytes) or any(t < 0 for t in p.step_us):
        raise ProblemError("fixed_bytes and step_us must be non-negative integers")
    if p.anchors:
        if len(p.anchors) != n:
            raise ProblemError(f"anchors needs {n} entries or none, got {len(p.anchors)}")
        for s, a in enumerate(p.anchors):
            if not (0 <= a <= s and p.anchors[a] == a and (a < f) == (s < f)):
                raise ProblemError(f"anchor {a} of step {s} must be an earlier or the same step "
                                   "on the same side that is its own anchor")
    names = set()
    for i, c in enumerate(p.candidates):
        where = f"candidate {i} ({c.name!r})"
        if c.name in names:
            raise ProblemError(f"{where}: duplicate name")
        names.add(c.name)
        if not 0 <= c.produced <= c.last_fwd_use < f:
            raise ProblemError(f"{where}: need 0 <= produced <= last_fwd_use < {f}")
        if list(c.bwd_uses) != sorted(set(c.bwd_uses)) or any(not f <= s < n for s in c.bwd_uses):
            raise ProblemError(f"{where}: bwd_uses must be sorted, distinct, in [{f}, {n})")
        for j in c.inputs:
            if not 0 <= j < len(p.candidates) or p.candidates[j].produced >= c.produced:
                raise ProblemError(f"{where}: input {j} must be a candidate produced earlier")
        if c.must_recompute and not c.recomputable:
            raise ProblemError(f"{where}: must_recompute needs recomputable")
        if min(c.bytes, c.recompute_us, c.lowbit_bytes, c.cast_us, c.copy_us) < 0:
            raise ProblemError(f"{where}: sizes and times must be non-negative")
        if c.lowbit_bytes > c.bytes:
            raise ProblemError(f"{where}: lowbit_bytes {c.lowbit_bytes} > bytes {c.bytes}")
        if not c.lowbit_formats or any(type(f) is not LowbitFormat for f in c.lowbit_formats):
            raise ProblemError(f"{where}: lowbit_formats must be a non-empty tuple of "
                               f"LowbitFormat, got {c.lowbit_formats!r}")


def to_us(seconds: float) -> int:
    """The one float -> integer time conversion: seconds to whole microseconds, rounded up."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ProblemError(f"time must be a finite non-negative number of seconds, got {seconds}")
    return math.ceil(seconds * 1e6 - 1e-9)


def budget_bytes(budget: float | int, baseline_peak: int) -> int:
    """A budget as bytes: an int is absolute bytes, a float in (0, 1] a fraction of the
    keep-everything peak (rounded down)."""
    if isinstance(budget, bool):
        raise ProblemError(f"budget must be bytes (int) or a fraction (float), got {budget!r}")
    if isinstance(budget, int):
        if budget <= 0:
            raise ProblemError(f"budget in bytes must be positive, got {budget}")
        return budget
    if not (isinstance(budget, float) and 0.0 < budget <= 1.0):
        raise ProblemError(f"a fractional budget must lie in (0, 1], got {budget!r}")
    return math.floor(baseline_peak * budget)


def byte_unit(problem: Problem) -> int:
    """Greatest common divisor of all candidate sizes: the solver counts bytes in this unit,
    which is exact and keeps CP-SAT's coefficients small."""
    g = 0
    for c in problem.candidates:
        g = math.gcd(g, c.bytes)
        g = math.gcd(g, c.lowbit_bytes)
    return max(g, 1)
