"""From the joint graph's view and the cost models to the planner's integer `Problem`.

This is the only solver module that knows about graphs; the rest of `fxopt.solver` works on the
`Problem` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fxopt.cost_models.device import Hardware
from fxopt.cost_models.fusion import FusionRules, Kernel, kernels_of
from fxopt.cost_models.memory import Key, channels_last_saved, simulate_steps, steps_of_partition
from fxopt.cost_models.partition_view import keep_everything, split_view
from fxopt.cost_models.runtime import cast_seconds, kernel_seconds, transfer_seconds
from fxopt.graph import GraphView, OpKind, Side
from fxopt.lowbit_rules import LowbitRules, SavedTensorFacts, decide
from fxopt.plan import LOWBIT_BLOCK
from fxopt.solver.problem import Candidate, Problem, to_us


@dataclass(frozen=True)
class CandidateInfo:
    """What the report says about a candidate besides the Problem's integers."""

    name: str
    shape: tuple[str, ...]
    dtype: str
    not_recomputable: str | None  # why it may not be recomputed, if so
    lowbit_rule: str  # the low-bit rule table's reason
    source: str = ""  # where in the user's code it is computed (fxopt.sources.node_source)


@dataclass(frozen=True)
class BuiltProblem:
    """The Problem, the joint node that each schedule step computes, the node before which an
    action planned at that step is inserted (where Inductor lowers the step's kernel, NOTE
    [Kernels lowered together]), and per-candidate notes."""

    problem: Problem
    step_names: tuple[str, ...]
    step_nodes: tuple[str, ...]
    info: tuple[CandidateInfo, ...]


def _value_names(joint: GraphView) -> dict[tuple[str, int], str]:
    """(node, output index) -> the joint node naming that value (getitem for tuple outputs)."""
    names = {(n.name, 0): n.name for n in joint.nodes}
    for n in joint.nodes:
        if n.op == "getitem" and n.alias_of is not None:
            names[(n.alias_of, n.alias_index)] = n.name
    return names


def _readers(joint: GraphView, name: str) -> tuple[str, ...]:
    """The ops that read the values of `name`: its users, and through views theirs (a view
    that nothing reads, or that the graph returns, counts as a reader itself)."""
    out: list[str] = []
    todo, seen = list(joint[name].users), set()
    while todo:
        user = joint[todo.pop(0)]
        if user.name in seen:
            continue
        seen.add(user.name)
        if user.kind is OpKind.VIEW and user.users and not user.is_output:
            todo.extend(user.users)
        else:
            out.append(user.op)
    return tuple(out)


def _unsafe(joint: GraphView, kernel: Kernel | None, name: str, candidates: set[str]
            ) -> str | None:
    """Why recomputing this kernel is unsafe: one of its nodes, or an input that no candidate
    stands for (so a recomputation would run it again too, such as the wait of a collective
    whose result is read through it), must not run twice."""
    nodes = kernel.nodes if kernel is not None else (name,)
    for node_name in nodes:
        node = joint.by_name.get(node_name)
        if node is None:
            continue
        if node.refusal is not None:
            return f"{node.name} ({node.op}): {node.refusal}"
        for arg in node.inputs:
            src = joint.by_name.get(arg)
            if src is not None and src.refusal is not None and arg not in candidates \
                    and arg not in nodes and src.side is not Side.BWD:
                return f"it reads {src.name} ({src.op}): {src.refusal}"
    return None


def build_problem(joint: GraphView, profile: Hardware, *, host_is_device: bool = False,
                  lowbit_rules: LowbitRules | None = None) -> BuiltProblem:
    """The planning problem of one joint graph, on the keep-everything schedule.

    Offload and low-bit costs are filled in for every eligible tensor whatever the options
    allow (the solver's options restrict the choices), so an infeasible budget can say which
    option would have reached it."""
    fwd, bwd = split_view(joint, keep_everything(joint))
    rules = FusionRules(addmm_guard=True)  # the schedule pass runs on every rewritten graph
    steps, initial, kept, num_fwd = steps_of_partition(fwd, bwd, rules)
    cl = channels_last_saved(fwd, bwd)
    kernels = {k.name: k for k in kernels_of(fwd, rules, cl)}
    bwd_kernels = {k.name: k for k in kernels_of(bwd, rules, cl)}
    value_names = _value_names(joint)

    # Candidates: every buffer a forward kernel writes, except what outlives the step anyway.
    writer: dict[Key, int] = {}
    for s, step in enumerate(steps[:num_fwd]):
        for key, nbytes in step.writes:
            if key not in kept and nbytes > 0 and (key[1], key[2]) in value_names:
                writer.setdefault(key, s)
    keys = sorted(writer, key=lambda k: (writer[k], k))
    index = {k: i for i, k in enumerate(keys)}
    reads_at: dict[Key, list[int]] = {k: [] for k in keys}
    for s, step in enumerate(steps):
        if step.name == "<backward>":  # the hand-over reads everything; it is no real use
            continue
        for key in step.reads:
            if key in reads_at:
                reads_at[key].append(s)

    names = {value_names[(k[1], k[2])] for k in keys}
    candidates, info = [], []
    for key in keys:
        s = writer[key]
        name = value_names[(key[1], key[2])]
        node = joint[name]
        meta = node.outputs[0] if node.outputs else joint[key[1]].outputs[key[2]]
        nbytes = dict(steps[s].writes)[key]
        uses = reads_at[key]
        fwd_uses = [u for u in uses if u < num_fwd]
        bwd_uses = tuple(sorted({u for u in uses if u >= num_fwd}))
        kernel = kernels.get(steps[s].name)
        unsafe = _unsafe(joint, kernel, key[1], names)
        inputs = tuple(sorted({index[r] for r in steps[s].reads if r in index and r != key}))
        numel = meta.numel_hint
        rule = decide(SavedTensorFacts(
            producer=joint[key[1]].op, dtype=meta.dtype, numel=numel,
            consumers=_readers(joint, name), output_index=key[2], name=name),
            lowbit_rules or LowbitRules())
        lowbit_ok = rule.eligible and bool(bwd_uses)
        candidates.append(Candidate(
            name=name, bytes=nbytes, produced=s, last_fwd_use=max([s, *fwd_uses]),
            bwd_uses=bwd_uses, inputs=tuple(i for i in inputs if writer[keys[i]] < s),
            recompute_us=_recompute_us(joint, fwd, kernel, name, nbytes, profile),
            recomputable=unsafe is None and kernel is not None,
            must_recompute=unsafe is None and kernel is not None and node.must_recompute,
            lowbit_bytes=(numel + 4 * math.ceil(numel / LOWBIT_BLOCK)) if lowbit_ok else 0,
            cast_us=to_us(2 * cast_seconds(numel, meta.itemsize, 1, profile)) if lowbit_ok else 0,
            copy_us=to_us(transfer_seconds(nbytes, profile))
            if bwd_uses and not host_is_device else 0,
            lowbit_formats=rule.formats))
        # Its own node, else its producer (tuple outputs), else its kernel's first with one.
        around = (node, joint[key[1]], *(joint.by_name[k] for k in (kernel.nodes if kernel else ())
                                         if k in joint.by_name))
        source = next((n.source for n in around if n.source), "")
        info.append(CandidateInfo(name, tuple(str(d) for d in meta.shape), meta.dtype, unsafe,
                                  rule.reason, source))

    # NOTE [Fixed part]
    # The fixed part at a step is the simulated keep-everything memory minus the candidates alive
    # there under keep-everything. Subtracting (rather than simulating without the candidates)
    # keeps Inductor's in-place reuse right: a buffer written into a dying candidate's storage
    # costs nothing at that step, where the candidate is counted, and is fixed from then on.
    # When both are candidates the Problem cannot share their storage at that one step; the
    # fixed part is clamped at zero there, which overstates that step by at most the smaller.
    full = simulate_steps(steps, initial=initial, keep=kept, boundary=num_fwd)
    live = [m.live_bytes for m in full.steps]
    for c in candidates:
        for t in range(c.produced, max(c.last_fwd_use, *c.bwd_uses, c.produced) + 1):
            live[t] -= c.bytes
    live = [max(0, b) for b in live]
    step_us = []
    for st in steps:
        k = kernels.get(st.name) if st.side.value == "fwd" else bwd_kernels.get(st.name)
        view = fwd if st.side.value == "fwd" else bwd
        step_us.append(to_us(kernel_seconds(view, k, profile)) if k is not None else 0)
    nodes = [k.lowered_at if (k := (kernels if s < num_fwd else bwd_kernels).get(st.name))
             else st.name for s, st in enumerate(steps)]
    anchors: list[int] = []
    for s, node in enumerate(nodes):
        together = 0 < s != num_fwd and node == nodes[s - 1]
        anchors.append(anchors[s - 1] if together else s)
    problem = Problem(num_steps=len(steps), num_fwd_steps=num_fwd,
                      fixed_bytes=tuple(live),
                      step_us=tuple(step_us), candidates=tuple(candidates),
                      anchors=tuple(anchors))
    return BuiltProblem(problem, tuple(st.name for st in steps), tuple(nodes), tuple(info))


# NOTE [Pointwise recomputation fused into the backward]
# A pointwise value recomputed for backward consumers that are themselves pointwise is not a
# kernel of its own: Inductor inlines it into the backward kernel that reads it, which then
# reads the value's inputs instead of the saved value. What it costs is the difference in
# traffic (often nothing: one input of the same size), with no launch and no write. PyTorch's
# own partitioner recomputes such values for free for the same reason; pricing them as a
# standalone kernel made fxopt keep them, above PyTorch's peak at no gain in time.
def _recompute_us(joint: GraphView, fwd: GraphView, kernel: Kernel | None, name: str,
                  nbytes: int, profile: Hardware) -> int:
    if kernel is None:
        return 0
    consumers = [joint[u] for u in joint[name].users if u in joint.by_name]
    bwd = [c for c in consumers if c.side is Side.BWD]
    if kernel.kind is OpKind.POINTWISE and bwd and all(c.kind is OpKind.POINTWISE for c in bwd):
        reads = sum(fwd.storage_bytes(r) for r in kernel.reads)
        return to_us(max(reads - nbytes, 0) / profile.mem_bandwidth)
    return to_us(kernel_seconds(fwd, kernel, profile))
