"""Low-bit and offload passes, every eligible saved tensor forced, run without Inductor."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx

from benchmarks.forced import forced
from fxopt.passes import inserted_by
from fxopt.plan import Kind
from tests.graph_harness import assert_offload_invariants, fx_backend
from tests.test_passes_recompute import MODELS
from tests.training import assert_step_matches, step, twin


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_offload_everything_is_exact(model_name):
    make, batch, loss = MODELS[model_name]
    torch.manual_seed(0)
    model = make()
    graphs: dict[str, fx.GraphModule] = {}
    compiled = torch.compile(twin(model), backend=fx_backend(forced(Kind.OFFLOAD, None), graphs))
    assert_step_matches(model, compiled, loss, batch())
    fwd_ops = [n.target for n in graphs["fwd"].graph.nodes if inserted_by(n)]
    bwd_ops = [n.target for n in graphs["bwd"].graph.nodes if n.op == "call_function"
               and inserted_by(n)]
    offloads = fwd_ops.count(torch.ops.fxopt.offload.default)
    assert offloads and set(fwd_ops) == {torch.ops.fxopt.offload.default,
                                         torch.ops.fxopt.offload_join.default}
    assert fwd_ops.count(torch.ops.fxopt.offload_join.default) == offloads
    assert bwd_ops.count(torch.ops.fxopt.prefetch.default) == offloads
    assert bwd_ops.count(torch.ops.fxopt.wait_.default) == offloads
    assert_offload_invariants(graphs["fwd"], graphs["bwd"])
    # Every offloaded tensor crosses the boundary on the host.
    saved = graphs["fwd"].graph.find_nodes(op="output")[0].args[0]
    hosts = [n for n in saved
             if isinstance(n, fx.Node) and n.target is torch.ops.fxopt.offload.default]
    assert len(hosts) == offloads and all(h.meta["val"].device.type == "cpu" for h in hosts)


# Norm-wise relative error of each parameter gradient after one step with every eligible saved
# tensor in low bit (fp8 e4m3 keeps 3 mantissa bits, int8 about 7 bits per 128-element block).
LOWBIT_RTOL = {"fp8": 0.15, "int8": 0.05}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("fmt, kind", [("fp8", Kind.LOWBIT), ("int8", Kind.LOWBIT),
                                       ("fp8", Kind.LOWBIT_OFFLOAD)])
def test_lowbit_everything_stays_close(model_name, fmt, kind):
    make, batch, loss = MODELS[model_name]
    torch.manual_seed(0)
    model = make()
    graphs: dict[str, fx.GraphModule] = {}
    compiled = torch.compile(twin(model), backend=fx_backend(forced(kind, fmt), graphs))
    data = batch()
    loss_e, grads_e = step(model, loss, data, 0)
    loss_c, grads_c = step(compiled, loss, data, 0)
    torch.testing.assert_close(loss_c, loss_e)  # forward is untouched
    for name, g in grads_e.items():
        err = (grads_c[name] - g).norm() / g.norm().clamp_min(1e-12)
        assert err < LOWBIT_RTOL[fmt], f"{name}: relative error {err:.4f}"
    # On CPU the casts are inlined aten ops (see NOTE [Low-bit casts in the graph]): count the
    # tensors whose payload crosses the boundary in one byte.
    saved = graphs["fwd"].graph.find_nodes(op="output")[0].args[0]
    lowbit_tensors = {inserted_by(n).tensor for n in graphs["fwd"].graph.nodes
                      if inserted_by(n) is not None and inserted_by(n).pass_name == "lowbit"}
    assert lowbit_tensors
    payload_dtypes = (torch.float8_e4m3fn, torch.int8)
    if kind is Kind.LOWBIT_OFFLOAD:
        offloaded = [n for n in graphs["fwd"].graph.nodes
                     if n.target is torch.ops.fxopt.offload.default]
        # payload and scales move together (NOTE [Offload invariants])
        assert len(offloaded) == 2 * len(lowbit_tensors)
        dtypes = [n.meta["val"].dtype for n in offloaded]
        assert sum(d in payload_dtypes for d in dtypes) == len(lowbit_tensors)
        assert dtypes.count(torch.float32) == len(lowbit_tensors)  # the scales
        assert_offload_invariants(graphs["fwd"], graphs["bwd"])
    else:
        payloads = [n for n in saved if isinstance(n, fx.Node)
                    and n.meta["val"].dtype in payload_dtypes]
        assert len(payloads) == len(lowbit_tensors)


class Transposed(torch.nn.Module):
    """Saves a transposed activation for a matmul in backward, as attention saves its output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(16, 32)
        self.b = torch.nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x)).transpose(1, 2)  # (batch, 32, 12), not contiguous
        return self.b(torch.relu(h) * h).square().mean()


@pytest.mark.parametrize("kind, fmt", [(Kind.OFFLOAD, None), (Kind.LOWBIT, "int8")])
def test_restored_tensor_keeps_its_strides(kind, fmt):
    """The backward was traced with the saved tensor's strides: a prefetched or dequantised
    copy has the same ones (a transposed attention output stays transposed)."""
    torch.manual_seed(0)
    model = Transposed()
    x = torch.randn(4, 12, 16)
    graphs: dict[str, fx.GraphModule] = {}
    compiled = torch.compile(twin(model), backend=fx_backend(forced(kind, fmt), graphs))
    loss = lambda m, b: m(b[0])  # noqa: E731
    if kind is Kind.OFFLOAD:
        assert_step_matches(model, compiled, loss, (x,))
    else:
        step(compiled, loss, (x,), 0)
    restored = [n for n in graphs["bwd"].graph.nodes if n.op == "call_function"
                and inserted_by(n) and isinstance(n.meta.get("val"), torch.Tensor)
                and n.meta["val"].dtype == torch.float32]
    strided = [n for n in restored if not n.meta["val"].is_contiguous()]
    assert strided, "no non-contiguous tensor was restored: nothing is tested"
