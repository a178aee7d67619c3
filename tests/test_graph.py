"""fxopt.graph: the read-only view of AOTAutograd graphs, built without running Inductor."""

from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._functorch.partitioners import min_cut_rematerialization_partition

from fxopt.graph import GraphView, OpKind, Role, Side


def capture_joint(model: nn.Module, *args: torch.Tensor, dynamic: bool = False) -> dict:
    """Trace ``model(*args).sum()`` to a joint graph with Inductor's decompositions (no
    Inductor compile) and return the views of the joint, forward and backward graphs."""
    from torch._inductor.decomposition import select_decomp_table

    out: dict = {}

    def partition(gm, joint_inputs, **kwargs):
        out["joint"] = GraphView.from_fx(gm, **kwargs)
        fwd, bwd = min_cut_rematerialization_partition(gm, joint_inputs, **kwargs)
        out["fwd"] = GraphView.from_fx(fwd, side=Side.FWD)
        out["bwd"] = GraphView.from_fx(bwd, side=Side.BWD)
        return fwd, bwd

    def keep(gm: torch.fx.GraphModule, _: object):
        return make_boxed_func(gm)

    backend = aot_autograd(fw_compiler=keep, bw_compiler=keep,
                           partition_fn=partition, decompositions=select_decomp_table())
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, dynamic=dynamic)
    compiled(*args).sum().backward()
    return out


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)).view(-1, 32))


@pytest.fixture(scope="module")
def mlp_views() -> dict:
    return capture_joint(MLP(), torch.randn(8, 16))


def test_joint_view_sides_roles_and_sizes(mlp_views: dict) -> None:
    joint = mlp_views["joint"]
    roles = {n.role for n in joint.nodes if n.kind is OpKind.PLACEHOLDER}
    assert roles == {Role.PARAM, Role.INPUT, Role.TANGENT}
    assert all(n.side is Side.FWD for n in joint.nodes if n.role is Role.PARAM)
    tangents = [n for n in joint.nodes if n.role is Role.TANGENT]
    assert all(n.side is Side.BWD for n in tangents)
    mms = [n for n in joint.nodes if n.op in ("aten.addmm.default", "aten.mm.default")]
    assert mms and all(n.kind is OpKind.EXTERN for n in mms)
    first = next(n for n in mms if n.side is Side.FWD)
    assert first.outputs[0].shape_hint == (8, 32)
    assert first.outputs[0].nbytes_hint == 8 * 32 * 4
    assert first.outputs[0].shape == (sympy.Integer(8), sympy.Integer(32))
    assert first.flops == 2 * 8 * 16 * 32
    relu = [n for n in joint.nodes if n.op == "aten.relu.default"]
    assert relu and relu[0].kind is OpKind.POINTWISE


def test_edges_are_consistent(mlp_views: dict) -> None:
    for key in ("joint", "fwd", "bwd"):
        view = mlp_views[key]
        for n in view.nodes:
            for i in n.inputs:
                assert n.name in view[i].users
            assert [m.index for m in view.nodes] == list(range(len(view.nodes)))


def test_views_share_storage(mlp_views: dict) -> None:
    joint = mlp_views["joint"]
    for n in joint.nodes:
        if n.kind is OpKind.VIEW and n.op != "getitem":
            assert joint.storage_of(n.name) == joint.storage_of(n.alias_of)
            assert joint.storage_of(n.name)[0] != n.name


def test_backward_saved_placeholders_name_forward_outputs(mlp_views: dict) -> None:
    fwd, bwd = mlp_views["fwd"], mlp_views["bwd"]
    saved = [n.name for n in bwd.nodes if n.role is Role.SAVED]
    assert saved and set(saved) <= set(fwd.output_names)


def test_dynamic_shapes_are_sympy_with_hints() -> None:
    x = torch.randn(6, 16)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    views = capture_joint(MLP(), x)
    joint = views["joint"]
    mm = next(n for n in joint.nodes if n.op == "aten.addmm.default" and n.side is Side.FWD)
    meta = mm.outputs[0]
    assert meta.shape_hint == (6, 32)
    assert meta.shape[0].free_symbols, "batch dimension should stay symbolic"
    assert meta.nbytes.subs({s: 6 for s in meta.nbytes.free_symbols}) == meta.nbytes_hint


def test_random_ops_are_flagged() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5))
    views = capture_joint(model, torch.randn(4, 16))
    assert any(n.is_random for n in views["joint"].nodes)


def test_unknown_name_error_is_helpful(mlp_views: dict) -> None:
    with pytest.raises(KeyError, match="no node named"):
        mlp_views["joint"]["does_not_exist"]




def test_multi_dim_inverse_real_fft_holds_twice_its_input_while_it_runs():
    """NOTE [Op workspace]: irfft2 copies its input and keeps a second complex buffer."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from fxopt.cost_models.memory import simulate_partition

    spectrum = torch.fft.rfft2(torch.randn(4, 8, 16, 16))
    gm = make_fx(lambda s: (torch.fft.irfft2(s, s=(16, 16)),))(spectrum)
    view = GraphView.from_fx(gm, side=Side.FWD)
    (c2r,) = [n for n in view.nodes if n.op == "aten._fft_c2r.default"]
    assert c2r.workspace_bytes == 2 * spectrum.numel() * spectrum.element_size()
    one_dim = make_fx(lambda s: (torch.fft.irfft(s, n=16),))(spectrum)
    assert all(n.workspace_bytes == 0 for n in GraphView.from_fx(one_dim, side=Side.FWD).nodes)
    empty = GraphView.from_fx(make_fx(lambda: ())(), side=Side.BWD)
    timeline = simulate_partition(view, empty)
    assert timeline.peak_bytes >= c2r.workspace_bytes + c2r.nbytes_hint


@pytest.mark.parametrize("kind", ["efficient", "flash"])
def test_cuda_attention_backward_holds_fp32_scratch(kind):
    """NOTE [Op workspace]: a CUDA SDPA backward accumulates dq in fp32 scratch (16 MiB measured
    on an H200 for the zoo's HF Llama: batch 256, 4 heads, sequence 16, head size 8); the same
    op traced on the CPU holds none."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    aten = torch.ops.aten

    def step(q, k, v):
        if kind == "efficient":
            out, lse, seed, offset = aten._scaled_dot_product_efficient_attention(
                q, k, v, None, True)
            grads = aten._scaled_dot_product_efficient_attention_backward(
                out, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False])
        else:
            out, lse, cq, ck, mq, mk, seed, offset, _ = aten._scaled_dot_product_flash_attention(
                q, k, v)
            grads = aten._scaled_dot_product_flash_attention_backward(
                out, q, k, v, out, lse, cq, ck, mq, mk, 0.0, False, seed, offset)
        return tuple(grads[:3])

    def workspace(device: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        with FakeTensorMode():
            qkv = [torch.empty(shape, device=device, dtype=dtype) for _ in range(3)]
            gm = make_fx(step)(*qkv)
        view = GraphView.from_fx(gm, side=Side.BWD)
        (node,) = [n for n in view.nodes if "attention_backward" in n.op]
        return node.workspace_bytes

    if kind == "efficient":
        assert workspace("cuda", (256, 4, 16, 8), torch.float32) == 16 * 2**20
        assert workspace("cuda", (8, 12, 1024, 128), torch.bfloat16) == 4 * 8 * 12 * 1024 * 128
    else:
        # dq_accum (8 x 1024 x 12 x 64) and the softmax sums (8 x 12 x 1024), fp32
        assert workspace("cuda", (8, 12, 1024, 64), torch.bfloat16) == 4 * 8 * 12 * 1024 * 65
    assert workspace("meta", (256, 4, 16, 8), torch.float32) == 0
