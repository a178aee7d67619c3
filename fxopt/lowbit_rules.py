"""Which saved tensors may be stored in low bit (fp8 / int8): a small rule table on plain data.

The planner asks :func:`decide` about each saved tensor, described by :class:`SavedTensorFacts`
(op names as strings such as ``"aten.mm.default"``, a dtype name, an element count), so this
module needs neither FX nor torch. Eager code that only has a bare tensor (no producer, no
consumers) uses :func:`decide_bare`, which applies the subset of rules that a tensor alone allows.

# NOTE [Low-bit eligibility rules]
Rules run in this order; the first that decides wins.

1. ``dtype``: only float32 / float16 / bfloat16 / float64 can be quantised. Integer, bool,
   complex and already-8-bit tensors are never eligible (no override can change this: the kernels
   cannot represent them).
2. ``parameter``: parameters (and tensors sharing their storage) are model state, not activations;
   never eligible.
3. ``override``: the user's mapping, looked up by tensor name first, then by producer op (full
   name ``aten.mm.default``, packet ``aten.mm`` or base ``mm``). ``True`` forces eligible,
   ``False`` forbids.
4. ``size``: tensors with fewer than ``min_numel`` elements (or an unknown count) are not worth
   the cast kernels and the scales.
5. ``producer``: statistics are not eligible: mean / rstd outputs of normalisations, the
   logsumexp of fused attention, reductions such as amax / logsumexp / var. They are small, and
   their backward divides by them or exponentiates them, which amplifies a relative error.
6. ``consumer``: every op that reads the tensor must tolerate a rounded input. Matmul-family ops,
   pointwise ops, views and sum/mean do (the error is relative, per element, and averages out).
   Softmax / log-softmax backward (which read the softmax probabilities, i.e. softmax statistics),
   normalisation backward (which recombine the input with exact saved statistics) and fused
   attention backward are denied; a denied consumer wins over allowed ones. Consumers the table
   does not know deny too, unless ``allow_unknown_consumers`` is set. The consumers are the ops
   that read the values, found through views (an ``alias`` hides nothing). A tensor that a
   consumer compares (``COMPARING_CONSUMERS``) may be stored in fp8 only (NOTE [Comparisons
   and int8]).

A decision says which formats may store the tensor (``Decision.formats``); only the consumer
rule narrows them, and an override (or a bare tensor, whose consumers are unknown) allows all.

# NOTE [Comparisons and int8]
int8 stores a block of 128 values as multiples of amax / 127: every value within amax / 254 of
zero becomes exactly zero. A backward that compares the tensor with zero (ReLU's derivative:
``threshold_backward``, or ``le(x, 0)`` once decomposed) then takes those small positive values
as zero and drops their gradient: not noise that averages out, but an error of one sign at
every such element, passed on to every earlier layer. On the 17-layer CNN of
tests/test_passes_planned.py (measured in eager, by saved-tensor hooks) an int8 ReLU output
flips 0.53% of its mask. The last one alone brings the gradient of a batch norm weight six
layers earlier to cosine 0.988 with eager's; the three of the last stage, which the lowest plan
at a budget of 0.3 stores in int8, to 0.966 (0.986 at the first layer); all 17 to 0.80. The
same tensors in int8 where only the convolutions read them (for their weight gradients) stay
at 0.99997. fp8 e4m3 keeps the sign and sends to zero only values below 2**-10 * amax / 448:
it flips 0.0015% of the masks, and all 17 ReLU outputs in fp8 stay at 0.9995. So a tensor
that a consumer compares is stored in fp8 or not at all. Comparisons with a threshold other
than zero (hardtanh's bounds, a clamp's) flip within a rounding step of the threshold in either
format; the rule cannot see the threshold and treats them as comparisons with zero, the common
case in backward graphs.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

from fxopt.plan import LOWBIT_FORMATS, LowbitFormat
from fxopt.tensor_meta import FLOATING_DTYPES

_NAMESPACES = frozenset({"aten", "prims", "fxopt", "_c10d_functional", "c10d_functional"})

# Producers whose outputs are statistics, as {op base name: output indices (None = all)}.
STATISTICS_PRODUCERS: Mapping[str, frozenset[int] | None] = types.MappingProxyType({
    "native_layer_norm": frozenset({1, 2}),
    "native_batch_norm": frozenset({1, 2}),
    "_native_batch_norm_legit": frozenset({1, 2}),
    "_native_batch_norm_legit_functional": frozenset({1, 2, 3, 4}),
    "_native_batch_norm_legit_no_training": frozenset({1, 2}),
    "native_group_norm": frozenset({1, 2}),
    "_fused_rms_norm": frozenset({1}),
    "_scaled_dot_product_flash_attention": frozenset({1}),
    "_scaled_dot_product_efficient_attention": frozenset({1}),
    "_scaled_dot_product_cudnn_attention": frozenset({1}),
    "_scaled_dot_product_flash_attention_for_cpu": frozenset({1}),
    "amax": None, "amin": None, "max": None, "min": None, "logsumexp": None,
    "var": None, "var_mean": None, "std": None, "std_mean": None, "rsqrt": None,
})

MATMUL_CONSUMERS = frozenset({
    "mm", "bmm", "addmm", "baddbmm", "addbmm", "matmul", "linear", "mv", "addmv", "dot",
    "einsum", "convolution", "convolution_backward", "_convolution", "conv1d", "conv2d",
    "conv3d", "_scaled_mm",
})
POINTWISE_CONSUMERS = frozenset({
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "exp", "log", "tanh", "sigmoid", "relu",
    "gelu", "silu", "erf", "sin", "cos", "pow", "sqrt", "reciprocal", "square", "sign", "where",
    "masked_fill", "clamp", "clamp_min", "clamp_max", "lt", "le", "gt", "ge", "eq", "ne",
    "threshold_backward", "gelu_backward", "silu_backward", "sigmoid_backward", "tanh_backward",
    "hardtanh_backward", "leaky_relu_backward", "elu_backward", "softplus_backward",
    "mish_backward", "native_dropout_backward", "_to_copy", "clone", "copy", "alias",
    "sum", "mean",
})
VIEW_CONSUMERS = frozenset({
    "view", "reshape", "_unsafe_view", "t", "transpose", "permute", "expand", "squeeze",
    "unsqueeze", "slice", "select", "split", "split_with_sizes", "unbind", "narrow",
    "as_strided", "contiguous", "flatten", "unflatten", "detach",
})
_SDPA_REASON = "recomputes softmax against an exact logsumexp"
DENIED_CONSUMERS: Mapping[str, str] = types.MappingProxyType({
    "_softmax_backward_data": "reads the softmax probabilities (softmax statistics)",
    "_log_softmax_backward_data": "reads log-softmax outputs, exponentiated in the backward",
    "native_layer_norm_backward": "recombines the input with exact saved mean/rstd",
    "native_batch_norm_backward": "recombines the input with exact saved mean/invstd",
    "native_group_norm_backward": "recombines the input with exact saved mean/rstd",
    "_fused_rms_norm_backward": "recombines the input with the exact saved rstd",
    "_scaled_dot_product_flash_attention_backward": _SDPA_REASON,
    "_scaled_dot_product_efficient_attention_backward": _SDPA_REASON,
    "_scaled_dot_product_cudnn_attention_backward": _SDPA_REASON,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _SDPA_REASON,
    "nll_loss_backward": "loss backward; tiny and precision sensitive",
    "embedding_dense_backward": "reads integer indices",
})
TOLERANT_CONSUMERS = MATMUL_CONSUMERS | POINTWISE_CONSUMERS | VIEW_CONSUMERS
# Consumers whose result depends on which side of zero (or of a threshold) each element lies:
# the derivatives of ReLU-like activations, and the comparisons they decompose into. They
# tolerate fp8, not int8 (NOTE [Comparisons and int8]).
COMPARING_CONSUMERS = frozenset({
    "lt", "le", "gt", "ge", "eq", "ne", "sign", "threshold_backward", "hardtanh_backward",
    "leaky_relu_backward", "elu_backward",
})
SIGN_KEEPING_FORMATS = (LowbitFormat.FP8,)


@dataclasses.dataclass(frozen=True)
class SavedTensorFacts:
    """What the rules need to know about one saved tensor (plain data, no FX)."""

    producer: str  # target of the producing op, e.g. "aten.mm.default"
    dtype: str  # "float32", "bfloat16", "torch.int64", ...
    numel: int | None  # None when unknown (e.g. symbolic)
    consumers: tuple[str, ...] = ()  # targets of the ops that read it
    output_index: int = 0  # which output of the producer (native_layer_norm: 1 = mean)
    name: str = ""  # graph name, for per-tensor overrides
    is_parameter: bool = False


@dataclasses.dataclass(frozen=True)
class Decision:
    eligible: bool
    rule: str  # "dtype" | "parameter" | "override" | "size" | "producer" | "consumer"
    reason: str
    formats: tuple[LowbitFormat, ...] = LOWBIT_FORMATS  # those that may store it, if eligible

    def allows(self, fmt: LowbitFormat) -> bool:
        """Whether `fmt` may store the tensor."""
        return self.eligible and fmt in self.formats


@dataclasses.dataclass(frozen=True)
class LowbitRules:
    """Tunable part of the table. ``overrides`` maps a tensor name or producer op to True/False."""

    min_numel: int = 1024
    overrides: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    allow_unknown_consumers: bool = False

    def __post_init__(self) -> None:
        if self.min_numel < 0:
            raise ValueError(f"min_numel must be >= 0, got {self.min_numel}")
        for key, value in self.overrides.items():
            if not isinstance(value, bool):
                raise TypeError(
                    f"low-bit override for {key!r} must be True or False, got {value!r}"
                )
        object.__setattr__(self, "overrides", types.MappingProxyType(dict(self.overrides)))


DEFAULT_RULES = LowbitRules()


def dtype_name(dtype: object) -> str:
    """``torch.float32`` / ``"torch.float32"`` / ``"float32"`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def op_names(target: str) -> tuple[str, str, str]:
    """(full, packet, base) names of an op target: ``aten.mm.default`` -> (that, aten.mm, mm)."""
    name = str(target).removeprefix("torch.ops.").replace("::", ".")
    parts = name.split(".")
    if len(parts) > 1 and parts[0] in _NAMESPACES:
        base = parts[1]
        packet = ".".join(parts[:2])
    else:
        base = parts[0]
        packet = base
    return name, packet, base.rstrip("_") or base


def _hard_rules(dtype: str, is_parameter: bool) -> Decision | None:
    name = dtype_name(dtype)
    if name not in FLOATING_DTYPES:
        return Decision(False, "dtype", f"{name} tensors cannot be stored in low bit")
    if is_parameter:
        return Decision(False, "parameter", "parameters are model state, not activations")
    return None


def _size_rule(numel: int | None, rules: LowbitRules) -> Decision | None:
    if numel is None or numel < rules.min_numel:
        return Decision(False, "size", f"{numel} elements < min_numel={rules.min_numel}")
    return None


def decide_bare(
    dtype: object, numel: int | None, is_parameter: bool, rules: LowbitRules = DEFAULT_RULES
) -> Decision:
    """Rules that a bare tensor allows (dtype, parameter, size); for eager saved-tensor hooks."""
    found = _hard_rules(dtype_name(dtype), is_parameter) or _size_rule(numel, rules)
    return found or Decision(True, "size", "floating, large enough, not a parameter")


def _override(facts: SavedTensorFacts, rules: LowbitRules) -> Decision | None:
    keys = ((facts.name,) if facts.name else ()) + op_names(facts.producer)
    for key in keys:
        if key in rules.overrides:
            verdict = rules.overrides[key]
            return Decision(verdict, "override", f"user override {key!r} = {verdict}")
    return None


def _producer_rule(facts: SavedTensorFacts) -> Decision | None:
    base = op_names(facts.producer)[2]
    if base in STATISTICS_PRODUCERS:
        outputs = STATISTICS_PRODUCERS[base]
        if outputs is None or facts.output_index in outputs:
            why = f"output {facts.output_index} of {base} is a statistic"
            return Decision(False, "producer", why)
    return None


def _consumer_rule(facts: SavedTensorFacts, rules: LowbitRules) -> Decision:
    bases = [op_names(c)[2] for c in facts.consumers]
    for base in bases:
        if base in DENIED_CONSUMERS:
            return Decision(False, "consumer", f"consumer {base} {DENIED_CONSUMERS[base]}")
    unknown = sorted({b for b in bases if b not in TOLERANT_CONSUMERS})
    if unknown and not rules.allow_unknown_consumers:
        return Decision(False, "consumer", f"consumers not in the table: {', '.join(unknown)}")
    if not bases:
        return Decision(False, "consumer", "no consumers given: nothing to check tolerance against")
    comparing = sorted({b for b in bases if b in COMPARING_CONSUMERS})
    if comparing:
        return Decision(True, "consumer", f"fp8 only: {', '.join(comparing)} compares it with "
                        "zero, and int8 rounds its smallest values to zero",
                        SIGN_KEEPING_FORMATS)
    return Decision(True, "consumer", "every consumer tolerates a rounded input")


def decide(facts: SavedTensorFacts, rules: LowbitRules = DEFAULT_RULES) -> Decision:
    """Whether ``facts`` may be stored in low bit, and which rule decided it."""
    return (
        _hard_rules(facts.dtype, facts.is_parameter)
        or _override(facts, rules)
        or _size_rule(facts.numel, rules)
        or _producer_rule(facts)
        or _consumer_rule(facts, rules)
    )
