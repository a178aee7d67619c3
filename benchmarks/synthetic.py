"""GPT-like Problems built from shapes alone, to test and benchmark the planner at scale.

The graph adapter builds real Problems from AOTAutograd graphs; this generator builds the same
kind of Problem for a pre-LayerNorm GPT with explicit attention (like examples/gpt.py) without
tracing anything, so the solver can be measured at 12 or 48 layers in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from fxopt.solver.problem import Candidate, Problem, to_us

# NOTE [Synthetic GPT]
# One forward step per fused unit, one backward step per forward step in reverse order. Each
# backward step reads what that unit's backward needs (linear: its input; softmax: its output;
# GELU: its input; dropout: its mask; scores = q @ k^T: q and k; attention @ v: both inputs;
# LayerNorm: its input) and holds the gradients of the unit's output and inputs, plus the
# parameter gradients accumulated so far, as fixed bytes. Step time is a roofline:
# max(flops / flops_per_s, bytes moved / mem_bytes_per_s), backward twice forward; dropout masks
# are not recomputable (RNG without replay), so they exercise that flag. Device numbers are
# round, H100-like figures for a synthetic benchmark, not measurements.


@dataclass(frozen=True)
class GPTShape:
    layers: int = 12
    d_model: int = 768
    seq: int = 1024
    batch: int = 8
    heads: int = 12
    vocab: int = 50304
    dtype_bytes: int = 2
    dropout: bool = True
    flops_per_s: float = 400e12
    mem_bytes_per_s: float = 2.0e12
    link_bytes_per_s: float = 25e9


class _Builder:
    def __init__(self, shape: GPTShape) -> None:
        self.shape = shape
        self.cands: list[Candidate] = []
        self.index: dict[str, int] = {}
        self.fwd_ops: list[tuple[float, tuple[str, ...], int, int]] = []  # time, needs, out, in

    def _roofline(self, flops: float, moved: int) -> float:
        s = self.shape
        return max(flops / s.flops_per_s, moved / s.mem_bytes_per_s)

    def op(self, outs: list[tuple[str, int, bool]], inputs: list[str], flops: float,
           needs: list[str], extra_in: int = 0) -> None:
        """One fused unit: outputs (name, elements, is_float), candidate inputs, backward needs.
        extra_in: bytes read that are not candidates (weights)."""
        s = self.shape
        step = len(self.fwd_ops)
        in_bytes = sum(self.cands[self.index[n]].bytes for n in inputs) + extra_in
        out_bytes = sum(e * (s.dtype_bytes if fl else 1) for _, e, fl in outs)
        t = self._roofline(flops, in_bytes + out_bytes)
        for name, elems, is_float in outs:
            nbytes = elems * (s.dtype_bytes if is_float else 1)
            lowbit = elems + 4 * -(-elems // 128) if is_float else 0
            self.index[name] = len(self.cands)
            self.cands.append(Candidate(
                name=name, bytes=nbytes, produced=step, last_fwd_use=step,
                inputs=tuple(self.index[n] for n in inputs if n in self.index),
                recompute_us=max(to_us(t), 1), recomputable=is_float, lowbit_bytes=lowbit,
                cast_us=to_us(2 * (nbytes + lowbit) / s.mem_bytes_per_s) if lowbit else 0,
                copy_us=max(to_us(nbytes / s.link_bytes_per_s), 1)))
        for n in inputs:
            i = self.index[n]
            c = self.cands[i]
            self.cands[i] = Candidate(**{**c.__dict__, "last_fwd_use": step})
        self.fwd_ops.append((t, tuple(needs), out_bytes, in_bytes))

    def problem(self, param_grad_bytes_per_op: list[int]) -> Problem:
        f = len(self.fwd_ops)
        n_steps = 2 * f
        uses: dict[int, list[int]] = {}
        fixed = [0] * n_steps
        step_us = [0] * n_steps
        grads = 0
        for k in range(f):
            t, needs, out_b, in_b = self.fwd_ops[k]
            step_us[k] = max(to_us(t), 1)
        for k in reversed(range(f)):
            t, needs, out_b, in_b = self.fwd_ops[k]
            s = n_steps - 1 - k
            grads += param_grad_bytes_per_op[k]
            fixed[s] = out_b + in_b + grads
            step_us[s] = max(to_us(2 * t), 1)
            for n in needs:
                uses.setdefault(self.index[n], []).append(s)
        cands = tuple(Candidate(**{**c.__dict__, "bwd_uses": tuple(sorted(set(uses.get(i, []))))})
                      for i, c in enumerate(self.cands))
        return Problem(n_steps, f, tuple(fixed), tuple(step_us), cands)


def gpt_problem(shape: GPTShape = GPTShape()) -> Problem:
    """A Problem for one training step of a GPT of `shape` (NOTE [Synthetic GPT])."""
    s = shape
    b, t, d, h, v = s.batch, s.seq, s.d_model, s.heads, s.vocab
    bt, btt = b * t, b * h * t * t
    bld = _Builder(s)
    pgrads: list[int] = []

    def op(outs, inputs, flops, needs, weights=0):  # type: ignore[no-untyped-def]
        bld.op(outs, inputs, flops, needs, weights * s.dtype_bytes)
        pgrads.append(weights * s.dtype_bytes)

    drop = s.dropout
    op([("emb.mask", bt * d, False)] if drop else [], [], 0, [])
    op([("emb.x", bt * d, True)], ["emb.mask"] if drop else [], 2 * bt * d,
       ["emb.mask"] if drop else [], weights=(t + v) * d)
    x = "emb.x"
    for layer in range(s.layers):
        p = f"h{layer}."
        op([(p + "ln1", bt * d, True)], [x], 8 * bt * d, [x], weights=2 * d)
        op([(p + "qkv", bt * 3 * d, True)], [p + "ln1"], 2 * bt * d * 3 * d, [p + "ln1"],
           weights=3 * d * d)
        op([(p + "scores", btt, True)], [p + "qkv"], 2 * btt * (d // h), [p + "qkv"])
        op([(p + "probs", btt, True)], [p + "scores"], 5 * btt, [p + "probs"])
        att = p + "probs"
        if drop:
            op([(p + "att.mask", btt, False)], [], btt, [p + "att.mask"])
            op([(p + "att", btt, True)], [p + "probs", p + "att.mask"], btt, [p + "att.mask"])
            att = p + "att"
        op([(p + "y", bt * d, True)], [att, p + "qkv"], 2 * btt * (d // h), [att, p + "qkv"])
        op([(p + "proj", bt * d, True)], [p + "y"], 2 * bt * d * d, [p + "y"], weights=d * d)
        x = _residual(op, p + "x1", x, p + "proj", bt * d, drop)
        op([(p + "ln2", bt * d, True)], [x], 8 * bt * d, [x], weights=2 * d)
        op([(p + "fc", bt * 4 * d, True)], [p + "ln2"], 8 * bt * d * d, [p + "ln2"],
           weights=4 * d * d)
        op([(p + "gelu", bt * 4 * d, True)], [p + "fc"], 8 * bt * 4 * d, [p + "fc"])
        op([(p + "mlp", bt * d, True)], [p + "gelu"], 8 * bt * d * d, [p + "gelu"],
           weights=4 * d * d)
        x = _residual(op, p + "x2", x, p + "mlp", bt * d, drop)
    op([("lnf", bt * d, True)], [x], 8 * bt * d, [x], weights=2 * d)
    op([("logits", bt * v, True)], ["lnf"], 2 * bt * d * v, ["lnf"])
    op([("loss.softmax", bt * v, True)], ["logits"], 5 * bt * v, ["loss.softmax"])
    return bld.problem(pgrads)


def _residual(op, name: str, x: str, branch: str, elems: int, drop: bool) -> str:  # type: ignore[no-untyped-def]
    """x + dropout(branch): the mask is its own (non-recomputable) unit."""
    if drop:
        op([(name + ".mask", elems, False)], [], elems, [name + ".mask"])
        op([(name, elems, True)], [x, branch, name + ".mask"], 3 * elems, [])
    else:
        op([(name, elems, True)], [x, branch], 2 * elems, [])
    return name
