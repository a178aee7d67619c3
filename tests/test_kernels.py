"""Low-bit storage kernels: reference semantics, custom ops, and Triton kernels vs reference.

Without CUDA the Triton kernels run on CPU under ``TRITON_INTERPRET=1``. The variable must be set
before ``fxopt.ops.triton_quant`` is first imported (``@triton.jit`` decides at decoration
time), so it is set at the top of this module; importing ``triton`` itself earlier is harmless.
With CUDA it is left alone (it would make every Triton kernel of the session interpreted) and the
same tests run the real kernels on the GPU against the CPU reference.
"""

from __future__ import annotations

import os

import torch  # noqa: I001

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fxopt.ops as K  # noqa: E402
from fxopt.ops import reference as ref  # noqa: E402

FMTS = ("fp8", "int8")
GRANS = ("row", "block")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def bits(t: torch.Tensor) -> torch.Tensor:
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(width)


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    diff = (bits(a) != bits(b)).nonzero()
    assert diff.numel() == 0, f"{len(diff)} elements differ, first at {diff[:3].tolist()}"


def assert_same_values(a: torch.Tensor, b: torch.Tensor) -> None:
    """Bit-equal except that NaNs only need to be NaN in the same places (NaN bits vary by cast)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(a.isnan(), b.isnan())
    keep = ~a.isnan()
    assert_same_bits(a[keep], b[keep])


def special_values(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random data over many magnitudes plus zeros, huge values, +-Inf, NaN, -0 and tiny values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 4)
    flat = x.view(-1)
    n = flat.numel()
    big = torch.finfo(dtype).max
    for i, v in enumerate([0.0, -0.0, big, -big / 3, float("inf"), float("-inf"), float("nan"),
                           1e-30, -2e-38, 1e-45]):
        if n > 7 * i + 3:
            flat[7 * i + 3] = v
    if len(shape) >= 2 and shape[0] > 2:
        x[1] = 0.0  # an all-zero row
        x[2] = float("inf")  # a row with no finite value
    return x.to(dtype)


# ---------------------------------------------------------------- reference semantics (no Triton)

@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("gran", GRANS)
def test_storage_is_compact(fmt: str, gran: str) -> None:
    x = torch.randn(6, 300, dtype=torch.bfloat16)
    p, s = ref.quantize(x, fmt, gran)
    assert p.shape == x.shape and p.element_size() == 1 and p.is_contiguous()
    groups = 6 if gran == "row" else (6 * 300 + 127) // 128
    assert s.dtype == torch.float32 and s.shape == (groups,)


def test_special_values_semantics() -> None:
    x = torch.tensor([[1.0, float("nan"), 3.0, -4.0], [float("inf"), 2.0, float("-inf"), 0.5],
                      [0.0, 0.0, 0.0, 0.0], [float("inf"), 0.0, float("-inf"), 0.0]])
    p, s = ref.quantize(x, "fp8", "row")
    y = ref.dequantize(p, s, "row", torch.float32)
    assert torch.isnan(y[0, 1]) and not torch.isnan(y[0, [0, 2, 3]]).any()  # NaN kept per element
    assert torch.allclose(y[1], torch.tensor([2.0, 2.0, -2.0, 0.5]), rtol=1 / 16)  # Inf saturates
    assert s[2] == 1.0 and torch.equal(y[2], x[2])  # zero row: scale 1, exact zeros
    assert torch.equal(y[3], torch.tensor([448.0, 0.0, -448.0, 0.0]))  # no finite value: +-QMAX
    pi, si = ref.quantize(x, "int8", "row")
    yi = ref.dequantize(pi, si, "row", torch.float32)
    assert torch.isnan(si[0]) and torch.isnan(yi[0]).all()  # int8: NaN poisons its row
    assert not torch.isnan(si[1:]).any()
    assert torch.equal(yi[3], torch.tensor([127.0, 0.0, -127.0, 0.0]))


def test_huge_and_tiny_values_do_not_overflow_the_scale() -> None:
    fmax = torch.finfo(torch.float32).max
    x = torch.tensor([[3.0e38, -1.0e38, 1.0], [1e-40, -3e-41, 0.0], [fmax, -fmax, 1.0]])
    for fmt in FMTS:
        p, s = ref.quantize(x, fmt, "row")
        assert torch.isfinite(s).all() and (s > 0).all()
        y = ref.dequantize(p, s, "row", torch.float32)
        assert torch.isfinite(y).all()
        assert torch.allclose(y[0, :2], x[0, :2], rtol=1 / 16)
        assert s[1] == ref.FLT_MIN  # subnormal group: clamped scale, inv stays finite
        assert torch.allclose(y[2, :2].abs(), torch.tensor(ref.AMAX_CAP), rtol=1 / 16)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (1,), (129,), (2, 3, 5)])
def test_degenerate_shapes(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    for fmt in FMTS:
        for gran in GRANS:
            p, s = ref.quantize(x, fmt, gran)
            assert s.shape == (ref.group_shape(x.shape, gran)[0],)
            y = ref.dequantize(p, s, gran, x.dtype)
            assert y.shape == x.shape
            assert torch.allclose(y, x, rtol=0.07, atol=0.02)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 300), log_scale=st.floats(-30, 30),
       fmt=st.sampled_from(FMTS), gran=st.sampled_from(GRANS), seed=st.integers(0, 2**16))
def test_roundtrip_error_bound(rows: int, cols: int, log_scale: float, fmt: str, gran: str,
                               seed: int) -> None:
    """|x - deq(q(x))| <= half a step of the format at the group's scale (plus fp32 rounding)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 2.0**log_scale
    p, s = ref.quantize(x, fmt, gran)
    y = ref.dequantize(p, s, gran, torch.float32)
    groups, length = ref.group_shape(x.shape, gran)
    scale = s.repeat_interleave(length)[: x.numel()].view(x.shape)
    if fmt == "int8":
        bound = 0.5 * scale
    else:  # 3 mantissa bits: relative 2**-4 in the normal range, 2**-10 * scale below it
        bound = torch.maximum(x.abs() * 2.0**-4, 2.0**-10 * scale)
    assert ((x - y).abs() <= bound * (1 + 1e-5) + 1e-38).all()


def test_bad_arguments_are_explained() -> None:
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match="unknown low-bit format"):
        ref.quantize(x, "fp4", "row")
    with pytest.raises(ValueError, match="granularity"):
        ref.quantize(x, "fp8", "column")
    with pytest.raises(TypeError, match="floating"):
        ref.quantize(torch.ones(4, dtype=torch.int64), "fp8", "row")
    p, s = ref.quantize(x, "fp8", "row")
    with pytest.raises(ValueError, match="same granularity"):
        ref.dequantize(p, s, "block", torch.float32)


# ---------------------------------------------------------------- custom ops

def test_ops_on_cpu_are_the_reference() -> None:
    x = special_values((9, 130), torch.bfloat16)
    for fmt in FMTS:
        p, s = torch.ops.fxopt.quantize(x, fmt, "block")
        rp, rs = ref.quantize(x, fmt, "block")
        assert_same_bits(p, rp)
        assert_same_bits(s, rs)
        assert_same_values(torch.ops.fxopt.dequantize(p, s, "block", torch.bfloat16),
                           ref.dequantize(p, s, "block", torch.bfloat16))


def test_ops_trace_with_fake_and_meta_tensors() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(7, 130, dtype=torch.float16)
        p, s = torch.ops.fxopt.quantize(x, "int8", "block")
        assert (p.shape, p.dtype, s.shape) == (x.shape, torch.int8, (8,))
        y = torch.ops.fxopt.dequantize(p, s, "block", torch.float16)
        assert (y.shape, y.dtype) == (x.shape, torch.float16)
    m = torch.empty(3, 5, 11, device="meta")
    p, s = torch.ops.fxopt.quantize(m, "fp8", "row")
    assert (p.device.type, p.dtype, s.shape) == ("meta", torch.float8_e4m3fn, (15,))


def test_ops_compile_with_inductor_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor compiles the reference decomposition; the compiled casts equal eager bit for bit.

    The compile caches are off: their key holds the op's name, not the Python body that
    AOTAutograd traces, so a cached graph could predate an edit of ``reference.py``.
    """
    import torch._functorch.config
    import torch._inductor.config

    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    # The configs' own patch(): monkeypatch's undo deletes a config entry that was never set
    # by the user, which hides it from every later reader in the session.
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        compiled_matches_eager()


def compiled_matches_eager() -> None:
    torch._dynamo.reset()

    def step(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p8, s8 = torch.ops.fxopt.quantize(x, "fp8", "block")
        pi, si = torch.ops.fxopt.quantize(x, "int8", "row")
        y = torch.ops.fxopt.dequantize(p8, s8, "block", torch.float32) * 2 + 1
        return p8, s8, pi, si, y

    x = special_values((5, 300), torch.float32)
    compiled = torch.compile(step, backend="inductor", fullgraph=True)
    for got, want in zip(compiled(x), step(x)):
        if got.dtype == torch.float32:
            assert_same_values(got, want)
        else:
            assert_same_bits(got, want)


# ---------------------------------------------------------------- Triton kernels

SHAPES = [(1, 1), (3, 7), (37, 301), (2, 3, 129), (4, 9000), (1000,)]
NONCONTIGUOUS = ["transposed", "strided-slice", "permuted-3d", "expanded"]


def noncontiguous(case: str, device: str) -> torch.Tensor:
    base = special_values((40, 66), torch.float32, seed=1).to(device)
    cube = special_values((6, 5, 33), torch.float32, seed=2).to(device)
    views = {
        "transposed": lambda: base.t(),
        "strided-slice": lambda: base[::3, 1::2],
        "permuted-3d": lambda: cube.permute(1, 0, 2),
        "expanded": lambda: base[:1, :].expand(5, 66),
    }
    x = views[case]()
    assert not x.is_contiguous()
    return x


@pytest.fixture(scope="module")
def triton_quant():  # noqa: ANN201
    """(triton_quant module, device): the interpreter on CPU, the real kernels on a CUDA machine."""
    pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpretedFunction

    from fxopt.ops import triton_quant as tq

    if isinstance(tq._quantize_kernel, InterpretedFunction):
        return tq, "cpu"
    if torch.cuda.is_available():
        return tq, "cuda"
    pytest.skip("fxopt.ops.triton_quant was imported before TRITON_INTERPRET=1 was set")


def _check_against_reference(tq, x: torch.Tensor, fmt: str, gran: str) -> None:  # noqa: ANN001
    """Kernel on x's device vs the reference on CPU: payload and scales bit for bit."""
    p, s = tq.quantize(x, fmt, gran)
    rp, rs = ref.quantize(x.cpu(), fmt, gran)
    assert_same_bits(p.cpu(), rp)
    assert_same_bits(s.cpu(), rs)
    for dtype in {x.dtype, torch.float32}:
        got = tq.dequantize(rp.to(x.device), rs.to(x.device), gran, dtype).cpu()
        assert_same_values(got, ref.dequantize(rp, rs, gran, dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("gran", GRANS)
def test_triton_matches_reference_bit_for_bit(  # noqa: ANN001
    triton_quant, shape, dtype, fmt, gran
) -> None:
    tq, device = triton_quant
    _check_against_reference(tq, special_values(shape, dtype).to(device), fmt, gran)


@pytest.mark.parametrize("case", NONCONTIGUOUS)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("gran", GRANS)
def test_triton_noncontiguous_inputs(triton_quant, case, fmt, gran) -> None:  # noqa: ANN001
    tq, device = triton_quant
    _check_against_reference(tq, noncontiguous(case, device), fmt, gran)


def test_triton_rounding_ties_and_every_e4m3_code(triton_quant) -> None:  # noqa: ANN001
    """Every e4m3 value and every midpoint between neighbours (the ties RTNE must break)."""
    tq, device = triton_quant
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    finite = codes[torch.isfinite(codes)].unique()
    mids = (finite[1:] + finite[:-1]) / 2
    x = torch.cat([finite, mids, torch.tensor([448.0])]).view(1, -1)  # amax 448 -> scale 1
    ints = (torch.arange(-254, 255, dtype=torch.float32) / 2).view(1, -1)  # int8 ties at .5
    ints = torch.cat([ints, torch.tensor([[127.0]])], dim=1)
    _check_against_reference(tq, x.to(device), "fp8", "row")
    _check_against_reference(tq, ints.to(device), "int8", "row")


def test_triton_through_the_op(triton_quant) -> None:  # noqa: ANN001
    _, device = triton_quant
    x = special_values((33, 257), torch.bfloat16)
    with K.triton_on_cpu(device == "cpu"):
        p, s = torch.ops.fxopt.quantize(x.to(device), "fp8", "row")
        y = torch.ops.fxopt.dequantize(p, s, "row", torch.bfloat16)
    rp, rs = ref.quantize(x, "fp8", "row")
    assert_same_bits(p.cpu(), rp)
    assert_same_values(y.cpu(), ref.dequantize(rp, rs, "row", torch.bfloat16))
