"""What each compile did: one frozen record per joint graph fxopt partitioned."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from fxopt.config import Options, format_bytes


@dataclass(frozen=True)
class SavedTensor:
    """A tensor the forward graph saves for the backward graph."""

    name: str
    shape: tuple[str, ...]  # symbolic dimensions print as their symbol (e.g. 's0')
    dtype: str
    nbytes: int  # at the size hints when shapes are dynamic


@dataclass(frozen=True)
class Stage:
    """One stage of a compile and how long it took."""

    name: str
    seconds: float


@dataclass(frozen=True)
class CompileRecord:
    """The outcome of partitioning one joint graph."""

    options: Options
    strategy: str
    fallback_reason: str | None
    joint_ops: int
    forward_ops: int
    backward_ops: int
    saved: tuple[SavedTensor, ...]
    saved_bytes: int
    seconds: float
    stages: tuple[Stage, ...]
    forward_graph: Any = field(repr=False, compare=False)  # torch.fx.GraphModule
    backward_graph: Any = field(repr=False, compare=False)
    index: int = -1  # position in the process-wide list; set by add_record

    def summary(self) -> str:
        fallback = f" (fallback: {self.fallback_reason})" if self.fallback_reason else ""
        return (f"fxopt graph {self.index}: {self.strategy}{fallback}; budget "
                f"{self.options.budget or 'default'}; {self.joint_ops} joint ops -> "
                f"{self.forward_ops} fwd + {self.backward_ops} bwd; {len(self.saved)} saved "
                f"tensors ({format_bytes(self.saved_bytes)}); {self.seconds * 1e3:.1f} ms")


_LOCK = threading.Lock()
_RECORDS: list[CompileRecord] = []


def add_record(record: CompileRecord) -> CompileRecord:
    import dataclasses

    with _LOCK:
        record = dataclasses.replace(record, index=len(_RECORDS))
        _RECORDS.append(record)
    return record


def compile_records() -> tuple[CompileRecord, ...]:
    """Every graph fxopt partitioned in this process, oldest first."""
    with _LOCK:
        return tuple(_RECORDS)


def clear_records() -> None:
    with _LOCK:
        _RECORDS.clear()
