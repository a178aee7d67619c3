"""Training with saved activations stored in fp8 / int8 stays close to full precision.

The graph pass that stores saved tensors in low bit works on the AOTAutograd graph; this test
checks the numerics in eager mode instead, with ``torch.autograd.graph.saved_tensors_hooks``:
pack = ``torch.ops.fxopt.quantize`` when the tensor is eligible, unpack = ``dequantize``.

Eligibility here is ``fxopt.lowbit_rules.decide_bare``: an eager hook sees a bare tensor, not the
op that produced it nor the ops that will read it, so only the rules that a tensor alone allows
apply: floating dtype, at least ``min_numel`` (1024) elements, and not a parameter (parameters
reach the pack hook too, e.g. the weight of a linear layer; anything sharing storage with a
parameter is skipped). The producer/consumer rules are NOT applied, so this is harsher than what
the planner would do: e.g. the attention probabilities read by the softmax backward are quantised
too.

Task: token t+1 = token t + k (mod 64) with k in {1, 2, 3} per sequence, every token replaced by
a random one with probability 0.1; the model has to infer k from the context. Loss falls from
ln(64) ~ 4.16 to ~1.5 in 200 steps. Measured final losses (mean of the last 20 steps, per-row
scales, seeds 0-3): fp8 within 0.8% and int8 within 0.5% of full precision. Bounds asserted:
fp8 2%, int8 1%.
"""

from __future__ import annotations

import pytest
import torch

import fxopt.ops  # noqa: F401  (registers torch.ops.fxopt.*)
from examples.gpt import GPT, GPTConfig
from fxopt.lowbit_rules import decide_bare

CFG = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
STEPS = 200
BATCH = 16
TAIL = 20


def shifted_sequences(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    v, t = CFG.vocab_size, CFG.block_size
    k = torch.randint(1, 4, (BATCH, 1), generator=g)
    start = torch.randint(0, v, (BATCH, 1), generator=g)
    seq = (start + k * torch.arange(t + 1)) % v
    noise = torch.rand(seq.shape, generator=g) < 0.1
    seq = torch.where(noise, torch.randint(0, v, seq.shape, generator=g), seq)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def train(fmt: str | None, granularity: str = "row", seed: int = 0) -> tuple[list[float], int]:
    """Losses of ``STEPS`` AdamW steps and the number of saved tensors stored in low bit."""
    torch.manual_seed(seed)
    model = GPT(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    quantised = 0

    def pack(t: torch.Tensor) -> object:
        nonlocal quantised
        is_param = t.untyped_storage().data_ptr() in param_storages
        if fmt is None or not decide_bare(t.dtype, t.numel(), is_param).eligible:
            return t
        quantised += 1
        payload, scales = torch.ops.fxopt.quantize(t.detach(), fmt, granularity)
        return payload, scales, t.dtype

    def unpack(packed: object) -> torch.Tensor:
        if isinstance(packed, tuple):
            payload, scales, dtype = packed
            return torch.ops.fxopt.dequantize(payload, scales, granularity, dtype)
        return packed  # type: ignore[return-value]

    g = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(STEPS):
        x, y = shifted_sequences(g)
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, quantised


def final(losses: list[float]) -> float:
    return sum(losses[-TAIL:]) / TAIL


@pytest.fixture(scope="module")
def one_thread() -> object:
    """Small ops on a shared machine: one intra-op thread avoids oversubscription stalls."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def full_precision(one_thread: object) -> list[float]:
    losses, quantised = train(None)
    assert quantised == 0
    assert final(losses) < 0.5 * losses[0], "the task must really be learnt for the comparison"
    return losses


@pytest.mark.parametrize(("fmt", "bound"), [("fp8", 0.02), ("int8", 0.01)])
def test_lowbit_training_tracks_full_precision(full_precision: list[float], fmt: str,
                                               bound: float) -> None:
    losses, quantised = train(fmt)
    assert quantised >= 20 * STEPS  # activations of every layer were stored in low bit
    assert losses != full_precision  # the hooks changed the numerics
    assert losses[0] == pytest.approx(full_precision[0], rel=1e-2)
    rel = abs(final(losses) / final(full_precision) - 1)
    assert rel <= bound, f"{fmt}: final loss {final(losses):.4f} vs {final(full_precision):.4f}"
