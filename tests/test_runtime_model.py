"""Runtime model: device table, roofline, transfers, measured mode, and per-tensor facts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from benchmarks.measure import measure_node_times, spearman
from fxopt.cost_models.device import PROFILES, Hardware, calibrate_cpu, get_profile
from fxopt.cost_models.runtime import (
    cast_seconds,
    graph_seconds,
    node_seconds,
    per_node_seconds,
    transfer_seconds,
)
from fxopt.graph import OpKind, Side
from tests.facts import tensor_facts
from tests.test_graph import capture_joint

FLAT = Hardware("test", {"float32": 1e12}, 1e11, 1e10, 0.0, 2**30)


class MLP(nn.Module):
    def __init__(self, d: int = 128) -> None:
        super().__init__()
        self.a = nn.Linear(d, 4 * d)
        self.b = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))).square().mean()


@pytest.fixture(scope="module")
def views() -> dict:
    return capture_joint(MLP(), torch.randn(64, 128))


def test_gpu_profiles_cite_datasheets() -> None:
    assert PROFILES["h100"].peak_flops("bfloat16") == pytest.approx(989e12)
    assert PROFILES["h100"].mem_bandwidth == pytest.approx(3.35e12)
    assert PROFILES["h200"].mem_bandwidth == pytest.approx(4.8e12)
    assert PROFILES["a100"].peak_flops("bfloat16") == pytest.approx(312e12)
    assert PROFILES["a100"].mem_bandwidth == pytest.approx(2.039e12)
    # PCIe 5.0 x16 (63 GB/s per direction), as pinned copies reach it (55 GB/s, gpu_check)
    assert PROFILES["h100"].host_link == PROFILES["h200"].host_link == pytest.approx(55e9)
    assert 30e9 < PROFILES["a100"].host_link < 32e9  # PCIe 4.0 x16
    for p in PROFILES.values():
        assert {"compute", "memory", "host_link"} <= set(p.sources)
        assert all(p.sources.values())


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ValueError, match="h100"):
        get_profile("tpu")


def test_cpu_calibration_is_sane_and_cached() -> None:
    p = calibrate_cpu(threads=1)
    assert p is calibrate_cpu(threads=1)
    assert 1e8 < p.peak_flops("float32") < 1e13
    assert 1e8 < p.mem_bandwidth < 1e13
    assert 0 < p.overhead_s < 1e-2


def test_cpu_calibration_is_kept_on_disk(tmp_path, monkeypatch) -> None:
    """A second process reads the first one's numbers, so its Problems (and plans) match."""
    import json

    import fxopt.cost_models.device as device

    monkeypatch.setenv("FXOPT_CACHE_DIR", str(tmp_path))
    calls = []
    measure = device._measure_cpu
    monkeypatch.setattr(device, "_measure_cpu", lambda t: calls.append(t) or measure(t))
    calibrate_cpu.cache_clear()
    try:
        first = calibrate_cpu(threads=1)
        path = tmp_path / "device" / "cpu-1threads.json"
        assert calls == [1] and path.exists()
        assert first.mem_bandwidth == float(f"{first.mem_bandwidth:.2g}")  # two digits
        calibrate_cpu.cache_clear()  # as a new process would
        assert calibrate_cpu(threads=1) == first and calls == [1]
        data = json.loads(path.read_text())
        data["machine"]["torch"] = "0.0"  # another torch (or CPU) measures again
        path.write_text(json.dumps(data))
        calibrate_cpu.cache_clear()
        calibrate_cpu(threads=1)
        assert calls == [1, 1]
        path.write_text("{not json")  # a corrupt file too
        calibrate_cpu.cache_clear()
        calibrate_cpu(threads=1)
        assert calls == [1, 1, 1] and json.loads(path.read_text())["machine"]["torch"] != "0.0"
    finally:
        calibrate_cpu.cache_clear()


def test_roofline_is_compute_or_memory_bound(views: dict) -> None:
    fwd = views["fwd"]
    mm = next(n for n in fwd.nodes if n.op == "aten.addmm.default")
    flops = 2 * 64 * 128 * 512
    assert mm.flops == flops
    t = node_seconds(fwd, mm.name, FLAT)
    assert t >= flops / 1e12
    slow_mem = dataclasses.replace(FLAT, mem_bandwidth=1e3)
    assert node_seconds(fwd, mm.name, slow_mem) > 100 * t  # now bandwidth-bound
    for n in fwd.nodes:
        if n.kind is OpKind.VIEW:
            assert node_seconds(fwd, n.name, FLAT) == 0.0


def test_fusion_makes_graph_time_no_larger_than_unfused(views: dict) -> None:
    for key in ("fwd", "bwd"):
        v = views[key]
        fused = graph_seconds(v, FLAT)
        unfused = sum(per_node_seconds(v, FLAT).values())
        assert 0 < fused <= unfused * (1 + 1e-9)


def test_transfer_and_cast_costs_scale_with_bytes() -> None:
    h100 = get_profile("h100")
    assert transfer_seconds(2 * 10**9, h100) == pytest.approx(
        2 * transfer_seconds(10**9, h100) - h100.overhead_s)
    assert 0.015 < transfer_seconds(10**9, h100) < 0.02
    fp8 = cast_seconds(10**8, 2, 1, h100)
    assert cast_seconds(10**8, 4, 1, h100) > fp8 > h100.overhead_s


def test_spearman_known_values() -> None:
    xs = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    assert spearman(xs, {"a": 10, "b": 20, "c": 30, "d": 40}) == pytest.approx(1.0)
    assert spearman(xs, {"a": 4, "b": 3, "c": 2, "d": 1}) == pytest.approx(-1.0)
    assert spearman(xs, {"a": 1, "b": 1, "c": 2, "d": 2}) == pytest.approx(0.8944, abs=1e-3)
    with pytest.raises(ValueError, match="at least 3"):
        spearman({"a": 1.0}, {"a": 1.0})


def test_measured_mode_times_compute_nodes_only() -> None:
    x = torch.randn(64, 128)
    gm = torch.fx.experimental.proxy_tensor.make_fx(MLP())(x)
    times = measure_node_times(gm, repeats=2)
    ops = {n.name: n for n in gm.graph.nodes}
    assert times and all(t > 0 for t in times.values())
    assert all(ops[name].op == "call_function" for name in times)
    assert any("addmm" in str(ops[name].target) for name in times)
    assert not any(ops[name].target.is_view for name in times)


def test_tensor_facts_are_consistent(views: dict) -> None:
    joint = views["joint"]
    facts = tensor_facts(joint, FLAT)
    assert facts
    for f in facts.values():
        node = joint[f.name]
        assert node.side is Side.FWD
        assert f.produced_at <= f.last_fwd_use
        assert f.produced_at < f.first_bwd_use <= f.last_bwd_use
        assert f.nbytes_hint == joint.storage_bytes(joint.storage_of(f.name))
        assert f.is_view == (node.kind is OpKind.VIEW)
        assert f.recompute_seconds >= 0
        if f.is_view:
            assert f.storage != f.name
