"""The liveness simulator against brute-force references, on random DAGs and small models."""

from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import fxopt
from fxopt.cost_models.fusion import kernels_of
from fxopt.cost_models.memory import Step, simulate_partition, simulate_plan, simulate_steps
from fxopt.cost_models.partition_view import keep_everything, saved_names, split_view
from fxopt.graph import GraphView, Node, OpKind, Role, Side, TensorMeta
from tests.test_graph import capture_joint


# ----------------------------------------------------------------- simulate_steps vs brute force
def brute_force_steps(steps: list[Step], initial: dict, keep: set) -> int:
    """Peak by enumerating every (step, storage) pair; in-place outputs join their input."""
    owner: dict = {k: k for k in initial}
    size = dict(initial)
    alloc = {k: -1 for k in initial}
    for i, s in enumerate(steps):
        for k, b in s.writes:
            owner[k] = owner[s.inplace] if s.inplace is not None else k
            if s.inplace is None:
                size[k], alloc[k] = b, i
    last: dict = {}
    for i, s in enumerate(steps):
        for k, _ in s.writes:
            last[owner[k]] = max(last.get(owner[k], i), i)
        for k in s.reads:
            if k in owner:
                last[owner[k]] = max(last.get(owner[k], -1), i)
    for k in keep:
        last[owner[k]] = len(steps)
    peak = sum(size[k] for k in initial if last.get(k, -1) >= 0)
    for t in range(len(steps)):
        peak = max(peak, sum(size[s] for s in size if alloc[s] <= t <= last.get(s, alloc[s])))
    return peak


@st.composite
def random_steps(draw):
    n = draw(st.integers(1, 12))
    initial = {("i", f"x{j}", 0): draw(st.integers(0, 50)) for j in range(draw(st.integers(0, 2)))}
    keys = list(initial)
    steps: list[Step] = []
    plan = []
    for i in range(n):
        reads = frozenset(draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))
                          if keys else [])
        key = ("t", f"n{i}", 0)
        plan.append((key, draw(st.integers(0, 100)), reads, draw(st.booleans())))
        keys.append(key)
    keep = set(draw(st.lists(st.sampled_from(keys), max_size=2, unique=True)))
    last_read = {}
    for i, (_, _, reads, _) in enumerate(plan):
        for r in reads:
            last_read[r] = i
    sizes = dict(initial)
    taken = set()
    for i, (key, b, reads, want_inplace) in enumerate(plan):
        inplace = None
        if want_inplace:
            for r in sorted(reads):
                if last_read.get(r) == i and r not in keep and r not in taken and r[0] == "t":
                    inplace, b = r, sizes[r]
                    taken.add(r)
                    break
        sizes[key] = b
        steps.append(Step(key[1], Side.FWD, ((key, b),), reads, inplace))
    return steps, initial, keep


@settings(max_examples=300, deadline=None)
@given(random_steps())
def test_simulate_steps_matches_brute_force(case) -> None:
    steps, initial, keep = case
    timeline = simulate_steps(steps, initial=initial, keep=keep)
    assert timeline.peak_bytes == brute_force_steps(steps, initial, keep)
    step_max = max(s.live_bytes for s in timeline.steps)
    assert timeline.peak_bytes >= step_max
    if timeline.peak_step != "<start>":
        assert timeline.peak_bytes == step_max == timeline.live_at(timeline.peak_step)


def test_simulate_steps_table() -> None:
    k = lambda n: ("t", n, 0)  # noqa: E731
    steps = [Step("a", Side.FWD, ((k("a"), 10),), frozenset()),
             Step("b", Side.FWD, ((k("b"), 20),), frozenset({k("a")})),
             Step("c", Side.FWD, ((k("c"), 20),), frozenset({k("b")}), inplace=k("b")),
             Step("d", Side.BWD, ((k("d"), 5),), frozenset({k("c")}))]
    tl = simulate_steps(steps, keep={k("d")}, boundary=3)
    assert [s.live_bytes for s in tl.steps] == [10, 30, 20, 25]
    assert (tl.peak_bytes, tl.peak_step, tl.saved_bytes, tl.end_bytes) == (30, "b", 20, 5)


# ------------------------------------------------- random fwd/bwd graphs vs graph-level reference
def _meta(nbytes: int) -> TensorMeta:
    return TensorMeta((sympy.Integer(nbytes),), (nbytes,), "uint8", 1, sympy.Integer(nbytes),
                      nbytes)


_SCALAR = TensorMeta((), (), "float32", 4, sympy.Integer(4), 4)


def _view(specs: list[tuple], side: Side, outputs: list[str]) -> GraphView:
    """specs: (name, kind, role, inputs, nbytes, alias_of); nbytes None is a float scalar."""
    users: dict[str, list[str]] = {s[0]: [] for s in specs}
    for s in specs:
        for i in s[3]:
            users[i].append(s[0])
    for o in outputs:
        users[o].append("output")
    nodes = [Node(name, idx, "placeholder" if kind is OpKind.PLACEHOLDER else f"test.{kind.value}",
                  kind, role, side, tuple(inputs), tuple(users[name]),
                  (_SCALAR if nb is None else _meta(nb),),
                  alias_of=alias, is_output=name in outputs)
             for idx, (name, kind, role, inputs, nb, alias) in enumerate(specs)]
    nodes.append(Node("output", len(nodes), "output", OpKind.OUTPUT, Role.COMPUTED, side,
                      tuple(dict.fromkeys(outputs)), (), ()))
    return GraphView(tuple(nodes), 0, tuple(outputs))


def _draw_computed(draw, specs: list, prefix: str, count: int, kinds) -> None:
    """Appends `count` computed nodes, each reading 1-3 earlier specs (a view reads one)."""
    for i in range(count):
        ins = draw(st.lists(st.sampled_from([s[0] for s in specs]), min_size=1, max_size=3,
                            unique=True))
        kind = draw(st.sampled_from(kinds))
        if kind is OpKind.VIEW:
            specs.append((f"{prefix}{i}", kind, Role.COMPUTED, (ins[0],), 0, ins[0]))
        else:
            specs.append((f"{prefix}{i}", kind, Role.COMPUTED, tuple(ins),
                          draw(st.integers(1, 99)), None))


@st.composite
def random_partition(draw, kinds=(OpKind.EXTERN, OpKind.VIEW)):
    f_specs = [("primals_1", OpKind.PLACEHOLDER, Role.PARAM, (), 64, None)]
    _draw_computed(draw, f_specs, "f", draw(st.integers(1, 8)), kinds)
    computed = [s[0] for s in f_specs[1:]]
    saved = draw(st.lists(st.sampled_from(computed), max_size=4, unique=True))
    outs = [computed[-1]]
    if draw(st.booleans()):  # the loss computed inside the graph, besides another output
        f_specs.append(("loss", OpKind.EXTERN, Role.COMPUTED, (computed[-1],), None, None))
        outs.insert(0, "loss")
    fwd = _view(f_specs, Side.FWD, outs + saved)
    b_specs = [("primals_1", OpKind.PLACEHOLDER, Role.PARAM, (), 64, None)]
    b_specs += [(s, OpKind.PLACEHOLDER, Role.SAVED, (), fwd[s].nbytes_hint, None) for s in saved]
    b_specs.append(("tangents_1", OpKind.PLACEHOLDER, Role.TANGENT, (), 4, None))
    _draw_computed(draw, b_specs, "b", draw(st.integers(1, 8)), kinds)
    b_computed = [s[0] for s in b_specs if s[2] is Role.COMPUTED]
    grads = draw(st.lists(st.sampled_from(b_computed), min_size=1, max_size=3, unique=True))
    return fwd, _view(b_specs, Side.BWD, grads)


def brute_force_partition(fwd: GraphView, bwd: GraphView) -> int:
    """Every compute node is a kernel; walk the schedule and sum each live storage."""
    def root(view: GraphView, name: str) -> str:
        while view[name].kind is OpKind.VIEW:
            name = view[name].alias_of
        return name

    sched = [("f", n) for n in fwd.nodes if n.kind is OpKind.EXTERN] + [("h", None)] + \
            [("b", n) for n in bwd.nodes if n.kind is OpKind.EXTERN]
    storage: dict[str, tuple[int, int, int]] = {}  # id -> (bytes, alloc, last)
    end = len(sched)
    pos = {}
    for t, (tag, n) in enumerate(sched):
        if n is not None:
            pos[(tag, n.name)] = t

    def add(sid: str, nbytes: int, alloc: int, use: int) -> None:
        b, a, last = storage.get(sid, (nbytes, alloc, alloc))
        storage[sid] = (b, a, max(last, use))

    handoff = pos_h = next(t for t, (tag, _) in enumerate(sched) if tag == "h")
    for tag, view in (("f", fwd), ("b", bwd)):
        for n in view.nodes:
            if n.kind is OpKind.EXTERN:
                add(f"{tag}:{n.name}", n.nbytes_hint, pos[(tag, n.name)], pos[(tag, n.name)])
            if n.role is Role.TANGENT:
                add(f"{tag}:{n.name}", n.nbytes_hint, handoff, handoff)
        for n in view.nodes:
            if n.kind is not OpKind.EXTERN:
                continue
            for i in n.inputs:
                r = root(view, i)
                src = view[r]
                if src.is_fixed:
                    continue
                if src.role is Role.SAVED:
                    fr = root(fwd, r)
                    if fwd[fr].is_fixed:
                        continue
                    add(f"f:{fr}", 0, 0, pos[(tag, n.name)])
                else:
                    add(f"{tag}:{r}", 0, 0, pos[(tag, n.name)])
    saved = [n.name for n in bwd.nodes if n.role is Role.SAVED]
    for s in saved:
        fr = root(fwd, s)
        if not fwd[fr].is_fixed:
            add(f"f:{fr}", 0, 0, pos_h)
    # NOTE [When the forward's outputs die]: the scalar loss is held to the end; the other
    # outputs die when the forward returns if the graph computes the loss, else at the handoff.
    user = [o for o in fwd.output_names if o not in saved]
    in_graph = "loss" in user
    for o in user:
        if not fwd[root(fwd, o)].is_fixed:
            dies = end if o == "loss" else pos_h - 1 if in_graph and pos_h > 0 else pos_h
            add(f"f:{root(fwd, o)}", 0, 0, dies)
    # NOTE [Gradients the caller hands in]: with the loss outside, the tangents are held by the
    # caller to the end of the backward.
    if not in_graph:
        for n in bwd.nodes:
            if n.role is Role.TANGENT:
                add(f"b:{n.name}", 0, 0, end)
    for o in bwd.output_names:
        r = root(bwd, o)
        if not bwd[r].is_fixed and bwd[r].role is not Role.SAVED:
            add(f"b:{r}", 0, 0, end)
        elif bwd[r].role is Role.SAVED and not fwd[root(fwd, r)].is_fixed:
            add(f"f:{root(fwd, r)}", 0, 0, end)
    return max([0] + [sum(b for b, a, last in storage.values() if a <= t <= last)
                      for t in range(len(sched))])


@settings(max_examples=300, deadline=None)
@given(random_partition())
def test_partition_simulation_matches_brute_force(case) -> None:
    fwd, bwd = case
    assert simulate_partition(fwd, bwd).peak_bytes == brute_force_partition(fwd, bwd)


def _working_sets(view: GraphView, tag_fixed) -> list[int]:
    out = []
    for k in kernels_of(view):
        keys = set(k.writes) | {r for r in k.reads if not tag_fixed(view[r[0]])}
        total = sum(view.storage_bytes(x) for x in keys)
        if k.inplace is not None:
            total -= view.storage_bytes(k.inplace)
        out.append(total)
    return out


@settings(max_examples=300, deadline=None)
@given(random_partition(kinds=(OpKind.EXTERN, OpKind.VIEW, OpKind.POINTWISE,
                               OpKind.REDUCTION, OpKind.SCATTER)))
def test_peak_is_never_below_a_kernels_working_set(case) -> None:
    fwd, bwd = case
    peak = simulate_partition(fwd, bwd).peak_bytes
    fixed = lambda n: n.is_fixed  # noqa: E731
    assert peak >= max(_working_sets(fwd, fixed) + _working_sets(bwd, fixed) + [0])


# ----------------------------------------------------------------------------- real graphs
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 64)
        self.ln = nn.LayerNorm(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.fc1(self.ln(x)))
        return (self.fc2(h).softmax(-1) * x).sum()


def test_fused_pointwise_chain_is_not_materialised() -> None:
    views = capture_joint(Tiny(), torch.randn(32, 64))
    fwd = views["fwd"]
    kernels = kernels_of(fwd)
    written = {w[0] for k in kernels for w in k.writes}
    gelu_parts = [n.name for n in fwd.nodes if n.op in ("aten.erf.default", "aten.add.Tensor")
                  and n.kind is OpKind.POINTWISE and not n.is_output]
    assert gelu_parts and not set(gelu_parts) & written
    # Every buffer a kernel reads was written earlier or is a placeholder.
    seen = {n.name for n in fwd.nodes if n.kind is OpKind.PLACEHOLDER}
    for k in kernels:
        assert {r[0] for r in k.reads} <= seen, k
        seen |= {w[0] for w in k.writes}


def test_plan_simulation_matches_partition_simulation() -> None:
    views = capture_joint(Tiny(), torch.randn(32, 64))
    joint, fwd, bwd = views["joint"], views["fwd"], views["bwd"]
    by_partition = simulate_partition(fwd, bwd).peak_bytes
    by_plan = simulate_plan(joint, saved_names(bwd)).peak_bytes
    assert abs(by_plan - by_partition) <= 0.05 * by_partition
    f2, b2 = split_view(joint, keep_everything(joint))
    assert saved_names(b2) == keep_everything(joint)
    computed_in_fwd = {n.name for n in f2.nodes
                       if n.kind not in (OpKind.PLACEHOLDER, OpKind.OUTPUT)}
    recomputed = [n.name for n in b2.nodes
                  if n.kind not in (OpKind.PLACEHOLDER, OpKind.OUTPUT)
                  and n.name in computed_in_fwd]
    assert not recomputed, "keep-everything recomputes nothing"
    # The min-cut plan recomputes some forward values in the backward.
    _, b3 = split_view(joint, saved_names(bwd))
    assert any(joint[n.name].side is Side.FWD for n in b3.nodes
               if n.kind not in (OpKind.PLACEHOLDER, OpKind.OUTPUT))


def test_dropped_kept_buffer_dies_after_its_last_read() -> None:
    """NOTE [When the forward's outputs die]: a kept buffer dropped at a step is freed there,
    or after its last read if that comes later."""
    k = lambda n: ("t", n, 0)  # noqa: E731
    steps = [Step("a", Side.FWD, ((k("a"), 10),), frozenset()),
             Step("b", Side.FWD, ((k("b"), 20),), frozenset(), drops=frozenset({k("a")})),
             Step("c", Side.BWD, ((k("c"), 5),), frozenset()),
             Step("d", Side.BWD, ((k("d"), 1),), frozenset({k("b")}), drops=frozenset({k("b")}))]
    tl = simulate_steps(steps, keep={k("a"), k("b")}, boundary=2)
    assert [s.live_bytes for s in tl.steps] == [10, 30, 25, 21]
    assert (tl.saved_bytes, tl.end_bytes) == (20, 0)


# ----------------------------------------------- NOTE [Saved inputs and the timeline]
class PatchEmbed(nn.Module):
    """ViT's patch embedding: a 2-d convolution that reads the user's input (and saves it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


@pytest.mark.skipif(not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()),
                    reason="Inductor copies a convolution's input channels-last only with oneDNN")
def test_a_saved_input_copied_channels_last_counts_once() -> None:
    """The backward gets the forward's channels-last copy of the input in its place, which the
    timeline holds; counted again at the boundary it set the step's peak (430080 B against
    the graph's own 271360 B)."""
    x = torch.randn(64, 3, 16, 16)
    step = fxopt.explain(PatchEmbed(), x)
    (report,) = step.graphs
    assert any(s.name.startswith("primals") and s.nbytes == x.nbytes for s in report.saved)
    assert report.timelines[0].live_bytes[0] >= x.nbytes  # the copy, from the first kernel
    # the step adds only the eager loss (a scalar and its gradient) to the graph's own peak
    assert report.peak_bytes <= step.peak_bytes <= report.peak_bytes + step.outside_bytes
    assert step.outside_bytes <= 16
