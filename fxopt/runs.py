"""Runs of a compiled training graph in flight: forwards whose backward has not run yet.

NOTE [Counting runs]
Each run of a training graph holds its saved tensors until its backward. Runs in flight are
counted from the autograd node of the run's outputs: +1 at the forward, -1 when that node's
backward has run or the node is freed without one (a forward whose loss is never
backpropagated). The count returns to 0 at the end of each wave (a step, or one microbatch
under gradient accumulation); the most in flight during a wave is how many copies of its
saved tensors the step holds at once (blocks sharing one compiled graph hold one per block),
which the step compares with what the plan assumed (`Step.saw_copies`). The backend counts
real runs (`fxopt.compiler.StepGraph`); `fxopt.explain` the runs of its fake step.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from fxopt.compat import tree_leaves


def watchable_node(out: Any) -> Any:
    """An autograd node of the run's outputs that a weak reference can watch, or None.

    Some C++ nodes refuse weak references: an output that AOTAutograd regenerates as a view
    of another has a view's node (`SliceBackward0` in neuraloperator's FNO), and
    `weakref.finalize` on it raises. Its inputs lead to the compiled function's own node."""
    frontier = [t.grad_fn for t in tree_leaves(out)
                if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen: set[int] = set()
    while frontier:
        node = frontier.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        try:
            weakref.ref(node)
        except TypeError:
            frontier.extend(next_node for next_node, _ in node.next_functions)
            continue
        return node
    return None


def watch_run(out: Any, finish: Callable[[bool], None]) -> bool:
    """Calls `finish(True)` once the run whose outputs are `out` has done its backward, or
    `finish(False)` when its node is freed without one; False: the run has no backward."""
    node = watchable_node(out)
    if node is None:
        return False
    done = [False]

    def once(backward: bool) -> None:
        if not done[0]:
            done[0] = True
            finish(backward)

    node.register_hook(lambda *_: once(True))
    weakref.finalize(node, once, False)
    return True


class InFlight:
    """The most runs of one graph in flight at once (NOTE [Counting runs])."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def started(self, out: Any) -> None:
        if watch_run(out, self._finished):
            self.now += 1
            self.most = max(self.most, self.now)

    def _finished(self, backward: bool) -> None:
        self.now -= 1
