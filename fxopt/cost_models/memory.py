"""Liveness simulation of one training step: live bytes at every kernel, and the peak.

Two entry points, both returning a :class:`MemoryTimeline`:

* :func:`simulate_partition` takes the forward and backward graphs exactly as Inductor receives
  them from a partitioner.  This is the one checked against measured peaks
  (``tests/test_memory_accuracy.py``), because it sees precisely what gets saved and recomputed.
* :func:`simulate_plan` takes the joint graph and a plan (the set of forward nodes whose outputs
  are saved); the rest of what the backward needs is recomputed just before its first backward
  use (see :func:`fxopt.cost_models.partition_view.split_view`).

Both reduce to :func:`simulate_steps` on plain :class:`Step` data, which the property tests
compare with a brute-force reference.

Peak, as everywhere in fxopt: the most bytes live at once during the step above what was live
before it.  Parameters and inputs (the fixed part) are not counted; saved tensors, recomputed
values, temporaries and parameter gradients are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from fxopt.cost_models.fusion import FusionRules, Kernel, kernels_of
from fxopt.graph import GraphView, OpKind, Role, Side
from fxopt.tensor_meta import FLOATING_DTYPES

__all__ = ["MemoryStep", "MemoryTimeline", "Step", "simulate_partition", "simulate_plan",
           "simulate_steps", "steps_of_partition", "channels_last_saved"]

Key = tuple[str, str, int]  # (graph tag, node name, output index)


@dataclass(frozen=True)
class Step:
    """One kernel of the schedule as plain data for the liveness simulation.

    ``writes`` are the new buffers (key, bytes); ``reads`` the buffers it reads; ``inplace``
    a read buffer whose storage the (single) written buffer reuses; ``drops`` kept buffers
    the program lets go of after this step (NOTE [When the forward's outputs die]).
    """

    name: str
    side: Side
    writes: tuple[tuple[Key, int], ...]
    reads: frozenset[Key]
    inplace: Key | None = None
    workspace: int = 0  # scratch bytes held only while the kernel runs (NOTE [Op workspace])
    drops: frozenset[Key] = frozenset()


@dataclass(frozen=True)
class MemoryStep:
    name: str
    side: Side
    live_bytes: int  # live while the kernel runs (its inputs and outputs both allocated)
    after_bytes: int  # live once the kernel's dead inputs are freed


@dataclass(frozen=True)
class MemoryTimeline:
    steps: tuple[MemoryStep, ...]
    peak_bytes: int
    peak_step: str
    saved_bytes: int  # live between forward and backward (what the forward leaves behind)
    end_bytes: int  # live at the end of the step (gradients, loss)

    def live_at(self, name: str) -> int:
        for s in self.steps:
            if s.name == name:
                return s.live_bytes
        raise KeyError(f"no step named {name!r} in this timeline")


# NOTE [Liveness rules]
# A buffer is allocated by the step that writes it and freed right after the last step that
# reads it, except buffers listed in ``keep`` (graph outputs that outlive the schedule, such
# as parameter gradients and the loss), which stay live to the end unless a step ``drops``
# them: then they are freed after that step, or after their last read if that comes later.  A
# buffer nobody reads is freed right after the step that wrote it.  The peak at a step counts
# its outputs and all its inputs together (a kernel holds both while it runs); an in-place
# step writes into an input that dies there, so it adds nothing new.  ``initial`` buffers are
# live before step 0.
def simulate_steps(steps: Sequence[Step], *, initial: Mapping[Key, int] | None = None,
                   keep: Iterable[Key] = (), boundary: int | None = None) -> MemoryTimeline:
    """Simulate ``steps`` in order.  ``boundary``: index of the first backward step."""
    initial = dict(initial or {})
    keep = set(keep)
    size: dict[Key, int] = dict(initial)
    last: dict[Key, int] = {k: -1 for k in initial}
    for i, s in enumerate(steps):
        for k, b in s.writes:
            size[k] = b
            last[k] = max(last.get(k, i), i)
        for k in s.reads:
            if k in size:
                last[k] = max(last.get(k, i), i)
    for i, s in enumerate(steps):
        for k in s.drops:
            if k in keep and k in size:
                keep.discard(k)
                last[k] = max(last[k], i)
    free_at: dict[int, list[Key]] = {}
    n = len(steps)
    for k, t in last.items():
        if k not in keep:
            free_at.setdefault(t, []).append(k)
    live = sum(initial.values())
    for k in free_at.get(-1, ()):
        live -= size[k]
    out: list[MemoryStep] = []
    saved = live if boundary == 0 else 0
    peak, peak_step = live, "<start>"
    for i, s in enumerate(steps):
        if boundary is not None and i == boundary:
            saved = live
        new = sum(b for _, b in s.writes)
        if s.inplace is not None and s.inplace in size and last.get(s.inplace) == i:
            new -= size[s.inplace]
            free_at[i] = [k for k in free_at.get(i, []) if k != s.inplace]
        live += new
        during = live + s.workspace
        for k in free_at.get(i, ()):
            live -= size[k]
        out.append(MemoryStep(s.name, s.side, during, live))
        if during > peak:
            peak, peak_step = during, s.name
    if boundary is not None and boundary >= n:
        saved = live
    return MemoryTimeline(tuple(out), peak, peak_step, saved, live)


def _steps_of_graph(view: GraphView, tag: str, kernels: Sequence[Kernel], side: Side,
                    resolve: Mapping[tuple[str, int], Key | None]) -> list[Step]:
    def key(sk: tuple[str, int]) -> Key | None:
        if sk in resolve:
            return resolve[sk]
        return (tag, sk[0], sk[1])

    steps = []
    for k in kernels:
        writes = tuple(((tag, w[0], w[1]), view.storage_bytes(w)) for w in k.writes)
        reads = frozenset(r for r in (key(x) for x in k.reads) if r is not None)
        inplace = key(k.inplace) if k.inplace is not None else None
        workspace = sum(view[n].workspace_bytes for n in k.nodes if n in view.by_name)
        steps.append(Step(k.name, side, writes, reads, inplace, workspace))
    return steps


def _placeholder_keys(view: GraphView, tag: str, saved_map: Mapping[str, Key]
                      ) -> tuple[dict[tuple[str, int], Key | None], dict[Key, int]]:
    """Map the placeholders of ``view`` to buffer keys; fixed ones to None (not counted)."""
    resolve: dict[tuple[str, int], Key | None] = {}
    fresh: dict[Key, int] = {}
    for n in view.nodes:
        if n.kind is not OpKind.PLACEHOLDER:
            continue
        if n.name in saved_map:
            resolve[(n.name, 0)] = saved_map[n.name]
        elif n.is_fixed and n.layout_copy_bytes:  # NOTE [Channels-last copies]
            resolve[(n.name, 0)] = (tag, n.name, 0)
            fresh[(tag, n.name, 0)] = n.layout_copy_bytes
        elif n.is_fixed:
            resolve[(n.name, 0)] = None
        else:  # tangents, or saved values whose producer is unknown: live from the start
            resolve[(n.name, 0)] = (tag, n.name, 0)
            fresh[(tag, n.name, 0)] = n.nbytes_hint
    return resolve, fresh


def steps_of_partition(fwd: GraphView, bwd: GraphView, rules: FusionRules = FusionRules()
                       ) -> tuple[list[Step], dict[Key, int], set[Key], int]:
    """Steps of forward then backward, initial buffers, kept buffers, first backward step."""
    f_res, f_fresh = _placeholder_keys(fwd, "f", {})
    cl = channels_last_saved(fwd, bwd)
    f_kernels = kernels_of(fwd, rules, cl)
    f_steps = _steps_of_graph(fwd, "f", f_kernels, Side.FWD, f_res)

    copied = {w for k in f_kernels if k.kind is OpKind.POINTWISE and fwd[k.name].kind is OpKind.VIEW
              for w in k.writes}  # dense copies of channels-last tensors have their own storage

    def fwd_key(name: str) -> Key | None:
        sk = (name, 0) if (name, 0) in copied else fwd.storage_of(name)
        return f_res.get(sk, ("f", sk[0], sk[1]))

    # Saved values, and fixed ones the forward hands over as a copy (NOTE [Channels-last copies])
    saved_map = {n.name: k for n in bwd.nodes if (n.role is Role.SAVED or n.is_fixed)
                 and n.kind is OpKind.PLACEHOLDER and n.name in fwd.by_name
                 for k in [fwd_key(n.name)] if k is not None}
    fixed_saved = {n.name for n in bwd.nodes if n.role is Role.SAVED and n.name in fwd.by_name
                   and fwd_key(n.name) is None}
    b_res, b_fresh = _placeholder_keys(bwd, "b", saved_map)
    for name in fixed_saved:  # saved views of parameters or inputs cost nothing
        b_res[(name, 0)] = None
        b_fresh.pop(("b", name, 0), None)
    b_kernels = kernels_of(bwd, rules, cl)
    b_steps = _steps_of_graph(bwd, "b", b_kernels, Side.BWD, b_res)
    # Buffers that outlive their graph: forward outputs the backward reads live until that
    # read; user-visible forward outputs and backward outputs (gradients) to the end, except
    # the outputs the step lets go of (NOTE [When the forward's outputs die]).
    keep: set[Key] = set()
    user_outs = [n for n in fwd.output_names[:_num_user_outputs(fwd, bwd)] if n is not None]
    for name in user_outs:
        if (k := fwd_key(name)) is not None:
            keep.add(k)
    returned: set[Key] = set()  # what the backward returns (a view of a saved value too)
    for name in bwd.output_names:
        if name is None:
            continue
        sk = bwd.storage_of(name)
        k = b_res.get(sk, ("b", sk[0], sk[1]))
        if k is not None:
            returned.add(k)
    keep |= returned
    losses = _loss_outputs(fwd, user_outs)
    early, late = (d - returned for d in _dropped_outputs(fwd, user_outs, losses, fwd_key))
    # The backward receives every saved buffer, so each lives at least until it starts.
    handoff = Step("<backward>", Side.BWD, tuple(b_fresh.items()), frozenset(saved_map.values()),
                   drops=late | (early if not f_steps else frozenset()))
    if f_steps and early:
        f_steps[-1] = replace(f_steps[-1], drops=f_steps[-1].drops | early)
    if not losses and b_steps:  # NOTE [Gradients the caller hands in]
        held = frozenset(k for n in bwd.nodes if n.role is Role.TANGENT
                         for k in [b_res.get((n.name, 0))] if k is not None)
        keep |= held
        b_steps[-1] = replace(b_steps[-1], drops=b_steps[-1].drops | held)
    steps = f_steps + [handoff] + b_steps
    return steps, dict(f_fresh), keep, len(f_steps)


# NOTE [When the forward's outputs die]
# A training step is `loss_fn(model(*inputs), *targets).backward()` (fxopt.explain, and the
# measured step of benchmarks/bench_zoo.py): the model's outputs are temporaries, and only the
# loss is held through the backward. Two cases, told apart by whether the graph returns a scalar
# floating output (the loss computed inside the graph, as a Hugging Face model given labels):
# * Loss inside the graph: the other outputs (logits, encoder states) are dropped when the
#   forward returns, and autograd materialises a zero gradient of each one's size when the
#   backward starts, where the tangent placeholders are counted. Output and tangent never meet:
#   hf_bert at budget 0.5 measured 8.87 MiB at the first backward kernel (RSS per wrapper line),
#   where holding its 2 MiB logits to the end predicted 10.56 MiB (hf_gpt2: 15.95 vs 17.81).
# * Loss outside the graph: the eager loss holds the output (a loss that saves its input, as
#   mse_loss does) while its backward computes the output's gradient, the tangent, so both are
#   live when the compiled backward is handed over; the output dies then.
# A loop that keeps a reference to the outputs through the backward (`out = model(x); loss =
# loss_fn(out); loss.backward()`) holds them on top, to the end of the step.
def _loss_outputs(fwd: GraphView, user_outs: Sequence[str]) -> frozenset[str]:
    """The user outputs that are a loss: a scalar of a floating dtype."""
    def is_loss(name: str) -> bool:
        outs = fwd[name].outputs
        return len(outs) == 1 and outs[0].shape_hint == () and outs[0].dtype in FLOATING_DTYPES

    return frozenset(name for name in user_outs if is_loss(name))


def _dropped_outputs(fwd: GraphView, user_outs: Sequence[str], losses: frozenset[str],
                     fwd_key: Callable[[str], Key | None]
                     ) -> tuple[frozenset[Key], frozenset[Key]]:
    """User outputs dropped when the forward returns, and those dropped when the backward
    starts (NOTE [When the forward's outputs die]); the loss itself is held to the end."""
    held = {fwd_key(name) for name in losses}
    dropped = frozenset(k for name in user_outs if name not in losses
                        for k in [fwd_key(name)] if k is not None and k not in held)
    return (dropped, frozenset()) if losses else (frozenset(), dropped)


# NOTE [Gradients the caller hands in]
# The compiled backward is an autograd Function's `backward(ctx, *grads)`: the gradients that
# autograd passes in stay referenced by that call until it returns, so `del tangents_1` in the
# generated code frees nothing. When the loss is outside the graph, every tangent is such a
# gradient (the eager loss's backward made it) and is held to the end of the backward: the
# zoo's in-place MLP measured 3.51 MiB allocated at 0.5 where freeing its tangent at its last
# use predicted 2.51. When the loss is inside, the loss's tangent is a scalar, and the other
# outputs' gradients are None: AOTAutograd materialises their zeros itself, in a list that the
# generated code clears, so they die at their last use (a 4 MiB zero gradient of logits beside
# an in-graph cross-entropy: measured 11.01 MiB allocated, predicted 11.01).


def channels_last_saved(fwd: GraphView, bwd: GraphView) -> frozenset[str]:
    """Forward outputs the backward reads that Inductor stores channels-last (NOTE
    [Channels-last saved tensors] in fxopt/op_memory.py)."""
    return frozenset(n.name for n in bwd.nodes if n.kind is OpKind.PLACEHOLDER
                     and n.name in fwd.by_name and fwd[n.name].channels_last_output)


def _num_user_outputs(fwd: GraphView, bwd: GraphView) -> int:
    """Forward outputs not consumed by the backward are the user-visible ones (the loss)."""
    saved = {n.name for n in bwd.nodes if n.role is Role.SAVED
             or (n.is_fixed and n.kind is OpKind.PLACEHOLDER)}  # primals handed over as well
    return sum(1 for name in fwd.output_names if name not in saved)


def simulate_partition(fwd: GraphView, bwd: GraphView, rules: FusionRules = FusionRules()
                       ) -> MemoryTimeline:
    """Predict the memory timeline of ``fwd`` then ``bwd`` as Inductor will run them.

    ``fwd``/``bwd`` are views (``GraphView.from_fx(gm, side=...)``) of a partitioner's output.
    Backward placeholders are matched to forward outputs by name, as AOTAutograd's partitioners
    name them.
    """
    steps, initial, keep, boundary = steps_of_partition(fwd, bwd, rules)
    return simulate_steps(steps, initial=initial, keep=keep, boundary=boundary)


def simulate_plan(joint: GraphView, saved: Iterable[str], rules: FusionRules = FusionRules()
                  ) -> MemoryTimeline:
    """Predict the timeline when the forward saves exactly ``saved`` (forward node names)."""
    from fxopt.cost_models.partition_view import split_view

    fwd, bwd = split_view(joint, saved)
    return simulate_partition(fwd, bwd, rules)
