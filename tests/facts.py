"""Per-tensor facts the planner needs, one frozen record per forward value the backward reads.

Step indices are positions in the joint graph's node order (``Node.index``), the fixed
schedule fxopt plans against: forward nodes first, then backward nodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sympy

from fxopt.cost_models.device import Hardware
from fxopt.cost_models.partition_view import needed_by_backward
from fxopt.cost_models.runtime import node_seconds
from fxopt.graph import GraphView, OpKind, Side

__all__ = ["TensorFacts", "tensor_facts"]


@dataclass(frozen=True)
class TensorFacts:
    """What keeping, recomputing or offloading one saved candidate involves.

    ``nbytes``/``nbytes_hint`` are the bytes kept alive by saving it: for a view, its base's
    storage (``storage``).  ``recompute_seconds`` is the roofline time of the node alone
    (its inputs assumed available); chains are the solver's business.
    """

    name: str
    storage: str
    nbytes: sympy.Expr
    nbytes_hint: int
    dtype: str
    produced_at: int
    last_fwd_use: int
    first_bwd_use: int
    last_bwd_use: int
    recompute_seconds: float
    is_view: bool
    is_random: bool
    inputs: tuple[str, ...]


def tensor_facts(joint: GraphView, profile: Hardware,
                 names: Iterable[str] | None = None) -> dict[str, TensorFacts]:
    """Facts for ``names`` (default: every forward value a backward node reads)."""
    wanted = sorted(needed_by_backward(joint) if names is None else set(names),
                    key=lambda n: joint[n].index)
    out: dict[str, TensorFacts] = {}
    for name in wanted:
        node = joint[name]
        if not node.outputs:
            raise ValueError(f"{name!r} produces no tensor; only tensors can be saved")
        base, idx = joint.storage_of(name)
        meta = joint[base].outputs[idx]
        fwd_uses = [joint[u].index for u in node.users
                    if u in joint.by_name and joint[u].side is Side.FWD]
        bwd_uses = [joint[u].index for u in node.users
                    if u in joint.by_name and joint[u].side is Side.BWD
                    and joint[u].kind is not OpKind.OUTPUT]
        if not bwd_uses:
            bwd_uses = [len(joint.nodes) - 1]
        out[name] = TensorFacts(
            name=name, storage=base, nbytes=meta.nbytes, nbytes_hint=meta.nbytes_hint,
            dtype=meta.dtype, produced_at=node.index,
            last_fwd_use=max(fwd_uses, default=node.index), first_bwd_use=min(bwd_uses),
            last_bwd_use=max(bwd_uses), recompute_seconds=node_seconds(joint, name, profile),
            is_view=node.kind is OpKind.VIEW, is_random=node.is_random, inputs=node.inputs)
    return out
