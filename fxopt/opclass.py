"""One classification of the ops in a joint graph, from torch's own op tags and schemas.

The graph view, the Problem and the passes all ask this module what an op is, so a decision the
passes would refuse is never offered to the solver (see NOTE [What fxopt may touch]).
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from fxopt.compat import HigherOrderOperator, OpOverload

__all__ = ["OpClass", "Effect", "checkpoint_policy", "classify", "must_recompute",
           "refusal_for_recompute"]


class Effect(enum.Enum):
    """Why an op may not run a second time in backward (at most one applies, in this order)."""

    NONE = "none"
    COLLECTIVE = "collective"  # a communication op or its wait: every rank must run it once
    MUTATING = "mutating"  # writes into an input
    EFFECTFUL = "effectful"  # has side effects beyond its outputs (asserts, prints, tokens)
    RANDOM = "random"  # draws fresh random numbers on every run


_REASONS = {
    Effect.COLLECTIVE: "it is a collective (every rank must run it exactly once)",
    Effect.MUTATING: "it mutates its input in place",
    Effect.EFFECTFUL: "it has side effects",
    Effect.RANDOM: "it draws random numbers that a second run would not reproduce",
}


@dataclass(frozen=True)
class OpClass:
    """What fxopt needs to know about one op call."""

    effect: Effect
    seeded: bool = False  # tagged nondeterministic_seeded, whether or not randomness is on

    @property
    def recomputable(self) -> bool:
        return self.effect is Effect.NONE

    @property
    def refusal(self) -> str | None:
        """Why it may not be recomputed, in plain words; None when it may."""
        return _REASONS.get(self.effect)


# NOTE [What fxopt may touch]
# Randomness. An op tagged `nondeterministic_seeded` draws from the global generator, so a
# second run gives other numbers: it is kept (or offloaded, or stored in low bit), never
# recomputed. Two exceptions make most real models recomputable:
# - its randomness is switched off by its arguments: the scaled-dot-product-attention family
#   (math, flash, efficient, cudnn, CPU flash, overrideable) and the lower `_flash_attention_
#   forward` / `_efficient_attention_forward` carry the tag even with `dropout_p == 0`, and
#   dropout with `p == 0` or `train=False` is the identity;
# - Inductor's own random ops replay their RNG by construction: with `fallback_random=False`
#   its joint-graph pass rewrites rand/dropout into `inductor_seeds` (tagged: one seed tensor
#   drawn per forward, kept) -> `inductor_lookup_seed` -> `inductor_random(size, seed)`, which
#   is a pure function of the seed. Recomputing `inductor_random` from the saved seed tensor
#   reproduces the forward's mask bit for bit (PyTorch's min-cut partitioner relies on the same
#   fact); only `inductor_seeds` itself is random.
# Collectives (`_c10d_functional`, `c10d_functional`, their `wait_tensor`), ops whose schema
# writes an input, and impure ops (asserts, effect tokens) never run twice; nor does a node the
# model's own checkpoint policy marks MUST_SAVE (`refusal_for_recompute`).
_SWITCH_ARGS = ("dropout_p", "p")
_COLLECTIVE_NAMESPACES = frozenset({"_c10d_functional", "c10d_functional", "_dtensor", "c10d"})
_EFFECT_HOPS = ("with_effects", "auto_functionalized", "auto_functionalized_v2")


def _arg(node: fx.Node, op: OpOverload, name: str) -> object:
    for i, schema_arg in enumerate(op._schema.arguments):
        if schema_arg.name == name:
            if i < len(node.args):
                return node.args[i]
            if name in node.kwargs:
                return node.kwargs[name]
            return schema_arg.default_value
    return None


def _randomness_off(node: fx.Node, op: OpOverload) -> bool:
    """A seeded op whose arguments switch its randomness off (dropout probability 0)."""
    names = {a.name for a in op._schema.arguments}
    for name in _SWITCH_ARGS:
        if name not in names:
            continue
        if name == "p" and op.overloadpacket not in (torch.ops.aten.native_dropout,
                                                     torch.ops.aten.dropout):
            return False  # bernoulli(p) and friends draw whatever p is
        value = _arg(node, op, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            return True
        if "train" in names and _arg(node, op, "train") is False:
            return True
        return False
    return False


def classify(node: fx.Node) -> OpClass:
    """The class of one FX node (placeholders, outputs and getitem have no effect)."""
    if node.op != "call_function":
        return OpClass(Effect.NONE)
    target = node.target
    if target is operator.getitem:
        return OpClass(Effect.NONE)
    if isinstance(target, HigherOrderOperator):
        if target.name() in _EFFECT_HOPS:
            return OpClass(Effect.EFFECTFUL)
        return OpClass(Effect.NONE)
    if not isinstance(target, OpOverload):
        # Python callables on SymInts (operator.mul, sym_size) and the like: pure, unless FX
        # knows them as side-effectful (torch._assert, profiler ranges).
        return OpClass(Effect.EFFECTFUL if node.is_impure(impure_random=False) else Effect.NONE)
    if target.namespace in _COLLECTIVE_NAMESPACES:
        return OpClass(Effect.COLLECTIVE)
    if target._schema.is_mutable:
        return OpClass(Effect.MUTATING)
    seeded = torch.Tag.nondeterministic_seeded in target.tags
    if seeded and not _randomness_off(node, target):
        return OpClass(Effect.RANDOM, seeded=True)
    if node.is_impure(impure_random=False):
        return OpClass(Effect.EFFECTFUL, seeded=seeded)
    return OpClass(Effect.NONE, seeded=seeded)


def checkpoint_policy(node: fx.Node) -> str | None:
    """The model's checkpoint policy for `node` (`CheckpointPolicy` name), None outside any."""
    return getattr(node.meta.get("recompute"), "name", None)


def refusal_for_recompute(node: fx.Node, opc: OpClass | None = None) -> str | None:
    """Why `node` must not run a second time in backward, or None when it may: its op class,
    or the model's own checkpoint policy marking it MUST_SAVE. `opc`: `classify(node)`, when
    the caller has it already."""
    reason = (opc or classify(node)).refusal
    if reason is None and checkpoint_policy(node) == "MUST_SAVE":
        return "the model's checkpoint policy marks it MUST_SAVE"
    return reason


# NOTE [The model's own checkpoint policy]
# Nodes inside a `torch.utils.checkpoint` region carry `meta["recompute"]`: plain checkpoint
# and Hugging Face's gradient checkpointing tag them PREFER_RECOMPUTE, selective policies
# choose per op among MUST_SAVE, PREFER_SAVE, PREFER_RECOMPUTE and MUST_RECOMPUTE. MUST_SAVE is
# never recomputed (`refusal_for_recompute`); MUST_RECOMPUTE is always recomputed where the
# backward needs
# it, except the last node of a region that the next region reads (PyTorch's own partitioner
# saves that one, `cleanup_recompute_tags`). PREFER_* are hints: the budget is capped at
# PyTorch's default partition, which honours them, so fxopt never plans to hold more.
def must_recompute(n: fx.Node) -> bool:
    if checkpoint_policy(n) != "MUST_RECOMPUTE":
        return False
    region = n.meta.get("ac_graph_id")
    return not any((checkpoint_policy(u) or "").endswith("RECOMPUTE")
                   and region is not None and u.meta.get("ac_graph_id", region) > region
                   for u in n.users)
