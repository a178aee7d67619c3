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
from collections.abc import Callable, Sequence
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


# NOTE [Graphs of one frame]
# Dynamo compiles a frame again when its guards fail. Usually the new graph replaces the old one
# for the steps that follow (a new batch size), and it takes the old one's place in the step;
# blocks that share one graph may be compiled again for a guard on the block (same shapes),
# and they stay one graph of the step that runs several times. But one function called twice
# in one step with other shapes is two graphs of the step, both holding saved tensors
# (neuraloperator's FNO runs its lifting and its projection channel MLP through one function:
# 3 -> 8 and 8 -> 1 channels). So a frame compiled again while a run of its graph is in flight
# (its backward not run yet) for inputs of other shapes joins the step under a key of its own.
def signature(example_inputs: Sequence[Any]) -> tuple:
    """The shapes and dtypes of a graph's tensor inputs."""
    return tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else None
                 for x in example_inputs)


def is_other_graph(signatures: dict[str, Any], key: str, shapes: tuple, running: bool
                   ) -> bool:
    """Whether a graph compiled for inputs of `shapes` is another graph than `key`'s, which
    has a run in flight (`running`) for other shapes (NOTE [Graphs of one frame]); otherwise
    it is `key`'s graph, and `signatures` records its shapes."""
    known = signatures.setdefault(key, shapes)
    if not running or known == shapes:
        signatures[key] = shapes
        return False
    return True


def distinct_key(base: str, other_graph: Callable[[str], bool]) -> str:
    """The key of a graph compiled for frame key `base`: the first of `base`, `base/1`,
    `base/2`, ... that is not another graph of the step in flight (`other_graph`; NOTE
    [Graphs of one frame])."""
    key, n = base, 0
    while other_graph(key):
        n += 1
        key = f"{base}/{n}"
    return key


class InFlight:
    """The most runs of one graph in flight at once (NOTE [Counting runs])."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def started(self, out: Any) -> bool:
        """Counts the run whose outputs are `out` (False: it has no backward)."""
        if not watch_run(out, self._finished):
            return False
        self.now += 1
        self.most = max(self.most, self.now)
        return True

    def _finished(self, backward: bool) -> None:
        self.now -= 1
