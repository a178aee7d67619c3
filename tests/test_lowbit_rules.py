"""The low-bit eligibility rule table, on plain data (no FX, no tensors)."""

from __future__ import annotations

import pytest

from fxopt.lowbit_rules import (
    DEFAULT_RULES,
    LowbitRules,
    SavedTensorFacts,
    decide,
    decide_bare,
    dtype_name,
    op_names,
)
from fxopt.plan import LowbitFormat

BIG = 1 << 16


def facts(producer: str, consumers: tuple[str, ...], dtype: str = "float32",
          numel: int | None = BIG, **kw: object) -> SavedTensorFacts:
    return SavedTensorFacts(producer=producer, dtype=dtype, numel=numel, consumers=consumers, **kw)


# (facts, eligible, deciding rule)
TABLE = [
    # inputs of matmuls and pointwise ops: yes
    (facts("aten.gelu.default", ("aten.mm.default", "aten.gelu_backward.default")), True,
     "consumer"),
    (facts("aten.view.default", ("aten.t.default", "aten.bmm.default")), True, "consumer"),
    (facts("aten.mm.default", ("aten.threshold_backward.default",)), True, "consumer"),
    (facts("aten.add.Tensor", ("aten.convolution_backward.default",), dtype="bfloat16"), True,
     "consumer"),
    # softmax statistics / probabilities: no
    (facts("aten._softmax.default", ("aten.bmm.default", "aten._softmax_backward_data.default")),
     False, "consumer"),
    (facts("aten.amax.default", ("aten.sub.Tensor",)), False, "producer"),
    (facts("aten.logsumexp.default", ("aten.sub.Tensor",)), False, "producer"),
    (facts("aten._scaled_dot_product_flash_attention.default", ("aten.mm.default",),
           output_index=1), False, "producer"),
    # normalisation statistics: no; the normalised output (index 0) feeding a matmul: yes
    (facts("aten.native_layer_norm.default", ("aten.native_layer_norm_backward.default",),
           output_index=2), False, "producer"),
    (facts("aten.native_batch_norm.default", ("aten.mul.Tensor",), output_index=1), False,
     "producer"),
    (facts("aten.native_layer_norm.default", ("aten.mm.default",), output_index=0), True,
     "consumer"),
    (facts("aten.add.Tensor", ("aten.native_layer_norm_backward.default",)), False, "consumer"),
    # integer / bool / complex / already 8-bit tensors: never
    (facts("aten.argmax.default", ("aten.index.Tensor",), dtype="int64"), False, "dtype"),
    (facts("aten.gt.Scalar", ("aten.mul.Tensor",), dtype="torch.bool"), False, "dtype"),
    (facts("aten._fft_r2c.default", ("aten.mul.Tensor",), dtype="complex64"), False, "dtype"),
    (facts("aten.mm.default", ("aten.mm.default",), dtype="float8_e4m3fn"), False, "dtype"),
    # too small, unknown size, parameters, unknown consumers
    (facts("aten.mm.default", ("aten.mm.default",), numel=100), False, "size"),
    (facts("aten.mm.default", ("aten.mm.default",), numel=None), False, "size"),
    (facts("aten.mm.default", ("aten.mm.default",), is_parameter=True), False, "parameter"),
    (facts("aten.mm.default", ("aten.mm.default", "aten.my_weird_op.default")), False, "consumer"),
    (facts("aten.mm.default", ()), False, "consumer"),
]


@pytest.mark.parametrize("case", TABLE,
                         ids=lambda c: f"{c[0].producer}->{','.join(c[0].consumers)}")
def test_rule_table(case: tuple[SavedTensorFacts, bool, str]) -> None:
    f, eligible, rule = case
    d = decide(f)
    assert (d.eligible, d.rule) == (eligible, rule), d.reason
    assert d.reason


def test_a_compared_tensor_may_be_stored_in_fp8_only() -> None:
    """int8 rounds values near zero to zero, which flips a ReLU's mask; fp8 keeps the sign
    (NOTE [Comparisons and int8])."""
    fp8, int8 = LowbitFormat.FP8, LowbitFormat.INT8
    for consumers in (("aten.convolution.default", "aten.threshold_backward.default"),
                      ("aten.alias.default", "aten.le.Scalar"),
                      ("aten.leaky_relu_backward.default",), ("aten.hardtanh_backward.default",)):
        d = decide(facts("aten.relu.default", consumers))
        assert (d.eligible, d.rule, d.formats) == (True, "consumer", (fp8,)), consumers
        assert d.allows(fp8) and not d.allows(int8)
        assert "fp8 only" in d.reason and op_names(consumers[-1])[2] in d.reason
    tolerant = decide(facts("aten.gelu.default", ("aten.mm.default", "aten.gelu_backward.default")))
    assert tolerant.allows(fp8) and tolerant.allows(int8)
    # a denied consumer still wins; an override allows every format
    assert not decide(facts("aten.relu.default", ("aten.le.Scalar",
                                                  "aten._softmax_backward_data.default"))).eligible
    forced = decide(facts("aten.relu.default", ("aten.le.Scalar",)),
                    LowbitRules(overrides={"relu": True}))
    assert forced.allows(int8) and forced.rule == "override"
    assert not decide(facts("aten.relu.default", ("aten.le.Scalar",), numel=10)).allows(fp8)


def test_overrides_by_name_and_by_op() -> None:
    softmax = facts("aten._softmax.default", ("aten._softmax_backward_data.default",), name="p1")
    assert not decide(softmax).eligible
    for key in ("p1", "aten._softmax.default", "aten._softmax", "_softmax"):
        d = decide(softmax, LowbitRules(overrides={key: True}))
        assert (d.eligible, d.rule) == (True, "override")
    gelu = facts("aten.gelu.default", ("aten.mm.default",), name="g")
    assert not decide(gelu, LowbitRules(overrides={"aten.gelu.default": False})).eligible
    # the tensor name wins over the op name
    both = LowbitRules(overrides={"g": True, "gelu": False})
    assert decide(gelu, both).eligible
    # an override can force a small tensor but never a non-floating one or a parameter
    assert decide(facts("aten.mm.default", ("aten.mm.default",), numel=4),
                  LowbitRules(overrides={"mm": True})).eligible
    assert decide(facts("aten.mm.default", ("aten.mm.default",), dtype="int32"),
                  LowbitRules(overrides={"mm": True})).rule == "dtype"
    assert decide(facts("aten.mm.default", ("aten.mm.default",), is_parameter=True),
                  LowbitRules(overrides={"mm": True})).rule == "parameter"


def test_unknown_consumers_can_be_allowed_but_denied_ones_still_win() -> None:
    rules = LowbitRules(allow_unknown_consumers=True)
    assert decide(facts("aten.mm.default", ("aten.my_weird_op.default",)), rules).eligible
    denied = facts("aten.mm.default", ("aten.my_weird_op.default", "aten._softmax_backward_data"))
    assert not decide(denied, rules).eligible


def test_min_numel_is_configurable() -> None:
    f = facts("aten.mm.default", ("aten.mm.default",), numel=512)
    assert not decide(f).eligible
    assert decide(f, LowbitRules(min_numel=256)).eligible


def test_bare_tensor_rules() -> None:
    assert decide_bare("torch.float32", BIG, False).eligible
    assert decide_bare("bfloat16", BIG, False).eligible
    assert decide_bare("torch.int64", BIG, False).rule == "dtype"
    assert decide_bare("float32", BIG, True).rule == "parameter"
    assert decide_bare("float32", 10, False).rule == "size"
    assert decide_bare("float32", 10, False, LowbitRules(min_numel=0)).eligible


def test_names_and_validation() -> None:
    assert op_names("aten.mm.default") == ("aten.mm.default", "aten.mm", "mm")
    assert op_names("aten::addmm") == ("aten.addmm", "aten.addmm", "addmm")
    assert op_names("torch.ops.aten.mul_.Tensor")[2] == "mul"
    assert op_names("gelu") == ("gelu", "gelu", "gelu")
    assert dtype_name("torch.bfloat16") == "bfloat16"
    with pytest.raises(TypeError, match="True or False"):
        LowbitRules(overrides={"mm": "yes"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="min_numel"):
        LowbitRules(min_numel=-1)
    overrides = {"mm": True}
    rules = LowbitRules(overrides=overrides)
    overrides["mm"] = False  # the rules keep their own copy
    assert rules.overrides["mm"] is True
    assert DEFAULT_RULES.min_numel == 1024
