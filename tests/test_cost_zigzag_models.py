"""Whole models on ZigZag: the per-layer sum, ZigZag's own whole-model total, and the checks
built on them (validate_with_zigzag, `rewriter cost validate --target edge-tpu-zz`).

One tiny model (two MAC layers: a 1x1 conv and a depthwise 3x3, plus a MaxPool and an Add
that ZigZag treats as free) and its dw-to-dense rewrite: three small layers, simulated once
into a temporary cache shared by the module, so the whole module takes seconds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("zigzag")

from rewriter.cli import main  # noqa: E402
from rewriter.cost import zigzag as zz  # noqa: E402
from rewriter.cost import zigzag_models as zm  # noqa: E402
from rewriter.cost.estimate import Target  # noqa: E402
from rewriter.graph_io import Model, model_from_proto  # noqa: E402
from rewriter.parallel import SerialExecutor  # noqa: E402
from rewriter.passes import get_pass  # noqa: E402
from rewriter.rewrite import apply_pass  # noqa: E402

ACCELERATOR = "edge_tpu_like"


def tiny_proto() -> onnx.ModelProto:
    """x[1,8,8,8] -> 1x1 conv 8->16 -> Relu -> MaxPool 2x2 -> depthwise 3x3 -> + pooled."""
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "pw", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "pw_act"),
        helper.make_node("MaxPool", ["r1"], ["p1"], "pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], "dw", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], group=16),
        helper.make_node("Add", ["c2", "p1"], ["y"], "residual"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 4])],
        [init("w1", (16, 8, 1, 1)), init("b1", (16,)), init("w2", (16, 1, 3, 3)),
         init("b2", (16,))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def tiny() -> Model:
    return model_from_proto(tiny_proto())


@pytest.fixture(scope="module")
def dense(tiny: Model) -> Model:
    return apply_pass(tiny, get_pass("dw-to-dense")).model


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zigzag-cache")


@pytest.fixture(scope="module")
def kernels(tiny: Model, dense: Model, cache: Path):
    return zm.simulate_kernels_ms([tiny, dense], ACCELERATOR, executor=SerialExecutor(),
                                  cache_dir=cache)


def test_model_latency_is_the_sum_of_its_simulated_layers(tiny, kernels, cache) -> None:
    per_kernel = {k.name: (k.spec.kind, ms) for k, ms in kernels[0]}
    assert {name: kind for name, (kind, _) in per_kernel.items()} == {
        "pw": "conv1x1", "pool": "pool", "dw": "dwconv", "residual": "elementwise"}
    # ZigZag simulates MAC layers only; the pool and the Add are free there
    assert per_kernel["pool"][1] == 0.0 and per_kernel["residual"][1] == 0.0
    assert per_kernel["pw"][1] > 0 and per_kernel["dw"][1] > 0
    # the cache holds cycles per layer, keyed without the (free) activation;
    # 1 ms = 1e6 cycles at 1 GHz
    cycles = json.loads(next(cache.iterdir()).read_text())
    assert len(cycles) == 3  # pw, dw and the dense replacement of dw
    keys = [zz.cache_key(replace(k.spec, act="")) for k, _ in kernels[0]
            if k.name in ("pw", "dw")]
    total = zm.simulate_model_ms(tiny, ACCELERATOR, cache_dir=cache)
    assert total == pytest.approx(sum(cycles[key] for key in keys) / 1e6)
    assert zm.simulate_model_ms(tiny, ACCELERATOR, clock_hz=5e8, cache_dir=cache) == \
        pytest.approx(2 * total)


def test_per_layer_sum_equals_zigzags_whole_model_total(tiny, kernels) -> None:
    per_layer = sum(ms for _, ms in kernels[0]) * 1e6
    assert zm.whole_model_cycles(tiny, ACCELERATOR) == pytest.approx(per_layer, rel=1e-9)


def test_validate_with_zigzag(tiny, dense, cache, kernels) -> None:
    target = Target.load("edge-tpu-zz")
    result = zm.validate_with_zigzag(tiny, dense, target, cache_dir=cache)
    before, after = (sum(ms for _, ms in ks) for ks in kernels)
    assert result["accelerator"] == ACCELERATOR and result["target"] == "edge-tpu-zz"
    assert result["zigzag_original_ms"] == pytest.approx(before)
    assert result["zigzag_optimized_ms"] == pytest.approx(after)
    assert result["zigzag_gain_pct"] == pytest.approx(100 * (before - after) / before)
    assert result["estimated_original_ms"] == pytest.approx(target.estimate(tiny).latency_ms)
    assert result["estimated_optimized_ms"] == pytest.approx(target.estimate(dense).latency_ms)
    assert result["sign_agrees"] == (
        np.sign(result["zigzag_gain_pct"]) == np.sign(result["estimated_gain_pct"]))
    json.dumps(result)  # plain values, ready for --json


def test_cli_validates_a_zigzag_target_by_simulation(tmp_path, tiny, cache, kernels,
                                                     monkeypatch, capsys) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_proto(), str(path))
    monkeypatch.setattr(zz, "DEFAULT_CACHE_DIR", cache)  # the layers simulated above
    assert main(["cost", "validate", "--target", "edge-tpu-zz", "--no-zoo", "--model",
                 str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]
    assert row["measured_ms"] == pytest.approx(sum(ms for _, ms in kernels[0]))
    assert row["estimated_ms"] == pytest.approx(Target.load("edge-tpu-zz").estimate(tiny)
                                                .latency_ms)
    assert main(["cost", "validate", "--target", "edge-tpu-zz", "--no-zoo", "--model",
                 str(path)]) == 0
    out = capsys.readouterr().out
    assert "ZigZag edge_tpu_like ms" in out and "1 models on edge-tpu-zz: MAPE" in out
