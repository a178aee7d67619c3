"""Triton kernels (and their launchers) for low-bit activation storage.

They reproduce ``reference.py`` bit for bit; see NOTE [Low-bit quantisation semantics] there.
This module imports Triton at import time: import it lazily (``fxopt.ops.lowbit`` does).

# NOTE [Bit-exact casts in Triton]
The hardware conversions are not used for the low-bit casts. Triton's interpreter (the only way to
test the kernels without a GPU) rounds fp32 -> fp8 by looking at one cut-off bit only (no ties to
even, no carry into the exponent) and truncates fp32 -> bf16, so it would disagree with both the
GPU and PyTorch. Instead the kernels encode e4m3 / int8 / bf16 with integer bit manipulation that
implements round-to-nearest-even exactly; the same instructions run on the GPU and under
``TRITON_INTERPRET=1``, so the interpreter tests test the GPU code path. The kernels are memory
bound; the extra integer instructions are hidden behind the loads. Divisions use ``div_rn`` (IEEE)
and happen once per group; per element there is one multiply, so FMA contraction cannot change a
result (there is no add to contract with).

# NOTE [One pass over the data]
Quantise loads a tile of whole groups, reduces amax in registers, and writes payload and scales
from the same registers: x is read once. Rows longer than ``_MAX_SINGLE_PASS`` elements do not fit
a tile; they are read twice (amax loop, then cast loop; the second read mostly hits L2).
Inputs that cannot be viewed as 2-d ``(rows, last_dim)`` with strides (e.g. some permuted 3-d
tensors) are first made contiguous, which costs one extra copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fxopt.plan import LowbitFormat

from . import reference as ref

_MAX_SINGLE_PASS = 8192  # longest group held in registers
_TILE = 4096  # elements per program (quantise) / per tile (dequantise)
_CHUNK = 4096  # chunk length for rows longer than _MAX_SINGLE_PASS
_IN_KIND = {torch.float32: 0, torch.float16: 0, torch.bfloat16: 1}
_OUT_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


@triton.jit
def _rtne_shift(mant, s):
    """Round-to-nearest-even of ``mant / 2**s`` for non-negative int32 ``mant``, 1 <= s <= 25."""
    q = mant >> s
    rem = mant & ((1 << s) - 1)
    half = 1 << (s - 1)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    return q + up.to(tl.int32)


@triton.jit
def _encode_e4m3(y):
    """fp32 (already within [-448, 448] or NaN) -> e4m3fn code in int32, RTNE, NaN -> 0x7F."""
    bits = y.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    # normal e4m3 (|y| >= 2**-6): round the 23-bit mantissa to 3 bits, rebias exponent 127 -> 7
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)
    # subnormal e4m3: code = RTNE(|y| * 2**9) = RTNE(mant >> (14 - e))
    e = (a >> 23) - 127
    mant = (a & 0x7FFFFF) | 0x800000
    sub = _rtne_shift(mant, tl.minimum(14 - e, 25))
    code = tl.where(a >= 0x3C800000, normal, sub) | sign
    return tl.where(a > 0x7F800000, 0x7F, code)


@triton.jit
def _encode_int8(y):
    """fp32 within [-127, 127] (no NaN) -> RTNE integer in int32."""
    bits = y.to(tl.int32, bitcast=True)
    a = bits & 0x7FFFFFFF
    e = (a >> 23) - 127
    mant = (a & 0x7FFFFF) | 0x800000
    q = _rtne_shift(mant, tl.minimum(23 - e, 25))
    return tl.where(bits < 0, -q, q)


@triton.jit
def _decode_e4m3(b):
    """e4m3fn code (int32 in [0, 255]) -> fp32, exact; 0x7F / 0xFF -> NaN."""
    e = (b >> 3) & 0xF
    m = b & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    val = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
    val = tl.where((b & 0x80) != 0, -val, val)
    return tl.where((b & 0x7F) == 0x7F, float("nan"), val)


@triton.jit
def _index(g, l, numel, L, C, sr, sc, ADDR: tl.constexpr):
    """Flat (row-major) index, input address and mask of the (group, position) tile."""
    flat = g[:, None].to(tl.int64) * L + l[None, :]
    mask = (l[None, :] < L) & (flat < numel)
    if ADDR == 0:  # contiguous input
        addr = flat
    elif ADDR == 1:  # per-row groups over a strided 2-d view
        addr = g[:, None].to(tl.int64) * sr + l[None, :].to(tl.int64) * sc
    else:  # per-block groups over a strided 2-d view with C columns
        addr = (flat // C) * sr + (flat % C) * sc
    return flat, addr, mask


@triton.jit
def _load_f32(x_ptr, addr, mask, IN_KIND: tl.constexpr):
    if IN_KIND == 1:  # bf16 passed as int16 bits
        bits = tl.load(x_ptr + addr, mask=mask, other=0).to(tl.int32) << 16
        return bits.to(tl.float32, bitcast=True)
    else:
        return tl.load(x_ptr + addr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_codes(q_ptr, flat, mask, x, inv, QMAX: tl.constexpr, FMT: tl.constexpr):
    y = x * inv[:, None]
    y = tl.where(y > QMAX, QMAX, tl.where(y < -QMAX, -QMAX, y))
    if FMT == 0:
        tl.store(q_ptr + flat, _encode_e4m3(y).to(tl.uint8), mask=mask)
    else:
        y = tl.where(x != x, 0.0, y)
        tl.store(q_ptr + flat, _encode_int8(y).to(tl.int8), mask=mask)


@triton.jit
def _quantize_kernel(x_ptr, q_ptr, s_ptr, numel, G, L, C, sr, sc,
                     QMAX: tl.constexpr, AMAX_CAP: tl.constexpr, FLT_MIN: tl.constexpr,
                     FMT: tl.constexpr, IN_KIND: tl.constexpr,
                     ADDR: tl.constexpr, SINGLE: tl.constexpr,
                     BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr):
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gmask = g < G
    l0 = tl.arange(0, BLOCK_L)
    if SINGLE:
        flat, addr, mask = _index(g, l0, numel, L, C, sr, sc, ADDR)
        mask = mask & gmask[:, None]
        x = _load_f32(x_ptr, addr, mask, IN_KIND)
        ax = tl.abs(x)
        amax = tl.max(tl.where(ax < float("inf"), ax, 0.0), axis=1)
        nans = tl.max((x != x).to(tl.int32), axis=1)
    else:
        amax = tl.zeros([BLOCK_G], dtype=tl.float32)
        nans = tl.zeros([BLOCK_G], dtype=tl.int32)
        for start in range(0, L, BLOCK_L):
            flat, addr, mask = _index(g, start + l0, numel, L, C, sr, sc, ADDR)
            mask = mask & gmask[:, None]
            x = _load_f32(x_ptr, addr, mask, IN_KIND)
            ax = tl.abs(x)
            amax = tl.maximum(amax, tl.max(tl.where(ax < float("inf"), ax, 0.0), axis=1))
            nans = tl.maximum(nans, tl.max((x != x).to(tl.int32), axis=1))
    amax = tl.minimum(amax, AMAX_CAP)
    scale = tl.math.div_rn(amax, tl.full([BLOCK_G], QMAX, tl.float32))
    scale = tl.where(amax > 0, tl.maximum(scale, FLT_MIN), 1.0)
    inv = tl.math.div_rn(tl.full([BLOCK_G], 1.0, tl.float32), scale)
    if FMT == 1:
        scale = tl.where(nans > 0, float("nan"), scale)
    tl.store(s_ptr + g, scale, mask=gmask)
    if SINGLE:
        _store_codes(q_ptr, flat, mask, x, inv, QMAX, FMT)
    else:
        for start in range(0, L, BLOCK_L):
            flat, addr, mask = _index(g, start + l0, numel, L, C, sr, sc, ADDR)
            mask = mask & gmask[:, None]
            x = _load_f32(x_ptr, addr, mask, IN_KIND)
            _store_codes(q_ptr, flat, mask, x, inv, QMAX, FMT)


@triton.jit
def _dequantize_kernel(q_ptr, s_ptr, out_ptr, numel, G, L,
                       FMT: tl.constexpr, OUT_KIND: tl.constexpr,
                       BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr):
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    gmask = g < G
    flat, addr, mask = _index(g, l, numel, L, L, 0, 0, 0)
    mask = mask & gmask[:, None]
    s = tl.load(s_ptr + g, mask=gmask, other=1.0)
    if FMT == 0:
        p = _decode_e4m3(tl.load(q_ptr + flat, mask=mask, other=0).to(tl.int32))
    else:
        p = tl.load(q_ptr + flat, mask=mask, other=0).to(tl.float32)
    y = p * s[:, None]
    if OUT_KIND == 0:
        tl.store(out_ptr + flat, y, mask=mask)
    elif OUT_KIND == 1:
        tl.store(out_ptr + flat, y.to(tl.float16), mask=mask)
    elif OUT_KIND == 2:  # bf16 RTNE by hand (see NOTE [Bit-exact casts in Triton]); NaN -> 0x7FC0
        bits = y.to(tl.int32, bitcast=True)
        r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        r = tl.where(y != y, 0x7FC0, r)
        tl.store(out_ptr + flat, r.to(tl.int16), mask=mask)
    else:
        tl.store(out_ptr + flat, y.to(tl.float64), mask=mask)


def _tile(groups: int, length: int) -> tuple[int, int, bool]:
    """(BLOCK_G, BLOCK_L, single_pass) for groups of ``length`` elements."""
    if length > _MAX_SINGLE_PASS:
        return 1, _CHUNK, False
    block_l = triton.next_power_of_2(max(length, 1))
    block_g = max(1, min(triton.next_power_of_2(max(groups, 1)), _TILE // block_l))
    return block_g, block_l, True


def _num_warps(block_g: int, block_l: int) -> int:
    return 8 if block_g * block_l >= 8192 else 4


def _input_view(x: torch.Tensor, granularity: str) -> tuple[torch.Tensor, int, int, int, int]:
    """(2-d view, columns, row stride, column stride, ADDR mode); copies only without a 2-d view."""
    x2 = x.reshape(1, 1) if x.dim() == 0 else x
    try:
        x2 = x2.view(-1, x2.shape[-1])
    except RuntimeError:  # leading dims not mergeable without a copy
        x2 = x2.contiguous().view(-1, x2.shape[-1])
    if x2.is_contiguous():
        mode = 0
    else:
        mode = 1 if granularity == "row" else 2
    return x2, x2.shape[1], x2.stride(0), x2.stride(1), mode


def quantize(x: torch.Tensor, fmt: LowbitFormat | str, granularity: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of ``reference.quantize`` (same contract, same bits)."""
    fmt = ref.check_input(x, fmt, granularity)
    groups, length = ref.group_shape(x.shape, granularity)
    payload = torch.empty(x.shape, dtype=ref.payload_dtype(fmt), device=x.device)
    scales = torch.empty(groups, dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return payload, torch.ones(groups, dtype=torch.float32, device=x.device)
    if x.dtype == torch.float64:
        x = x.to(torch.float32)
    x2, cols, sr, sc, mode = _input_view(x, granularity)
    if x2.dtype == torch.bfloat16:
        x2 = x2.view(torch.int16)
    q = payload.view(torch.uint8) if fmt is LowbitFormat.FP8 else payload
    block_g, block_l, single = _tile(groups, length)
    grid = (triton.cdiv(groups, block_g),)
    wrap_triton(_quantize_kernel)[grid](
        x2, q, scales, x.numel(), groups, length, cols, sr, sc,
        QMAX=ref.qmax(fmt), AMAX_CAP=ref.AMAX_CAP, FLT_MIN=ref.FLT_MIN,
        FMT=0 if fmt is LowbitFormat.FP8 else 1, IN_KIND=_IN_KIND[x.dtype],
        ADDR=mode, SINGLE=single, BLOCK_G=block_g, BLOCK_L=block_l,
        num_warps=_num_warps(block_g, block_l),
    )
    return payload, scales


def dequantize(
    payload: torch.Tensor, scales: torch.Tensor, granularity: str, dtype: torch.dtype
) -> torch.Tensor:
    """Triton implementation of ``reference.dequantize`` (same contract, same bits)."""
    ref.check_payload(payload, scales, granularity, dtype)
    groups, length = ref.group_shape(payload.shape, granularity)
    out = torch.empty(payload.shape, dtype=dtype, device=payload.device)
    if payload.numel() == 0:
        return out
    payload = payload.contiguous()
    q = payload.view(torch.uint8) if payload.dtype == torch.float8_e4m3fn else payload
    o = out.view(torch.int16) if dtype == torch.bfloat16 else out
    block_g, block_l, _ = _tile(groups, min(length, _CHUNK))
    grid = (triton.cdiv(groups, block_g), triton.cdiv(length, block_l))
    wrap_triton(_dequantize_kernel)[grid](
        q, scales.contiguous(), o, payload.numel(), groups, length,
        FMT=0 if payload.dtype == torch.float8_e4m3fn else 1, OUT_KIND=_OUT_KIND[dtype],
        BLOCK_G=block_g, BLOCK_L=block_l, num_warps=_num_warps(block_g, block_l),
    )
    return out
