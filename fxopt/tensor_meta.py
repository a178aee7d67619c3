"""Tensor sizes as plain data: sympy expressions where Dynamo made a dimension dynamic, and
integers at the size hints, which is what the cost models use."""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch

__all__ = ["FLOATING_DTYPES", "TensorMeta", "size_hint", "tensor_meta"]

# the floating dtypes as TensorMeta.dtype names them
FLOATING_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})


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


def storage_of(t: object) -> torch.UntypedStorage | None:
    """A tensor's storage; None for anything else, and for a tensor without one to read (a
    sparse tensor, a tensor subclass or functional wrapper: they raise rather than return one)."""
    if not isinstance(t, torch.Tensor):
        return None
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


def size_hint(d: object) -> int:
    """A dimension's concrete size: the int itself, or a SymInt's size hint."""
    return _dim(d)[1]


def tensor_meta(t: torch.Tensor) -> TensorMeta:
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
