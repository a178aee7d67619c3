"""A read-only view of an AOTAutograd graph (joint, forward or backward) on plain data.

The solver and the cost models work on :class:`GraphView` and never touch ``torch.fx``: every
fact they need about a node (its op, edges, side, output sizes, storage aliasing, how Inductor
will lower it) is extracted once here, in :meth:`GraphView.from_fx`.

Sizes are kept twice: as sympy expressions (symbolic where Dynamo made a dimension dynamic)
and as integers evaluated at the size hints, which is what the cost models use.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TypeVar

import sympy
import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from fxopt.opclass import Effect, checkpoint_policy, classify, refusal_for_recompute

T = TypeVar("T")

__all__ = ["GraphView", "Node", "OpKind", "Role", "Side", "TensorMeta", "JointGraph", "closure", "on_host",
           "size_hint"]

aten = torch.ops.aten


class Side(enum.Enum):
    FWD = "fwd"
    BWD = "bwd"


class Role(enum.Enum):
    """Where a node's value comes from, as far as memory accounting is concerned."""

    PARAM = "param"  # a parameter or buffer: alive for the whole step (fixed part)
    INPUT = "input"  # a user input: alive for the whole step (fixed part)
    TANGENT = "tangent"  # an incoming gradient (backward placeholder)
    SAVED = "saved"  # a backward placeholder carrying a tensor saved by the forward graph
    COMPUTED = "computed"  # produced by an op in this graph


class OpKind(enum.Enum):
    """How Inductor lowers a node (see NOTE [Inductor op kinds])."""

    PLACEHOLDER = "placeholder"
    OUTPUT = "output"
    VIEW = "view"  # shares the storage of ``alias_of`` (views, getitem of tuples)
    POINTWISE = "pointwise"  # inlined into its consumers unless Inductor realises it
    REDUCTION = "reduction"  # always gets its own buffer; reads its inputs through inlining
    SCATTER = "scatter"  # lowered by Inductor to a fresh buffer (cat, scatter, index_put, ...)
    EXTERN = "extern"  # an extern/fallback kernel (mm, conv, fft, ...): inputs must be realised
    OTHER = "other"  # symbolic ints, seeds and other non-tensor values


# NOTE [Inductor op kinds]
# The kind decides materialisation in cost_models.fusion.  It follows Inductor's own tables:
# ops that Inductor cannot lower, that it lowers as fallbacks, or whose inputs it must realise
# (``needs_realized_inputs``: mm, bmm, conv, fft, ...) are EXTERN; ops tagged pointwise, plus the
# lowered ops that Inductor expresses as a Pointwise IR (index, gather, full, iota, pad, random),
# are POINTWISE; ops tagged reduction are REDUCTION; the remaining lowered ops produce a buffer.
_VIEW_OPS = frozenset({
    "aten.view.default", "aten._unsafe_view.default", "aten.reshape.default",
    "aten.permute.default",
    "aten.transpose.int", "aten.t.default", "aten.expand.default", "aten.slice.Tensor",
    "aten.select.int", "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims",
    "aten.squeeze.default", "aten.as_strided.default", "aten.alias.default",
    "aten.view_as_real.default", "aten.view_as_complex.default", "aten.unfold.default",
    "aten.diagonal.default", "aten.split.Tensor", "aten.split_with_sizes.default",
    "aten.unbind.int", "aten.narrow.default", "aten.detach.default", "aten.real.default",
    "aten.imag.default", "aten._reshape_alias.default", "aten.view.dtype", "aten._conj.default",
    "aten.conj.default", "aten._neg_view.default",
})
_INLINE_OPS = frozenset({
    "aten.full.default", "aten.full_like.default", "aten.zeros.default", "aten.ones.default",
    "aten.zeros_like.default", "aten.ones_like.default", "aten.empty.memory_format",
    "aten.scalar_tensor.default", "prims.iota.default", "aten.arange.start_step",
    "aten.arange.default",
    "aten.gather.default", "aten.index.Tensor", "aten.constant_pad_nd.default",
    "aten.slice_scatter.default", "aten.select_scatter.default", "aten.embedding.default",
    "prims.inductor_random.default", "prims.inductor_randint.default", "aten.where.self",
    "aten.clone.default", "aten._to_copy.default", "aten.copy.default", "aten.expand_copy.default",
    "aten.permute_copy.default", "aten.repeat.default", "aten.flip.default", "aten.roll.default",
    "aten.tril.default", "aten.triu.default", "aten.masked_fill.Scalar", "aten.masked_fill.Tensor",
})
# Lowered by Inductor as calls to extern kernels or templates, whose inputs are realised.
_EXTERN_OPS = frozenset({
    "aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten.baddbmm.default",
    "aten._int_mm.default", "aten._scaled_mm.default", "aten.convolution.default",
    "aten.convolution_backward.default", "aten.addmv.default",
})


@dataclass(frozen=True)
class TensorMeta:
    """One tensor output of a node. ``nbytes`` is the storage a fresh buffer of it needs."""

    shape: tuple[sympy.Expr, ...]
    shape_hint: tuple[int, ...]
    dtype: str
    itemsize: int
    nbytes: sympy.Expr
    nbytes_hint: int

    @property
    def numel_hint(self) -> int:
        n = 1
        for d in self.shape_hint:
            n *= d
        return n


@dataclass(frozen=True)
class Node:
    """One FX node as plain data. ``inputs``/``users`` name other nodes of the same view."""

    name: str
    index: int
    op: str  # the target as a string, e.g. "aten.mm.default"; "placeholder"/"output" otherwise
    kind: OpKind
    role: Role
    side: Side
    inputs: tuple[str, ...]  # node inputs in argument order, deduplicated
    users: tuple[str, ...]
    outputs: tuple[TensorMeta, ...]  # one per tensor output (several for tuple-returning ops)
    alias_of: str | None = None  # VIEW: the input whose storage this node shares
    alias_index: int = 0  # VIEW through getitem: which output of ``alias_of``
    is_output: bool = False  # an argument of the graph's output node
    is_random: bool = False  # draws random numbers a second run would not reproduce
    is_mutating: bool = False
    refusal: str | None = None  # why it must not run again in backward (fxopt.opclass)
    workspace_bytes: int = 0  # scratch memory the op holds only while it runs
    layout_copy_bytes: int = 0  # a fixed input's channels-last copy (NOTE [Channels-last copies])
    must_recompute: bool = False  # the model's checkpoint policy requires recomputing it
    flops: int = 0  # PyTorch's flop-counter rules at the size hints (0 where no rule exists)
    primal_index: int | None = None  # position among the primals, for placeholders
    source: str = ""  # where in the user's code: "block.fc1: h = self.fc1(x)" (node_source)

    @property
    def nbytes_hint(self) -> int:
        """Bytes of all tensor outputs (what the node allocates if it gets its own buffers)."""
        return sum(t.nbytes_hint for t in self.outputs)

    @property
    def is_fixed(self) -> bool:
        """Parameters and inputs: alive before the step starts and after it ends."""
        return self.role in (Role.PARAM, Role.INPUT)


@dataclass(frozen=True)
class GraphView:
    """The nodes of one graph in execution order, with lookups. Immutable.

    ``num_fwd_outputs`` is only meaningful for a joint graph: the first that many outputs are
    the forward's user-visible outputs, the rest are gradients.
    """

    nodes: tuple[Node, ...]
    num_fwd_outputs: int = 0
    output_names: tuple[str | None, ...] = ()

    @cached_property
    def by_name(self) -> Mapping[str, Node]:
        return {n.name: n for n in self.nodes}

    def __getitem__(self, name: str) -> Node:
        try:
            return self.by_name[name]
        except KeyError as err:
            raise KeyError(f"no node named {name!r} in this graph view; names come from the "
                           "FX graph it was built from") from err

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def storage_of(self, name: str) -> tuple[str, int]:
        """The (node, output index) that owns the storage ``name`` reads or writes."""
        node = self[name]
        while node.kind is OpKind.VIEW and node.alias_of is not None:
            parent = self[node.alias_of]
            if node.op == "getitem" and parent.kind is not OpKind.VIEW:
                return parent.name, node.alias_index
            node = parent
        return node.name, 0

    def storage_bytes(self, key: tuple[str, int]) -> int:
        outs = self[key[0]].outputs
        return outs[key[1]].nbytes_hint if key[1] < len(outs) else 0

    @property
    def fwd_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.side is Side.FWD)

    @property
    def bwd_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.side is Side.BWD)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_fx(cls, gm: fx.GraphModule | fx.Graph, *, num_fwd_outputs: int | None = None,
                static_lifetime_input_indices: Sequence[int] | None = None,
                side: Side | None = None, **_: object) -> GraphView:
        """Build the view of ``gm`` (a joint, forward or backward graph from AOTAutograd).

        For a joint graph pass ``num_fwd_outputs`` (as the partitioner receives it): a node is
        backward if it depends on a tangent, forward otherwise (it could run in the forward;
        whether it does is the plan's business, see ``cost_models.plan``).  For a single graph
        pass ``side``.  ``static_lifetime_input_indices`` (primal positions that are
        parameters or buffers) separates parameters from user inputs; without it every primal
        is a parameter unless it is a placeholder named ``primals_*`` whose index is unknown,
        which only changes labels, not memory (both are fixed).
        """
        graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
        fx_nodes = list(graph.nodes)
        out_node = next(n for n in reversed(fx_nodes) if n.op == "output")
        out_args = list(torch.utils._pytree.tree_leaves(out_node.args[0]))
        out_names = tuple(a.name if isinstance(a, fx.Node) else None for a in out_args)
        if num_fwd_outputs is not None:
            bwd_set = _descendants(n for n in fx_nodes if n.op == "placeholder"
                                   and n.name.startswith("tangents"))
        statics = set(static_lifetime_input_indices or ())
        output_set = {a for a in out_args if isinstance(a, fx.Node)}
        primal_pos = {n: i for i, n in enumerate(n for n in fx_nodes if n.op == "placeholder"
                                                 and n.name.startswith("primals"))}
        nodes: list[Node] = []
        for i, n in enumerate(fx_nodes):
            if num_fwd_outputs is not None:
                node_side = Side.BWD if (n in bwd_set or n.op == "output") else Side.FWD
            else:
                node_side = side or Side.FWD
            nodes.append(_make_node(n, i, node_side, n in output_set, primal_pos.get(n), statics,
                                    static_lifetime_input_indices is not None))
        return cls(tuple(nodes), num_fwd_outputs or 0, out_names)


JointGraph = GraphView  # the joint forward+backward graph is a GraphView with both sides


def closure(roots: Iterable[T], step: Callable[[T], Iterable[T]]) -> set[T]:
    """`roots` and everything reachable from them by `step` (users, inputs, ...)."""
    seen: set[T] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(step(n))
    return seen


def _descendants(roots: Iterable[fx.Node]) -> set[fx.Node]:
    return closure(roots, lambda n: n.users)


def _dim(d: object) -> tuple[sympy.Expr, int]:
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        hint = d.node.hint
        if hint is None:
            hint = d.node.shape_env.size_hint(expr, allow_none=True)
        if hint is None:
            raise ValueError(f"dimension {expr} has no size hint (unbacked symbol); give Dynamo "
                             "an example input or mark the dimension with a hint")
        return expr, int(hint)
    return sympy.Integer(int(d)), int(d)


def size_hint(d: object) -> int:
    """A dimension's concrete size: the int itself, or a SymInt's size hint."""
    return _dim(d)[1]


def _tensor_meta(t: torch.Tensor) -> TensorMeta:
    dims = [_dim(d) for d in t.shape]
    shape = tuple(e for e, _ in dims)
    hint = tuple(h for _, h in dims)
    itemsize = t.dtype.itemsize
    numel = sympy.Integer(1)
    numel_hint = 1
    for e, h in dims:
        numel *= e
        numel_hint *= h
    return TensorMeta(shape, hint, str(t.dtype).removeprefix("torch."), itemsize,
                      sympy.simplify(numel * itemsize), numel_hint * itemsize)


def _outputs(val: object) -> tuple[TensorMeta, ...]:
    if isinstance(val, torch.Tensor):
        return (_tensor_meta(val),)
    if isinstance(val, (tuple, list)):
        return tuple(_tensor_meta(v) if isinstance(v, torch.Tensor) else
                     TensorMeta((), (), "none", 0, sympy.Integer(0), 0) for v in val)
    return ()


def _same_storage(a: object, b: object) -> bool:
    try:
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and StorageWeakRef(a.untyped_storage()) == StorageWeakRef(b.untyped_storage()))
    except (RuntimeError, NotImplementedError):
        return False


def _kind(n: fx.Node) -> OpKind:
    from torch._inductor import lowering  # heavy import, done on first use

    if n.op in ("placeholder", "output"):
        return OpKind(n.op)
    target = n.target
    if target is operator.getitem:
        return OpKind.VIEW if isinstance(n.args[0], fx.Node) else OpKind.OTHER
    if not isinstance(n.meta.get("val"), (torch.Tensor, tuple, list)):
        return OpKind.OTHER
    if str(target) in _VIEW_OPS:
        if target is aten.reshape.default:
            src = n.args[0]
            if not _same_storage(n.meta.get("val"), getattr(src, "meta", {}).get("val")):
                return OpKind.POINTWISE  # a copying reshape is a pointwise copy
        return OpKind.VIEW
    if not isinstance(target, torch._ops.OpOverload):
        return OpKind.EXTERN
    if _touches_complex(n):  # Inductor generates no code for complex tensors: eager fallback
        return OpKind.EXTERN
    if (target not in lowering.lowerings or target in lowering.fallbacks
            or target in lowering.needs_realized_inputs or str(target) in _EXTERN_OPS):
        return OpKind.EXTERN
    if torch.Tag.reduction in target.tags:
        return OpKind.REDUCTION
    if torch.Tag.pointwise in target.tags or str(target) in _INLINE_OPS:
        return OpKind.POINTWISE
    return OpKind.SCATTER


def _touches_complex(n: fx.Node) -> bool:
    """lowering.fallback_node_due_to_unsupported_type, for complex dtypes."""
    vals = [n.meta.get("val")] + [a.meta.get("val") for a in n.all_input_nodes]
    for v in torch.utils._pytree.tree_leaves(vals):
        if isinstance(v, torch.Tensor) and v.is_complex():
            return True
    return False


# NOTE [Fallback outputs that keep their input's strides]
# An eager fallback allocates what the ATen kernel allocates, which is not always a dense
# buffer of its output's size. The functional `copy(self, src)` is `clone_preserve_strides(self)`
# then `copy_`: for `self` a slice of a larger tensor it allocates the whole span of that
# tensor's storage and returns a view into it. FNO's spectral layers write their truncated modes
# into a zero spectrum this way (`out_fft[slices] = ...`, functionalised to copy + slice_scatter
# on a complex tensor, an eager fallback): the copy holds the full 4 MiB spectrum, not the
# 2.25 MiB slice (measured, RSS per wrapper line). The fake tensor of the output has the same
# storage, so an extern node counts its output's storage where that is larger.
def _fallback_storage(val: torch.Tensor, meta: TensorMeta) -> TensorMeta:
    try:
        span = size_hint(val.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError, ValueError):
        return meta
    if span <= meta.nbytes_hint:
        return meta
    return dataclasses.replace(meta, nbytes=sympy.Integer(span), nbytes_hint=span)


def _flops(n: fx.Node) -> int:
    from torch.utils.flop_counter import flop_registry

    target = n.target
    packet = getattr(target, "overloadpacket", None)
    if packet not in flop_registry:
        return 0
    args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: a.meta.get("val"))
    try:
        flops = flop_registry[packet](*args, **kwargs, out_val=n.meta.get("val"))
        # int() on a symbolic count would install a guard and specialise the dynamic shape.
        if isinstance(flops, torch.SymInt):
            return int(flops.node.hint) if flops.node.has_hint() else 0
        return int(flops)
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return 0


def _role(n: fx.Node, primal_index: int | None, statics: set[int], know_statics: bool) -> Role:
    if n.op != "placeholder":
        return Role.COMPUTED
    if n.name.startswith("tangents"):
        return Role.TANGENT
    if n.name.startswith("primals"):
        if know_statics and primal_index is not None and primal_index not in statics:
            return Role.INPUT
        return Role.PARAM
    return Role.SAVED


def _make_node(n: fx.Node, index: int, side: Side, is_output: bool, primal_index: int | None,
               statics: set[int], know_statics: bool) -> Node:
    kind = _kind(n)
    inputs = tuple(dict.fromkeys(a.name for a in n.all_input_nodes))
    alias_of, alias_index = None, 0
    if kind is OpKind.VIEW:
        alias_of = n.args[0].name
        if n.target is operator.getitem:
            alias_index = int(n.args[1])
    target = n.target
    op = (n.op if n.op in ("placeholder", "output") else
          "getitem" if target is operator.getitem else str(target))
    opc = classify(n)
    outputs = _outputs(n.meta.get("val"))
    if kind is OpKind.EXTERN and isinstance(n.meta.get("val"), torch.Tensor):
        outputs = (_fallback_storage(n.meta["val"], outputs[0]),)
    if on_host(n):
        outputs = tuple(dataclasses.replace(t, nbytes=sympy.Integer(0), nbytes_hint=0)
                        for t in outputs)
    return Node(
        name=n.name, index=index, op=op, kind=kind, role=_role(n, primal_index, statics,
                                                                  know_statics),
        side=side, inputs=inputs, users=tuple(u.name for u in n.users),
        outputs=outputs, alias_of=alias_of, alias_index=alias_index,
        is_output=is_output, is_random=opc.effect is Effect.RANDOM,
        is_mutating=opc.effect is Effect.MUTATING, refusal=refusal_for_recompute(n, opc),
        flops=_flops(n) if n.op == "call_function" else 0, workspace_bytes=_workspace(n),
        layout_copy_bytes=_channels_last_copy(n),
        must_recompute=_must_recompute(n) and opc.refusal is None,
        primal_index=primal_index if n.op == "placeholder" else None,
        source=node_source(n.meta))


# NOTE [Node sources]
# Dynamo records, on every node it traces, the module stack (`nn_module_stack`: key -> (path,
# class), outermost first; AOTAutograd copies it to backward nodes as `fwd_nn_module_stack`) and
# the Python traceback of the call (`stack_trace`). A node's source is its innermost module, as
# the path `model.get_submodule` takes, and the last line of the traceback outside torch itself
# (a torch.nn leaf such as Linear would otherwise show `F.linear(...)`, not the user's call).
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_FRAME = re.compile(r'\s*File "([^"]*)", line \d+, in ')
_ROOT = re.compile(r"""^(?:[LG]\[(['"]).*?\1\]|self(?=\.|$))""")  # L['self'], G['model'], self
_ITEM = re.compile(r"""(?:\.?_modules)?\[(['"]?)(.*?)\1\]""")  # [0], ['x'], ._modules['x']
SOURCE_LINE_CHARS = 80


@lru_cache(maxsize=4096)
def module_path(path: str) -> str:
    """Dynamo's module path as the attribute path of the user's model:
    `L['self']._modules['encoder'].layer[0]` -> `encoder.layer.0` (the root itself: "")."""
    path = _ITEM.sub(lambda m: "." + m.group(2), _ROOT.sub("", path.strip(), count=1))
    return ".".join(p for p in path.split(".") if p and p != "_orig_mod")


@lru_cache(maxsize=4096)
def source_line(stack_trace: str) -> str:
    """The code of the traceback's last frame outside torch (else its last frame), stripped and
    cut to SOURCE_LINE_CHARS."""
    lines = stack_trace.splitlines()
    found: list[tuple[bool, str]] = []  # (inside torch, code) per frame that shows its code
    for i, line in enumerate(lines[:-1]):
        m = _FRAME.match(line)
        code = lines[i + 1].strip()
        if m and code and not _FRAME.match(lines[i + 1]) and set(code) - set("^~ "):
            found.append((m.group(1).startswith(_TORCH_DIR), code))
    code = next((c for inside, c in reversed(found) if not inside), found[-1][1] if found else "")
    return code if len(code) <= SOURCE_LINE_CHARS else code[:SOURCE_LINE_CHARS - 3] + "..."


def node_source(meta: Mapping[str, object]) -> str:
    """`module.path: code line` from an FX node's meta (NOTE [Node sources]); "" when unknown."""
    stack = meta.get("nn_module_stack") or meta.get("fwd_nn_module_stack") or {}
    path = ""
    if isinstance(stack, Mapping) and stack:
        inner = list(stack.values())[-1]
        path = module_path(str(inner[0] if isinstance(inner, tuple) else inner))
    trace = meta.get("stack_trace")
    code = source_line(trace) if isinstance(trace, str) else ""
    return ": ".join(p for p in (path, code) if p)


_HOST_OPS = ("fxopt.offload.default",)


# NOTE [Host copies hold no device memory]
# The memory model counts device memory. An offloaded tensor's host copy (the output of
# `fxopt::offload` in forward, and the backward placeholder that only `fxopt::prefetch` reads)
# lives in pinned host memory, so it counts zero bytes; its device memory is counted where
# `prefetch` allocates it again. Known by the op rather than the tensor's device, because a
# step traced on the CPU may be planned as a CUDA step (fxopt.explain with a GPU profile).
def on_host(n: fx.Node) -> bool:
    """Whether the node's value is a host copy (NOTE [Host copies hold no device memory])."""
    if n.op == "call_function":
        return str(n.target) in _HOST_OPS
    return n.op == "placeholder" and bool(n.users) and all(
        str(u.target) == "fxopt.prefetch.default" for u in n.users)


# NOTE [Op workspace]
# Some extern kernels allocate scratch memory that no graph value shows. Measured on the CPU
# (RSS high-water mark of one call, `MALLOC_MMAP_THRESHOLD_=65536`): a complex-to-real FFT over
# more than one dimension (`irfft2`, `irfftn`: the spectral layers of every FNO) copies its input
# and transforms the leading dimensions into a second complex buffer before the last one, so it
# holds twice its input besides its output (6.5 MiB for a 2.25 MiB input and a 2 MiB output).
# Over one dimension, and real-to-complex or complex-to-complex transforms, hold nothing extra.
#
# A CPU convolution (oneDNN, `mkldnn_convolution`) reorders its activations into a blocked layout
# whose channel dimension is padded to a multiple of the vector width (16 floats with AVX-512):
# the forward holds a blocked input and a blocked output, then the plain output and the blocked
# one; `convolution_backward` holds a blocked grad_output and a blocked input besides its
# outputs. Measured for groups=1 (1-d and 2-d, 1x1 and 3x3, 1 to 128 channels): the peak of one
# call above its arguments is P(out) + max(P(in), out) for the forward and grad_input + P(in) +
# P(grad_out) for the backward, P(t) being t's bytes with its channels padded. With few
# channels this is many times the activations (FNO's 8-channel channel-MLPs: 8 MiB on top of a
# 2 MiB output at batch 256), and it is where the step peaks. This holds for 1-d convolutions
# only: Inductor lays out 2-d ones channels-last on the CPU (NOTE [Channels-last copies]), and
# oneDNN runs those in place, with nothing above the arguments (measured: hf_resnet's 3x3 and
# 7x7 convolutions and their backward, 3 to 16 channels; ViT's patch embedding).
def _workspace(n: fx.Node) -> int:
    if n.op != "call_function":
        return 0
    if n.target in (aten.convolution.default, aten.convolution_backward.default):
        return _conv_workspace(n)
    if n.target is not aten._fft_c2r.default:
        return 0
    src, dims = n.args[0], n.args[1]
    if not isinstance(src, fx.Node) or len(dims) < 2:
        return 0
    val = src.meta.get("val")
    return 2 * _tensor_meta(val).nbytes_hint if isinstance(val, torch.Tensor) else 0


# NOTE [The model's own checkpoint policy]
# Nodes inside a `torch.utils.checkpoint` region carry `meta["recompute"]`: plain checkpoint
# and Hugging Face's gradient checkpointing tag them PREFER_RECOMPUTE, selective policies
# choose per op among MUST_SAVE, PREFER_SAVE, PREFER_RECOMPUTE and MUST_RECOMPUTE. MUST_SAVE is
# never recomputed (`opclass.refusal_for_recompute`); MUST_RECOMPUTE is always recomputed where the backward needs
# it, except the last node of a region that the next region reads (PyTorch's own partitioner
# saves that one, `cleanup_recompute_tags`). PREFER_* are hints: the budget is capped at
# PyTorch's default partition, which honours them, so fxopt never plans to hold more.
def _must_recompute(n: fx.Node) -> bool:
    if checkpoint_policy(n) != "MUST_RECOMPUTE":
        return False
    region = n.meta.get("ac_graph_id")
    return not any((checkpoint_policy(u) or "").endswith("RECOMPUTE")
                   and region is not None and u.meta.get("ac_graph_id", region) > region
                   for u in n.users)


def _conv_workspace(n: fx.Node) -> int:
    """oneDNN's blocked copies of a CPU convolution's activations (NOTE [Op workspace])."""
    forward = n.target is aten.convolution.default
    transposed, groups = (n.args[6], n.args[8]) if forward else (n.args[7], n.args[9])
    vals = [a.meta.get("val") if isinstance(a, fx.Node) else None for a in n.args[:2]]
    out = n.meta.get("val")
    if forward:
        vals = [vals[0], out]  # input, output
    else:
        vals = [vals[1], vals[0]]  # input, grad_output
    if (transposed or groups != 1 or not all(isinstance(v, torch.Tensor) for v in vals)
            or vals[0].device.type != "cpu" or not vals[0].is_floating_point()
            or vals[0].dim() < 3 or _inductor_channels_last(vals[0])):
        return 0
    block = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8

    def padded(t: torch.Tensor) -> int:
        c = size_hint(t.shape[1])
        return _tensor_meta(t).nbytes_hint // max(c, 1) * (-(-c // block) * block)

    if forward:
        inp, res = vals
        return padded(res) + max(padded(inp), _tensor_meta(res).nbytes_hint) \
            - _tensor_meta(res).nbytes_hint
    inp, grad_out = vals
    return padded(inp) + padded(grad_out)


# NOTE [Channels-last copies]
# On the CPU with oneDNN, Inductor's layout optimisation (`GraphLowering.decide_layout_opt`)
# is on for every graph with a convolution, and it makes each 2-d convolution read its input
# and weight channels-last (`require_channels_last`). A parameter or user input in the default
# layout is therefore copied once, at the start of the forward, and the copy is what the
# backward receives in its place: hf_resnet's `pixel_values` (256x3x32x32, 3 MiB) is held from
# the first kernel of the forward to the last `convolution_backward`, on top of everything the
# graphs show (measured, RSS per wrapper line; its 7x7 weight's copy too, a few KiB). The copy
# counts as a buffer of the placeholder's size wherever the placeholder is read.
def _inductor_channels_last(t: torch.Tensor) -> bool:
    return (t.dim() == 4 and t.device.type == "cpu" and torch.backends.mkldnn.enabled
            and torch.backends.mkldnn.is_available())


def _channels_last_copy(n: fx.Node) -> int:
    """Bytes of the channels-last copy Inductor makes of a placeholder that a 2-d CPU
    convolution reads as input or weight (NOTE [Channels-last copies]); 0 otherwise."""
    val = n.meta.get("val")
    if n.op != "placeholder" or not isinstance(val, torch.Tensor) \
            or not _inductor_channels_last(val) or not val.is_floating_point() \
            or val.is_contiguous(memory_format=torch.channels_last):
        return 0
    if any(u.op == "call_function" and u.target is aten.convolution.default
           and n in u.args[:2] for u in n.users):
        return _tensor_meta(val).nbytes_hint
    return 0
