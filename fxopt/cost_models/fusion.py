"""Which values Inductor materialises: the kernels of one graph and the buffers they read.

A pure function of a :class:`~fxopt.graph.GraphView` (one forward or backward graph).  The
result, a tuple of :class:`Kernel`, is what both the memory simulator and the runtime model
work on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from fxopt.graph import GraphView, Node, OpKind, Role

__all__ = ["Kernel", "FusionRules", "addmm_fusions", "kernels_of", "moves_matmul"]

StorageKey = tuple[str, int]


@dataclass(frozen=True)
class FusionRules:
    """The thresholds of Inductor's realisation heuristics (``torch._inductor.config``)."""

    realize_reads_threshold: int = 4  # config.realize_reads_threshold
    realize_opcount_threshold: int = 30  # config.realize_opcount_threshold default
    realize_acc_reads_threshold: int = 8  # config.realize_acc_reads_threshold default
    # On CPU Inductor realises a reused value whose inlined body contains one of these
    # (ir.StorageBox.should_realize_on_reuse).
    heavy_ops: frozenset[str] = frozenset({"exp", "log", "log10", "log1p", "log2", "sigmoid",
                                           "tanh"})
    cpu: bool = True
    inplace_buffers: bool = True  # config.inplace_buffers
    # False gives every pointwise value its own buffer, as eager PyTorch does (an ablation).
    inline_pointwise: bool = True
    # True when fxopt's schedule pass runs on the graph (see NOTE [Matmuls that Inductor
    # moves]): only an mm directly followed by its add is still fused, so nothing moves.
    addmm_guard: bool = False


@dataclass(frozen=True)
class Kernel:
    """One materialised step: the node it computes, the buffers it writes and reads.

    ``nodes`` lists the graph nodes fused into it (the realised node last).  ``inplace`` names
    an input buffer whose storage the output reuses (Inductor's in-place buffer reuse).
    ``lowered_at`` is the node whose lowering emits it: its own node, or for a pointwise value
    realised on demand, the node that needed it (see NOTE [Kernels lowered together]).
    """

    name: str
    kind: OpKind
    writes: tuple[StorageKey, ...]
    reads: frozenset[StorageKey]
    nodes: tuple[str, ...]
    lowered_at: str
    inplace: StorageKey | None = None
    flops: int = 0


@dataclass
class _Pending:
    """An unrealised value (inlined into whoever reads it)."""

    reads: set[StorageKey] = field(default_factory=set)
    heavy: bool = False
    opcount: int = 0
    nodes: list[str] = field(default_factory=list)
    flops: int = 0


def _op_short(node: Node) -> str:
    # "aten.exp.default" -> "exp"
    parts = node.op.split(".")
    return parts[1] if len(parts) >= 2 else node.op


# NOTE [Matmuls that Inductor moves]
# Inductor's post-grad pattern `addmm` (torch/_inductor/fx_passes/post_grad.py) rewrites
# add(mm(a, b), c), where the mm has no other user, c is a tensor of the same dtype that
# expands to the mm's shape, into addmm(c, a, b) placed at the add. On GPU it may split that
# back into mm + add, still at the add. Either way the matmul moves to the add, and a and b
# live until then. In a backward this is costly: with tied embeddings the output-layer
# weight gradient is mm(grad_logits^T, h) added to the embedding gradient at the very end,
# so grad_logits (batch x sequence x vocabulary) stays live through the whole backward.
def addmm_fusions(view: GraphView) -> dict[str, str]:
    """mm -> add for every add that Inductor's post-grad pass fuses with an mm input."""
    out: dict[str, str] = {}
    for node in view.nodes:
        if node.op != "aten.mm.default" or len(node.users) != 1 or not node.outputs:
            continue
        add = view[node.users[0]]
        if add.op != "aten.add.Tensor" or len(add.inputs) != 2:
            continue
        other = view[add.inputs[0] if add.inputs[1] == node.name else add.inputs[1]]
        if not other.outputs or len(node.inputs) != 2:
            continue
        mats = [view[i].outputs[0] for i in node.inputs if view[i].outputs]
        inp, mm = other.outputs[0], node.outputs[0]
        if len(mats) != 2 or any(m.dtype != inp.dtype for m in mats):
            continue
        if len(inp.shape_hint) <= 2 and all(
                d == 1 or d == e for d, e in zip(reversed(inp.shape_hint),
                                                 reversed(mm.shape_hint))):
            out[node.name] = add.name
    return out


def moves_matmul(view: GraphView, mm: str, add: str) -> bool:
    """Whether fusing ``mm`` into ``add`` moves it past another kernel."""
    return any(n.kind not in (OpKind.VIEW, OpKind.OTHER, OpKind.PLACEHOLDER)
               for n in view.nodes[view[mm].index + 1:view[add].index])


# NOTE [Emulating Inductor's realisation]
# GraphLowering.run_node lowers each FX node to an IR value that stays *unrealised* (inlined
# into its consumers) until something forces a buffer:
#   * graph outputs, reductions, scatter-like ops and extern kernels get a buffer; an output
#     (or a view that is an output) is realised where it is lowered, not at the output node;
#   * an extern kernel realises each of its inputs (ExternKernel.realize_input);
#   * a value with several users is realised when one user needs realised inputs, when its
#     inlined body holds a heavy op on CPU (exp, log, tanh, ...), is large (> 30 ops) or reads
#     more than 4 buffers (StorageBox.should_realize_on_reuse);
#   * any value reading more than 8 buffers is realised (has_exceeded_max_reads).
# A value realised on demand is computed by a kernel placed just before the consumer that
# demanded it, which is where Inductor registers the buffer.  A view of an unrealised value
# stays unrealised; realising it realises its base.
# Then the scheduler reuses a dying input buffer of the same size for the output of a fused
# kernel (config.inplace_buffers), which we model by ``Kernel.inplace``.  Saved tensors are
# candidates too: AOTAutograd donates them to the backward (``bw_donated_idxs``), and the
# compiled backward clears its argument list, so their storage can be written in place.
# Inductor's scheduler may fuse neighbouring kernels into one, but fxopt's compiles never let a
# fusion move a kernel (NOTE [Inductor keeps fxopt's kernel order] in fxopt/kernel_order.py):
# the kernels run in the order given here, which the Problem's anchors and the passes rely on.
# NOTE [Kernels lowered together]
# A pointwise value that is not realised at its own node is emitted when a later node needs a
# buffer (an extern kernel's input, an output): that node's lowering emits both kernels, the
# pending one first. Nothing inserted into the graph can run between them, so a planned
# action "before the second kernel" really happens before the first. `Kernel.lowered_at`
# records the node; the Problem's anchors (solver/problem.py) and the rewriting passes use it.
def kernels_of(view: GraphView, rules: FusionRules = FusionRules(),
               channels_last: frozenset[str] = frozenset()) -> tuple[Kernel, ...]:
    """The kernels Inductor runs for ``view`` (one forward or backward graph), in order.

    ``channels_last``: saved tensors (forward nodes, backward placeholders) that Inductor
    stores channels-last (NOTE [Channels-last saved tensors] in fxopt/op_memory.py)."""
    pending: dict[str, _Pending] = {}  # node name -> unrealised body
    copies: set[str] = set()  # reshapes of a channels-last tensor, copied for extern kernels
    kernels: list[Kernel] = []
    fused = {mm: add for mm, add in addmm_fusions(view).items()
             if not (rules.addmm_guard and moves_matmul(view, mm, add))}
    fused_into = {add: mm for mm, add in fused.items()}

    def base(name: str) -> str:
        node = view[name]
        while node.kind is OpKind.VIEW and node.alias_of is not None:
            node = view[node.alias_of]
        return node.name

    def reads_of(name: str) -> set[StorageKey]:
        if name in copies:
            return {(name, 0)}
        b = base(name)
        if b in pending:
            return set(pending[b].reads)
        return {view.storage_of(name)}

    def realise(name: str, at: str) -> None:
        b = base(name)
        body = pending.pop(b, None)
        if body is None:
            return
        node = view[b]
        kernels.append(Kernel(b, node.kind, ((b, 0),), frozenset(body.reads),
                              tuple(body.nodes), flops=body.flops, lowered_at=at))

    def copy_layout(name: str, at: str) -> None:
        """A reshape of a channels-last tensor that an extern kernel or the graph's output
        needs is a dense copy, made once (NOTE [Channels-last saved tensors])."""
        src = view[name]
        if (src.kind is OpKind.VIEW and base(name) in channels_last and name not in copies
                and src.outputs and len(src.outputs[0].shape_hint) != 4):
            copies.add(name)
            kernels.append(Kernel(name, OpKind.POINTWISE, ((name, 0),),
                                  frozenset({view.storage_of(name)}), (name,), lowered_at=at))

    for node in view.nodes:
        if node.kind is OpKind.VIEW and node.is_output and node.alias_of is not None:
            realise(node.name, node.name)  # Inductor realises an output view where lowered
            copy_layout(node.name, node.name)
            continue
        if node.kind in (OpKind.PLACEHOLDER, OpKind.VIEW, OpKind.OTHER):
            continue
        if node.kind is OpKind.OUTPUT:
            for name in node.inputs:
                if name in view.by_name and view[name].outputs:
                    realise(name, node.name)
            continue
        if node.name in fused:  # computed at its add (NOTE [Matmuls that Inductor moves])
            continue
        tensor_inputs = [i for i in node.inputs if view[i].outputs]
        kind = node.kind
        if node.name in fused_into:
            mm = view[fused_into[node.name]]
            tensor_inputs = [i for i in tensor_inputs if i != mm.name]
            tensor_inputs += [i for i in mm.inputs if view[i].outputs]
            kind = OpKind.EXTERN
        if kind is OpKind.EXTERN:
            for i in tensor_inputs:
                realise(i, node.name)
                copy_layout(i, node.name)
        reads: set[StorageKey] = set()
        body_nodes: list[str] = []
        heavy, opcount, flops = False, 1, node.flops
        if node.name in fused_into:
            flops += view[fused_into[node.name]].flops
        for i in tensor_inputs:
            reads |= reads_of(i)
            p = pending.get(base(i))
            if p is not None:
                heavy |= p.heavy
                opcount += p.opcount
                flops += p.flops
                body_nodes.extend(n for n in p.nodes if n not in body_nodes)
        body_nodes.append(node.name)
        heavy |= _op_short(node) in rules.heavy_ops
        if kind is OpKind.POINTWISE:
            pending[node.name] = _Pending(reads, heavy, opcount, body_nodes, flops)
            users = [view[u] for u in node.users]
            must = (node.is_output or not rules.inline_pointwise
                    or len(reads) > rules.realize_acc_reads_threshold)
            if len(users) > 1:
                must |= any(u.kind is OpKind.EXTERN for u in users)
                must |= heavy and rules.cpu
                must |= opcount > rules.realize_opcount_threshold
                must |= len(reads) > rules.realize_reads_threshold
            if must:
                realise(node.name, node.name)
            continue
        writes = tuple((node.name, k) for k in range(len(node.outputs)))
        if node.name in fused_into:
            body_nodes.insert(-1, fused_into[node.name])
        kernels.append(Kernel(node.name, kind, writes, frozenset(reads), tuple(body_nodes),
                              flops=flops, lowered_at=node.name))
    return tuple(_mark_inplace(view, kernels, rules))


def _mark_inplace(view: GraphView, kernels: list[Kernel], rules: FusionRules) -> list[Kernel]:
    if not rules.inplace_buffers:
        return kernels
    readers: dict[StorageKey, int] = {}
    for k in kernels:
        for r in k.reads:
            readers[r] = readers.get(r, 0) + 1
    out: list[Kernel] = []
    taken: set[StorageKey] = set()
    for k in kernels:
        # A channels-last tensor's dense copy never takes its source's storage (the layouts
        # differ; measured, NOTE [Channels-last saved tensors])
        if k.kind in (OpKind.POINTWISE, OpKind.REDUCTION) and len(k.writes) == 1 \
                and view[k.name].kind is not OpKind.VIEW:
            size = view.storage_bytes(k.writes[0])
            for r in sorted(k.reads):
                src = view[r[0]]
                reusable = src.kind is not OpKind.PLACEHOLDER or src.role is Role.SAVED
                if (readers.get(r) == 1 and r not in taken and reusable
                        and not src.is_output and view.storage_bytes(r) == size and size > 0):
                    taken.add(r)
                    k = replace(k, inplace=r)
                    break
        out.append(k)
    return out
