"""Pure-torch reference for low-bit activation storage (the spec the Triton kernels reproduce).

A tensor ``x`` is cut into *groups*; each group gets one fp32 scale and its elements are stored as
fp8 e4m3 (``torch.float8_e4m3fn``) or int8:

- ``granularity="row"``: one group per row of ``x`` viewed as
  ``(numel // x.shape[-1], x.shape[-1])`` (a 0-d tensor is one row of one element);
- ``granularity="block"``: one group per ``BLOCK_SIZE`` consecutive elements of ``x`` in row-major
  (logical) order; the last block may be shorter.

Storage is compact: the payload has ``x``'s shape in the low-bit dtype (contiguous) and the scales
are a 1-d fp32 tensor with one entry per group. Nothing else of full size is kept.

# NOTE [Low-bit quantisation semantics]
Per group, in fp32 (inputs of fp16/bf16/fp32 are widened exactly; fp64 is rounded to fp32 first):

    amax  = max |x| over the *finite* elements (NaN and +-Inf ignored; 0 if there are none),
            capped at AMAX_CAP = 15 * 2**124 (~3.19e38) so that QMAX * scale stays finite
    scale = max(amax / QMAX, FLT_MIN) if amax > 0 else 1.0         (IEEE division, QMAX = 448 | 127)
    inv   = 1.0 / scale                              (IEEE division; finite since scale >= FLT_MIN)
    y     = x * inv, then saturated to [-QMAX, QMAX]  (NaN passes through the saturation)
    fp8:  payload = RTNE(y) to e4m3; NaN -> the canonical e4m3 NaN 0x7F (sign dropped)
    int8: payload = RTNE(y) to an integer; NaN -> 0, and the group's scale becomes NaN

Consequences a user can rely on:
- +-Inf saturates to +-QMAX, i.e. it dequantises to (about) the largest finite magnitude of its
  group (+-QMAX * 1.0 when the group has no finite non-zero value).
- fp8 keeps NaN per element. int8 has no NaN code, so a NaN poisons its whole group: every element
  of that row/block dequantises to NaN (the error is loud, never silently zeroed).
- An all-zero group gets scale 1 (never 0 or NaN); huge finite values overflow neither the scale
  nor the dequantised value (finite in, finite out; magnitudes above AMAX_CAP saturate to about
  AMAX_CAP); values below FLT_MIN * QMAX in magnitude lose precision because
  the scale is clamped to FLT_MIN (smallest normal fp32), which keeps ``inv`` finite.
- -0.0 is kept as -0.0 by fp8 (0x80) and becomes 0 in int8.

Dequantisation: ``(payload.to(fp32) * scale).to(dtype)`` (one IEEE multiply, one RTNE cast).

Every step is an exactly rounded IEEE operation, a max, a compare or an RTNE cast, so the Triton
kernels (``triton_quant.py``) reproduce it bit for bit. They use multiplication by ``inv`` rather
than a per-element division, and integer bit manipulation for the casts, for that reason.
"""

from __future__ import annotations

import torch

from fxopt.plan import LOWBIT_BLOCK, LOWBIT_FORMATS, LowbitFormat

BLOCK_SIZE = LOWBIT_BLOCK
FORMATS = LOWBIT_FORMATS
GRANULARITIES = ("row", "block")
FLT_MIN = 2.0**-126  # smallest normal fp32
AMAX_CAP = 15.0 * 2.0**124  # QMAX * RN(AMAX_CAP / QMAX) < FLT_MAX for both formats
_QMAX = {LowbitFormat.FP8: 448.0, LowbitFormat.INT8: 127.0}
_PAYLOAD_DTYPE = {LowbitFormat.FP8: torch.float8_e4m3fn, LowbitFormat.INT8: torch.int8}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def qmax(fmt: LowbitFormat | str) -> float:
    """Largest magnitude the payload format stores (448 for fp8 e4m3, 127 for int8)."""
    return _QMAX[check_format(fmt)]


def payload_dtype(fmt: LowbitFormat | str) -> torch.dtype:
    return _PAYLOAD_DTYPE[check_format(fmt)]


def check_format(fmt: LowbitFormat | str) -> LowbitFormat:
    """The format `fmt` names (the ops take it as a string); a ValueError for any other."""
    return LowbitFormat.parse(fmt)


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown scale granularity {granularity!r}; use one of {GRANULARITIES}")


def check_input(x: torch.Tensor, fmt: LowbitFormat | str, granularity: str) -> LowbitFormat:
    """Checks the arguments of a quantisation; returns the format."""
    found = check_format(fmt)
    check_granularity(granularity)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"low-bit quantisation needs a floating tensor ({', '.join(map(str, FLOAT_DTYPES))}), "
            f"got {x.dtype}; integer and complex tensors must be stored as they are"
        )
    return found


def group_shape(shape: torch.Size | tuple[int, ...], granularity: str) -> tuple[int, int]:
    """(number of groups, group length) for a tensor of ``shape``; one scale per group."""
    check_granularity(granularity)
    if granularity == "row":
        if len(shape) == 0:
            return 1, 1
        rows = 1
        for d in shape[:-1]:
            rows *= d
        return rows, shape[-1]
    numel = 1
    for d in shape:
        numel *= d
    return (numel + BLOCK_SIZE - 1) // BLOCK_SIZE, BLOCK_SIZE


def _grouped(flat: torch.Tensor, groups: int, length: int) -> torch.Tensor:
    """View the flat (row-major) data as (groups, length), zero-padding a ragged last block."""
    pad = groups * length - flat.numel()
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(groups, length)


def quantize(x: torch.Tensor, fmt: LowbitFormat | str, granularity: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x``; returns ``(payload, scales)``. See NOTE [Low-bit quantisation semantics]."""
    fmt = check_input(x, fmt, granularity)
    groups, length = group_shape(x.shape, granularity)
    q = _QMAX[fmt]
    if x.numel() == 0:
        payload = torch.empty(x.shape, dtype=_PAYLOAD_DTYPE[fmt], device=x.device)
        return payload, torch.ones(groups, dtype=torch.float32, device=x.device)
    xf = _grouped(x.reshape(-1).to(torch.float32), groups, length)
    ax = xf.abs()
    amax = torch.clamp_max(torch.where(ax < float("inf"), ax, 0.0).amax(dim=1), AMAX_CAP)
    # A tensor divisor: PyTorch's CUDA kernels divide by a Python scalar as a multiplication by
    # its reciprocal, which is not the IEEE quotient (measured on an H200: scales one ulp off
    # the CPU's in 1 of 2 groups); tensor by tensor is an IEEE division on every device.
    scale = torch.where(amax > 0, torch.clamp_min(amax / torch.full_like(amax, q), FLT_MIN), 1.0)
    inv = torch.ones_like(scale) / scale
    y = xf * inv[:, None]
    y = torch.where(y > q, q, torch.where(y < -q, -q, y))
    isnan = torch.isnan(xf)
    if fmt is LowbitFormat.FP8:
        y = torch.where(isnan, float("nan"), y)  # a positive NaN casts to the canonical 0x7F
        payload = y.to(torch.float8_e4m3fn)
    else:
        payload = torch.round(torch.where(isnan, 0.0, y)).to(torch.int8)
        scale = torch.where(isnan.any(dim=1), float("nan"), scale)
    payload = payload.reshape(-1)[: x.numel()].view(x.shape)
    return payload, scale


def dequantize(
    payload: torch.Tensor, scales: torch.Tensor, granularity: str, dtype: torch.dtype
) -> torch.Tensor:
    """Inverse of :func:`quantize`: ``(payload.to(fp32) * scale).to(dtype)``, shape of payload."""
    check_granularity(granularity)
    check_payload(payload, scales, granularity, dtype)
    groups, length = group_shape(payload.shape, granularity)
    if payload.numel() == 0:
        return torch.empty(payload.shape, dtype=dtype, device=payload.device)
    pf = _grouped(payload.reshape(-1).to(torch.float32), groups, length)
    out = (pf * scales[:, None]).to(dtype)
    return out.reshape(-1)[: payload.numel()].view(payload.shape)


def check_payload(
    payload: torch.Tensor, scales: torch.Tensor, granularity: str, dtype: torch.dtype
) -> None:
    if payload.dtype not in (torch.float8_e4m3fn, torch.int8):
        raise TypeError(
            f"payload must be float8_e4m3fn or int8 (from fxopt quantize), got {payload.dtype}"
        )
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"can only dequantise to a floating dtype, got {dtype}")
    groups, _ = group_shape(payload.shape, granularity)
    if scales.dtype != torch.float32 or tuple(scales.shape) != (groups,):
        raise ValueError(
            f"scales must be float32 of shape ({groups},) for a payload of shape "
            f"{tuple(payload.shape)} "
            f"with granularity {granularity!r}; got {scales.dtype} {tuple(scales.shape)}. "
            "Pass the scales returned by quantize with the same granularity."
        )

