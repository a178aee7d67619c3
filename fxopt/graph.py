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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import sympy
import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from fxopt.compat import OpOverload, inductor_lowering, tree_leaves
from fxopt.op_memory import (
    channels_last_copy,
    channels_last_outputs,
    fallback_storage,
    on_host,
    workspace_bytes,
)
from fxopt.opclass import Effect, classify, must_recompute, refusal_for_recompute
from fxopt.sources import node_source
from fxopt.tensor_meta import TensorMeta, size_hint, storage_of, tensor_meta

T = TypeVar("T")

__all__ = ["GraphView", "Node", "OpKind", "Role", "Side", "TensorMeta", "JointGraph", "closure",
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
    # Stored channels-last by Inductor if the forward returns it (NOTE [Channels-last saved
    # tensors] in fxopt/op_memory.py)
    channels_last_output: bool = False
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

    def __iter__(self) -> Iterator[Node]:
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
        whether it does is the plan's business, see ``cost_models.partition_view``).  For a
        single graph pass ``side``.  ``static_lifetime_input_indices`` (primal positions that are
        parameters or buffers) separates parameters from user inputs; without it every primal
        is a parameter unless it is a placeholder named ``primals_*`` whose index is unknown,
        which only changes labels, not memory (both are fixed).
        """
        graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
        fx_nodes = list(graph.nodes)
        out_node = next(n for n in reversed(fx_nodes) if n.op == "output")
        out_args = list(tree_leaves(out_node.args[0]))
        out_names = tuple(a.name if isinstance(a, fx.Node) else None for a in out_args)
        if num_fwd_outputs is not None:
            bwd_set = _descendants(n for n in fx_nodes if n.op == "placeholder"
                                   and n.name.startswith("tangents"))
        statics = set(static_lifetime_input_indices or ())
        output_set = {a for a in out_args if isinstance(a, fx.Node)}
        primal_pos = {n: i for i, n in enumerate(n for n in fx_nodes if n.op == "placeholder"
                                                 and n.name.startswith("primals"))}
        fwd_fx = ([] if side is Side.BWD else
                  [n for n in fx_nodes if num_fwd_outputs is None or n not in bwd_set])
        channels_last = channels_last_outputs(fwd_fx)
        nodes: list[Node] = []
        for i, n in enumerate(fx_nodes):
            if num_fwd_outputs is not None:
                node_side = Side.BWD if (n in bwd_set or n.op == "output") else Side.FWD
            else:
                node_side = side or Side.FWD
            node = _make_node(n, i, node_side, n in output_set, primal_pos.get(n), statics,
                              static_lifetime_input_indices is not None)
            if n in channels_last:
                node = dataclasses.replace(node, channels_last_output=True)
            nodes.append(node)
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


def _outputs(val: object) -> tuple[TensorMeta, ...]:
    if isinstance(val, torch.Tensor):
        return (tensor_meta(val),)
    if isinstance(val, (tuple, list)):
        return tuple(tensor_meta(v) if isinstance(v, torch.Tensor) else
                     TensorMeta((), (), "none", 0, sympy.Integer(0), 0) for v in val)
    return ()


def _same_storage(a: object, b: object) -> bool:
    sa, sb = storage_of(a), storage_of(b)  # without a storage: not shared
    return sa is not None and sb is not None and StorageWeakRef(sa) == StorageWeakRef(sb)


def _kind(n: fx.Node) -> OpKind:
    lowering = inductor_lowering()  # heavy import, done on first use

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
    if not isinstance(target, OpOverload):
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
    for v in tree_leaves(vals):
        if isinstance(v, torch.Tensor) and v.is_complex():
            return True
    return False



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


def _alias(n: fx.Node) -> tuple[str, int]:
    """A view's (source node, output index): the node whose storage it shares and, through a
    getitem, which of that node's outputs (`_kind` makes a view only of a node's value)."""
    src = n.args[0]
    if not isinstance(src, fx.Node):
        raise TypeError(f"view {n.name} ({n.target}) reads {src!r}, not a node of the graph")
    if n.target is not operator.getitem:
        return src.name, 0
    index = n.args[1]
    if not isinstance(index, int):
        raise TypeError(f"getitem {n.name} takes output {index!r} of {src.name}, not an int")
    return src.name, index


def _make_node(n: fx.Node, index: int, side: Side, is_output: bool, primal_index: int | None,
               statics: set[int], know_statics: bool) -> Node:
    kind = _kind(n)
    inputs = tuple(dict.fromkeys(a.name for a in n.all_input_nodes))
    alias_of, alias_index = _alias(n) if kind is OpKind.VIEW else (None, 0)
    target = n.target
    op = (n.op if n.op in ("placeholder", "output") else
          "getitem" if target is operator.getitem else str(target))
    opc = classify(n)
    outputs = _outputs(n.meta.get("val"))
    if kind is OpKind.EXTERN and isinstance(n.meta.get("val"), torch.Tensor):
        outputs = (fallback_storage(n.meta["val"], outputs[0]),)
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
        flops=_flops(n) if n.op == "call_function" else 0, workspace_bytes=workspace_bytes(n),
        layout_copy_bytes=channels_last_copy(n),
        must_recompute=must_recompute(n) and opc.refusal is None,
        primal_index=primal_index if n.op == "placeholder" else None,
        source=node_source(n.meta))
