"""The memory of `fxopt.explain`'s fake step that no training graph plans (NOTE [Memory outside
the graphs]), run by run, for the step's prediction (`fxopt.step_runs.Outside`)."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from fxopt.compat import FakeTensorMode, in_backward, tree_leaves, weak_id_dict
from fxopt.step_runs import Outside
from fxopt.tensor_meta import size_hint, storage_of

# NOTE [Memory outside the graphs]
# Eager code between and after the compiled graphs holds memory that no graph plans: tensorly's
# einsum between neuraloperator's FNO graphs keeps its operands for its backward (the previous
# graph's outputs among them) and the gradients of its weights, an eager loss its temporaries,
# a graph without backward its outputs. `fxopt.explain`'s fake step sees it: every storage the
# step creates is followed from its birth to its death (fake tensors keep their sizes; a storage
# born inside a training run is taken at the run's end, from what the run returns). At every
# point outside the training runs, the bytes that the step's model does not count (NOTE [The
# step's runs] in fxopt/step_runs.py) are outside memory. The model counts a run's saved
# tensors from the end of its forward to the end of its backward; its outputs until the next
# run's forward ends (the last run's until its backward starts); the gradients handed to a
# backward from their birth to its end; the gradients the backwards return that stay alive
# (the parameters'). The rest is counted per run: alive during its forward (beside its inputs),
# the most after its forward until the next run starts (beside its boundary), the most from the
# backward after it until its own (beside the gradients of the runs after it); and before the
# first run and after the last backward.
#
# A run's saved tensors are replaced by fresh ones of the same sizes when its forward returns
# (on fake tensors the backward reads only their metadata), so what the model counts as saved
# lives from then until the backward, and the tensors the run returned or was given live as
# long as the eager code holds them. The outside memory is then the same whatever each graph's
# plan saves, and it can be measured once, with the plans of the capture. A plan that saves a
# tensor the eager code holds anyway has it counted twice: safe.
#
# It enters the step's prediction (the reports' peaks, and a size refused by the step). The
# plans see it only under a size: a fraction is resolved and planned as the backend plans it,
# which cannot see this memory before it measures a real step (NOTE [Measuring the step in
# training] in fxopt/meter.py), so that a fraction means the same budget to both.
# A storage's bytes are the fake tensor's: a CPU kernel that keeps more behind a small result
# (an eager mse_loss whose scalar is a view of its elementwise buffer), or scratch memory inside
# an eager kernel, is not seen.


@dataclass
class _Run:
    fwd: tuple[int, int] = (-1, -1)  # ticks of its forward's start and end
    bwd: tuple[int, int] = (-1, -1)  # ticks of its backward's start and end
    saved: set[int] = field(default_factory=set)  # storages it saved for its backward
    outputs: set[int] = field(default_factory=set)  # storages it returned (not saved)
    tangents: set[int] = field(default_factory=set)  # storages handed to its backward
    grads: set[int] = field(default_factory=set)  # storages its backward returned


class StorageTimeline:
    """Births and deaths of the fake step's storages, and the training runs among them."""

    def __init__(self, cpu_kernels: bool = True) -> None:
        """`cpu_kernels`: the step runs CPU kernels (NOTE [CPU losses keep their elementwise
        buffer]); False where a CPU trace stands for a CUDA step."""
        self.cpu_kernels = cpu_kernels
        self.tick = 0
        self.on = False
        self.stopped = -1  # the tick the step ended at (what dies later was alive to its end)
        self.inside = 0  # a training run (forward or backward) is running
        self._ids: Any = weak_id_dict()  # storage -> id (-1: before)
        self._refs: dict[int, Any] = {}
        self.bytes: dict[int, int] = {}
        self.born: dict[int, int] = {}
        self.died: dict[int, int] = {}
        self.runs: list[_Run] = []
        self._by_key: dict[str, list[int]] = {}  # positions in flight, by graph key
        self._raw: list[Any] = []  # what the forward graph of the run in progress returned
        # (tick, segment): segment ("before",), ("after", t), ("backward", t) or ("end",)
        self.samples: list[tuple[int, tuple]] = []
        self.forward_samples: dict[int, int] = {}  # position -> tick just before its forward

    def _next(self) -> int:
        self.tick += 1
        return self.tick

    def existing(self, values: Iterable[Any]) -> None:
        """Storages alive before the step (parameters, buffers, inputs): never counted."""
        for t in tree_leaves(list(values)):
            s = storage_of(t)
            if s is not None:
                self._ids[s] = -1

    def _sid(self, t: Any, born: int | None = None) -> int | None:
        """The id of tensor `t`'s storage, registered as born now (or at `born`) if new."""
        s = storage_of(t)
        if s is None:
            return None
        sid = self._ids.get(s)
        if sid is None:
            sid = len(self.bytes)
            self._ids[s] = sid
            self.bytes[sid] = size_hint(s.nbytes())
            self.born[sid] = self._next() if born is None else born
            self._refs[sid] = weakref.ref(s, functools.partial(self._death, sid))
        return None if sid < 0 else sid

    def _death(self, sid: int, _ref: Any = None) -> None:
        self.died[sid] = self._next()
        self._refs.pop(sid, None)

    def saw(self, out: Any, nbytes: int | None = None) -> None:
        """The outputs of one eager op: new storages are born (a single output of `nbytes`
        where given), and the point is sampled."""
        if not self.on or self.inside:
            return
        for t in tree_leaves(out):
            sid = self._sid(t)
            if nbytes is not None and sid is not None:
                self.bytes[sid] = max(self.bytes[sid], nbytes)
        self.sample()

    def start(self) -> None:
        self.on = True

    def stop(self) -> None:
        """The step is over: the last point is sampled, and the timeline stops."""
        self.sample()
        self.on, self.stopped = False, self.tick

    def sample(self) -> None:
        self.samples.append((self._next(), self._segment()))

    def _segment(self) -> tuple:
        pending = [t for t, r in enumerate(self.runs) if r.fwd[1] >= 0 and r.bwd[0] < 0]
        backward = in_backward() or any(r.bwd[0] >= 0 for r in self.runs)
        if not self.runs:
            return ("before",)
        if not backward:
            return ("after", len(self.runs) - 1)
        return ("backward", max(pending)) if pending else ("end",)

    # -- the training runs (fxopt.capture.CaptureBackend) ------------------------------------

    def forward_start(self, key: str) -> int:
        self.sample()
        t = len(self.runs)
        self.forward_samples[t] = self.tick
        self.runs.append(_Run(fwd=(self._next(), -1)))
        self._by_key.setdefault(key, []).append(t)
        self._raw = []
        self.inside += 1
        return t

    def forward_raw(self, raw: Any, saved: int) -> Any:
        """What the forward graph returned: its outputs, then `saved` values for its backward.
        Returns it with every saved tensor a fresh one of the same size (see NOTE [Memory
        outside the graphs]): the tensors themselves live on as long as the eager code holds
        them, whichever the plan saves."""
        if not saved or not isinstance(raw, (list, tuple)):
            return raw
        out = list(raw)
        for i in range(len(out) - saved, len(out)):
            t = out[i]
            if storage_of(t) is not None:
                out[i] = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype,
                                             device=t.device)
        self._raw = out[len(out) - saved:]
        return type(raw)(out) if isinstance(raw, tuple) else out

    def forward_end(self, t: int, out: Any, trained: bool) -> None:
        self.inside -= 1
        run = self.runs[t]
        end = self._next()
        run.fwd = (run.fwd[0], end)
        if not trained:  # no backward: the run's memory is outside memory
            self.runs.pop()
            self._by_key = {k: [p for p in v if p != t] for k, v in self._by_key.items()}
            for x in tree_leaves(out):
                self._sid(x, end)
            return
        outs = {i for x in tree_leaves(out) if (i := self._sid(x, end)) is not None}
        run.saved = {i for x in self._raw if (i := self._sid(x, end)) is not None}
        run.outputs, self._raw = outs - run.saved, []
        self.sample()

    def backward_start(self, key: str, args: Any) -> int | None:
        positions = self._by_key.get(key)
        if not positions:
            return None
        t = positions.pop()
        run = self.runs[t]
        run.tangents = {i for x in tree_leaves(args)
                        if (i := self._sid(x)) is not None and i not in run.saved}
        self.sample()
        run.bwd = (self._next(), -1)
        self.inside += 1
        return t

    def backward_end(self, t: int | None, grads: Any) -> None:
        if t is None:
            return
        self.inside -= 1
        run = self.runs[t]
        end = self._next()
        run.bwd = (run.bwd[0], end)
        # not sampled here: autograd lets go of the run's saved tensors once this returns
        run.grads = {i for x in tree_leaves(grads) if (i := self._sid(x, end)) is not None}

    # -- the outside memory --------------------------------------------------------------------

    def outside(self) -> Outside | None:
        """Outside memory per run, in forward order (None: a run's backward did not run, or
        backwards came between forwards)."""
        n = len(self.runs)
        if not n or self.stopped < 0 or any(r.bwd[1] < 0 for r in self.runs) or \
                max(r.fwd[1] for r in self.runs) > min(r.bwd[0] for r in self.runs):
            return None
        value = self._extra_at([tick for tick, _ in self.samples])
        before, end = 0, 0
        after, backward = [0] * n, [0] * n
        for (tick, seg) in self.samples:
            v = value[tick]
            if seg[0] == "before":
                before = max(before, v)
            elif seg[0] == "after":
                after[seg[1]] = max(after[seg[1]], v)
            elif seg[0] == "backward":
                backward[seg[1]] = max(backward[seg[1]], v)
            else:
                end = max(end, v)
        forward = [value[self.forward_samples[t]] for t in range(n)]
        return Outside(tuple(forward), tuple(after), tuple(backward), before, end)

    def _counted(self, sid: int) -> list[tuple[int, int]]:
        """The ticks during which the step's model counts storage `sid`."""
        inf = self.tick + 1
        spans = []
        last = len(self.runs) - 1
        for t, r in enumerate(self.runs):
            if sid in r.saved:
                spans.append((r.fwd[1], r.bwd[1]))
            if sid in r.outputs:
                spans.append((r.fwd[1], self.runs[t + 1].fwd[1] if t < last else r.bwd[0]))
            if sid in r.tangents:
                # held by the autograd call until it returns, after the graph's end: what it
                # holds then is the graph's, unless it lives on into the next backward
                later = [q.bwd[0] for q in self.runs if q.bwd[0] > r.bwd[1]]
                dies = self.died.get(sid, inf)
                spans.append((self.born[sid], dies if dies <= min(later, default=self.stopped)
                              else r.bwd[1]))
            if sid in r.grads and self.died.get(sid, inf) > self.stopped:
                spans.append((r.bwd[1], inf))
        return sorted(spans)

    def _extra_at(self, ticks: list[int]) -> dict[int, int]:
        """Bytes alive and not counted by the model, at each of `ticks`."""
        inf = self.tick + 1
        delta: dict[int, int] = {}
        for sid, nbytes in self.bytes.items():
            if sid < 0 or not nbytes:
                continue
            start, stop = self.born[sid], self.died.get(sid, inf)
            for a, b in self._counted(sid) + [(inf, inf)]:
                if a > start:  # alive and not counted from `start` to `a`
                    lo, hi = start, min(a, stop)
                    if lo < hi:
                        delta[lo] = delta.get(lo, 0) + nbytes
                        delta[hi] = delta.get(hi, 0) - nbytes
                start = max(start, b)
                if start >= stop:
                    break
        out, total, events = {}, 0, sorted(delta.items())
        i = 0
        for tick in sorted(ticks):
            while i < len(events) and events[i][0] <= tick:
                total += events[i][1]
                i += 1
            out[tick] = total
        return out


class TrackedFakeMode(FakeTensorMode):
    """A fake mode that shows every eager op's outputs to a `StorageTimeline`."""

    def __init__(self, *args: Any, timeline: StorageTimeline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeline = timeline
        self._depth = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        # only the outermost op: what a decomposition computes inside it shows only where the
        # fake mode has not cached the op's result yet, which would make the count vary
        self._depth += 1
        try:
            out = super().__torch_dispatch__(func, types, args, kwargs)
        finally:
            self._depth -= 1
        if not self._depth:
            self.timeline.saw(out, _loss_buffer(func, args, kwargs)
                              if self.timeline.cpu_kernels else None)
        return out


# NOTE [CPU losses keep their elementwise buffer]
# Some CPU loss kernels reduce in place: the scalar they return is a view of the elementwise
# buffer, the size of their input (measured, torch 2.13, reduction mean or sum: mse_loss,
# smooth_l1_loss, binary_cross_entropy and soft_margin_loss return a 4-byte loss on a 512 KiB
# storage for a 512 KiB input; l1_loss, huber_loss and cross_entropy do not). The fake kernel
# returns a 4-byte storage, so the fake step counts the buffer itself for these ops on a CPU
# step: an eager loss holds it until the step ends (the zoo's in-place MLP: 0.5 MiB).
_CPU_LOSS_BUFFER = {"mse_loss", "smooth_l1_loss", "binary_cross_entropy", "soft_margin_loss"}


def _loss_buffer(func: Any, args: Any, kwargs: Any) -> int | None:
    """The bytes of the storage a CPU loss kernel returns its reduced loss in (NOTE [CPU losses
    keep their elementwise buffer]); None for any other op."""
    schema = getattr(func, "_schema", None)
    if schema is None or schema.name.removeprefix("aten::") not in _CPU_LOSS_BUFFER:
        return None
    names = [a.name for a in schema.arguments]
    reduction = (kwargs or {}).get("reduction")
    if reduction is None and "reduction" in names and names.index("reduction") < len(args):
        reduction = args[names.index("reduction")]
    if reduction == 0 or not args or not isinstance(args[0], torch.Tensor):
        return None  # reduction none: the output is the elementwise tensor itself
    x = args[0]
    return size_hint(x.numel()) * x.element_size()
