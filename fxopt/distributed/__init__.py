"""fxopt in distributed training: FSDP2 with per-block compile and pipeline stages
(`torch.distributed.pipelining`), one byte budget per rank, the same plan on every rank.

    be = fxopt.distributed.backend(model, budget="2GiB", blocks=len(model.layers),
                                   optimizer=opt)
    for block in model.layers:
        block.compile(backend=be)

See NOTE [Rank budgets] (split.py) and NOTE [One plan on every rank] (agree.py).
"""

from fxopt.distributed.backend import RankBackend, backend
from fxopt.distributed.layout import Pipeline, UnsupportedScheduleError, schedule_name
from fxopt.distributed.plan import explain_rank
from fxopt.distributed.split import RankSplit, optimizer_bytes, split_rank_budget

__all__ = ["Pipeline", "RankBackend", "RankSplit", "UnsupportedScheduleError", "backend",
           "explain_rank", "optimizer_bytes", "schedule_name", "split_rank_budget"]
