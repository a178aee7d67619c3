"""Where a rank's compiled graphs sit in the schedule: how many runs of each are in flight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Schedules whose memory fxopt can plan: one stage per rank, each backward whole.
SUPPORTED = {"1F1B": "Schedule1F1B", "GPipe": "ScheduleGPipe"}
# Schedules that split a stage's backward into input and weight gradients (zero bubble) or run
# several stages per rank: the compiled backward of a stage computes both at once, and the
# number of microbatches in flight per stage differs from the table below.
_REFUSED = {"ScheduleInterleavedZeroBubble": "it splits input and weight gradients",
            "ScheduleZBVZeroBubble": "it splits input and weight gradients",
            "ScheduleDualPipeV": "it splits input and weight gradients",
            "ScheduleInterleaved1F1B": "it runs several stages per rank",
            "ScheduleLoopedBFS": "it runs several stages per rank"}


class UnsupportedScheduleError(ValueError):
    """A pipeline schedule whose memory fxopt cannot plan yet."""


def schedule_name(schedule: Any) -> str:
    """'1F1B' or 'GPipe' from a name, a schedule class or a schedule object; refuses others."""
    if isinstance(schedule, str):
        name = schedule
    else:
        cls = schedule if isinstance(schedule, type) else type(schedule)
        name = cls.__name__
    for short, cls_name in SUPPORTED.items():
        if name.lower() in (short.lower(), cls_name.lower()):
            return short
    why = _REFUSED.get(name, "fxopt does not know it")
    raise UnsupportedScheduleError(
        f"pipeline schedule {name!r} is not supported by fxopt yet: {why}. Use Schedule1F1B or "
        "ScheduleGPipe (torch.distributed.pipelining), or plain torch.compile for this schedule")


@dataclass(frozen=True)
class Pipeline:
    """This rank's stage of a pipeline: `schedule` ('1F1B', 'GPipe', or the schedule class),
    `stage` of `stages`, `microbatches` per step."""

    schedule: str
    stage: int
    stages: int
    microbatches: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", schedule_name(self.schedule))
        if not 0 <= self.stage < self.stages:
            raise ValueError(f"stage {self.stage} is not one of the {self.stages} stages")
        if self.microbatches < 1:
            raise ValueError(f"microbatches={self.microbatches} must be at least 1")

    @property
    def in_flight(self) -> int:
        """Microbatches whose forward has run and whose backward has not, at most, on this
        stage: GPipe runs every forward first; 1F1B lets stage i of S run S - i forwards
        before its first backward, then one forward per backward."""
        if self.schedule == "GPipe":
            return self.microbatches
        return min(self.stages - self.stage, self.microbatches)
