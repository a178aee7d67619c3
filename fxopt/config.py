"""User options of fxopt: one frozen dataclass, validated on construction.

The environment is read here and nowhere else (`Options.from_env`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxopt.plan import LowbitFormat


class OptionsError(ValueError):
    """An fxopt option (keyword argument or environment variable) has an invalid value."""


LowBit = LowbitFormat  # `fxopt.LowBit`: the low-bit formats under their public name


class DeviceProfile(enum.Enum):
    """Which hardware the cost model assumes."""

    AUTO = "auto"  # the device the graph runs on
    H100 = "h100"
    H200 = "h200"
    A100 = "a100"
    CPU = "cpu"


@dataclass(frozen=True)
class Budget:
    """A peak-memory budget: a fraction of the keep-everything peak, or an absolute size."""

    fraction: float | None = None
    nbytes: int | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.nbytes is None):
            raise OptionsError("Budget takes exactly one of fraction= or nbytes=")
        if self.fraction is not None and not (0.0 < self.fraction <= 1.0):
            raise OptionsError(
                f"budget fraction {self.fraction} is outside (0, 1]; give a fraction of the "
                "keep-everything peak such as 0.5, or an absolute size such as '6GiB'")
        if self.nbytes is not None and self.nbytes <= 0:
            raise OptionsError(f"budget of {self.nbytes} bytes must be positive")

    def resolve(self, keep_everything_peak: int) -> int:
        """The budget in bytes for a graph whose keep-everything peak is given."""
        if self.nbytes is not None:
            return self.nbytes
        assert self.fraction is not None
        return int(math.floor(self.fraction * keep_everything_peak))

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction:g} of keep-everything peak"
        return format_bytes(self.nbytes or 0)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
BUDGET_FORMS = ("a fraction in (0, 1] such as 0.5, a percentage such as '50%', "
                "or a size such as '6GiB', '512MB' or a byte count such as 2000000000")


def parse_budget(value: Any) -> Budget | None:
    """Accepts None, a Budget, a fraction (float in (0, 1]), bytes (int > 1) or a string."""
    if value is None or isinstance(value, Budget):
        return value
    if isinstance(value, bool):
        raise OptionsError(f"budget={value!r} is not valid; use {BUDGET_FORMS}")
    if isinstance(value, int):
        if value == 1:
            return Budget(fraction=1.0)
        return Budget(nbytes=value)
    if isinstance(value, float):
        return Budget(fraction=value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                return Budget(fraction=float(text[:-1]) / 100.0)
            except ValueError as err:
                raise OptionsError(f"budget={value!r} is not valid; use {BUDGET_FORMS}") from err
        match = _SIZE_RE.match(text)
        if match is None or match.group(2).lower() not in _UNITS:
            raise OptionsError(f"budget={value!r} is not valid; use {BUDGET_FORMS}")
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit == "" and "." in match.group(1):
            return Budget(fraction=number)
        if unit == "" and number == 1:
            return Budget(fraction=1.0)
        return Budget(nbytes=int(number * _UNITS[unit]))
    raise OptionsError(f"budget={value!r} has type {type(value).__name__}; use {BUDGET_FORMS}")


def parse_size(value: Any, name: str) -> int:
    """A non-negative size: bytes (int) or text such as '512MiB'."""
    if isinstance(value, bool):
        raise OptionsError(f"{name}={value!r} must be a size in bytes or such as '512MiB'")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is not None and match.group(2).lower() in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise OptionsError(f"{name}={value!r} must be a size in bytes or such as '512MiB'")


def format_bytes(n: int | float) -> str:
    """Human-readable binary size (e.g. '1.50 GiB')."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _enum_value(cls: type[enum.Enum], value: Any, name: str) -> Any:
    if isinstance(value, cls):
        return value
    # str.strip, not str(): a str enum of another class prints as "Class.MEMBER" (NOTE [String
    # enums] in fxopt/plan.py) but strips to its value.
    text = value.strip().lower() if isinstance(value, str) else str(value)
    try:
        return cls(text)
    except ValueError as err:
        forms = ", ".join(repr(m.value) for m in cls)
        raise OptionsError(f"{name}={value!r} is not valid; use one of {forms}") from err


@dataclass(frozen=True)
class Options:
    """What fxopt may do and under which budget.

    budget: peak-memory budget for one training step: fraction of the keep-everything peak
        (0.5), absolute size ('6GiB' or bytes). None: no tighter than PyTorch's default
        partition, at the least time.
    offload: allow CPU offload of saved tensors on CUDA (NOTE [Offload is opt-in]). None: off.
    lowbit: allow low-bit storage of saved tensors (None, 'fp8' or 'int8'); changes numerics.
    work_limit: the planner's deterministic work per graph (CP-SAT's deterministic seconds, about
        a second of one unloaded core each); None: grows with the graph. The search stops on
        it, so the same graph and options give the same plan on any machine and rank.
    time_limit_s: the planner's wall-clock safety net per graph; a search it stops raises
        fxopt.solver.SearchTimeoutError instead of returning a plan that depends on the
        machine. None: 20 times the work limit, at least 60 s.
    device: cost profile ('auto', 'h100', 'h200', 'a100', 'cpu').
    debug: log one line per compiled graph on the 'fxopt' logger.
    dump_dir: write every stage of every compile into this folder.
    in_flight: how many runs of each graph hold their saved tensors at once before the first
        reaches its backward (blocks compiled one by one sharing one graph x microbatches in
        flight); what the step shows replaces it after the first step.
    reserved: device memory outside the compiled graphs for the whole step (bytes or a size
        such as '512MiB'; FSDP's unsharded parameters and gradients), taken off a size budget.
    resident: device memory held before the step begins (parameters, optimizer state), part of
        a size budget: the budget is then all the device memory the step may use.
    """

    budget: Budget | None = None
    offload: bool | None = None
    lowbit: LowbitFormat | None = None
    work_limit: float | None = None
    time_limit_s: float | None = None
    device: DeviceProfile = DeviceProfile.AUTO
    debug: bool = False
    dump_dir: str | None = None
    in_flight: int = 1
    reserved: int = 0
    resident: int = 0

    def __post_init__(self) -> None:
        # Normalise user-friendly forms (0.5, "fp8", "cpu") into typed values.
        object.__setattr__(self, "budget", parse_budget(self.budget))
        if self.lowbit is not None:
            object.__setattr__(self, "lowbit", _enum_value(LowbitFormat, self.lowbit, "lowbit"))
        object.__setattr__(self, "device", _enum_value(DeviceProfile, self.device, "device"))
        if self.offload is not None and not isinstance(self.offload, bool):
            raise OptionsError(f"offload={self.offload!r} must be True, False or None (auto)")
        if not isinstance(self.debug, bool):
            raise OptionsError(f"debug={self.debug!r} must be True or False")
        for name in ("work_limit", "time_limit_s"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (0 < value < math.inf):
                raise OptionsError(f"{name}={value!r} must be a positive number or None "
                                   "(automatic)")
            object.__setattr__(self, name, float(value))
        if self.dump_dir is not None:
            object.__setattr__(self, "dump_dir", os.fspath(self.dump_dir))
        if isinstance(self.in_flight, bool) or not isinstance(self.in_flight, int) \
                or self.in_flight < 1:
            raise OptionsError(f"in_flight={self.in_flight!r} must be a whole number >= 1 (runs "
                               "of a graph alive at once: blocks sharing it x microbatches)")
        object.__setattr__(self, "reserved", parse_size(self.reserved, "reserved"))
        object.__setattr__(self, "resident", parse_size(self.resident, "resident"))
        if self.budget is not None and self.budget.nbytes is not None \
                and self.reserved + self.resident >= self.budget.nbytes:
            raise OptionsError(
                f"reserved={format_bytes(self.reserved)} and resident="
                f"{format_bytes(self.resident)} leave nothing of the budget "
                f"{format_bytes(self.budget.nbytes)} to the compiled graphs; give a budget above "
                "the memory held outside them")

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)

    def cache_key(self) -> str:
        """A stable text that changes whenever any option changes (for compile caches)."""
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            parts.append(f"{field.name}={value.value if isinstance(value, enum.Enum) else value!r}")
        return ";".join(parts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Options:
        """Options from the FXOPT_* environment variables; keyword arguments take precedence."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for var, (field, parse) in _ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                kwargs[field] = parse(raw)
            except OptionsError as err:
                raise OptionsError(f"environment variable {var}={raw!r} is invalid: {err}") from err
        kwargs.update(overrides)
        return cls(**kwargs)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise OptionsError(f"{raw!r} is not a switch; use 1/true/yes/on or 0/false/no/off")


def _parse_offload(raw: str) -> bool | None:
    return None if raw.strip().lower() == "auto" else parse_flag(raw)


def _parse_lowbit(raw: str) -> LowbitFormat | None:
    value = raw.strip().lower()
    if value in _FALSE or value == "none":
        return None
    return _enum_value(LowbitFormat, value, "lowbit")


def _parse_seconds(raw: str) -> float | None:
    if raw.strip().lower() == "auto":
        return None
    try:
        value = float(raw)
    except ValueError as err:
        raise OptionsError(f"{raw!r} is not a number; use seconds such as 10 or 2.5, or "
                           "auto") from err
    if not (0 < value < math.inf):
        raise OptionsError(f"{raw!r} must be positive; use seconds such as 10 or 2.5, or auto")
    return value


_ENV_VARS: dict[str, tuple[str, Any]] = {
    "FXOPT_BUDGET": ("budget", parse_budget),
    "FXOPT_OFFLOAD": ("offload", _parse_offload),
    "FXOPT_LOWBIT": ("lowbit", _parse_lowbit),
    "FXOPT_WORK_LIMIT": ("work_limit", _parse_seconds),
    "FXOPT_TIME_LIMIT": ("time_limit_s", _parse_seconds),
    "FXOPT_DEVICE": ("device", lambda raw: _enum_value(DeviceProfile, raw, "device")),
    "FXOPT_DEBUG": ("debug", parse_flag),
    "FXOPT_DUMP_DIR": ("dump_dir", str),
}


CACHE_ENV = "FXOPT_CACHE_DIR"


def cache_root() -> Path:
    """`$FXOPT_CACHE_DIR`, else `~/.cache/fxopt`: plans live in its `plans` folder, the CPU
    calibration (cost_models/device.py) in `device`."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/fxopt").expanduser()


def malloc_returns_memory() -> bool:
    """Whether glibc was told, at process start, to return every large freed block at once
    (`MALLOC_MMAP_THRESHOLD_`), so that the resident set follows the live tensors."""
    return "MALLOC_MMAP_THRESHOLD_" in os.environ


def env_requested() -> bool:
    """Whether FXOPT is set to anything but empty or 0 (cheap: read while `import torch` runs;
    `env_enabled` validates the value)."""
    return os.environ.get("FXOPT", "").strip() not in ("", "0")


def env_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether FXOPT asks for fxopt on plain torch.compile; raises OptionsError on a bad value."""
    env = os.environ if environ is None else environ
    raw = env.get("FXOPT", "")
    if raw.strip() == "":
        return False
    try:
        return parse_flag(raw)
    except OptionsError as err:
        raise OptionsError(f"environment variable FXOPT={raw!r} is invalid: {err}") from err
