"""Refitting weights layer by layer from calibration data (rewriter.reconstruct.refit)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewriter.conv_math import grouped_to_dense
from rewriter.errors import UnsupportedError
from rewriter.fidelity import calibration_batches
from rewriter.graph_io import Model
from rewriter.graph_query import const_value, conv_attrs, conv_info
from rewriter.reconstruct import fit_conv, im2col, refit, solve_ridge
from rewriter.runtime import run_model
from tests import fixture_models as fixtures
from tests.helpers import load


def _spoil(model: Model, names: list[str], seed: int = 0) -> Model:
    """A copy whose nodes `names` have random weights and bias, listed for refitting."""
    rng = np.random.default_rng(seed)
    spoiled = model.copy()
    for name in names:
        node = spoiled.node(name)
        for index in range(1, len(node.inputs)):
            values = const_value(node.inputs[index])
            node.inputs[index] = gs.Constant(f"{name}.spoiled{index}",
                                             rng.standard_normal(values.shape).astype(np.float32))
        spoiled.changes.needs_refit(name)
    return spoiled


def _weights(model: Model, name: str) -> np.ndarray:
    return const_value(model.node(name).inputs[1])


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_solve_ridge_recovers_grouped_weights_and_bias():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4000, 5))
    w = rng.standard_normal((3, 2, 5))
    b = rng.standard_normal((3, 2))
    y = x @ w.transpose(0, 2, 1) + b[:, None, :]
    fitted_w, fitted_b = solve_ridge(x, y, lam=1e-6, scarcity=0.0)
    assert _relative(fitted_w, w) < 1e-3 and _relative(fitted_b, b) < 1e-3
    # Fewer rows than features: the dual form, still an exact fit of the rows it saw.
    few = x[:, :3]
    fitted_w, fitted_b = solve_ridge(few, y[:, :3], lam=1e-8, scarcity=0.0)
    assert np.allclose(few @ fitted_w.transpose(0, 2, 1) + fitted_b[:, None], y[:, :3],
                       atol=1e-2)


def test_im2col_rows_reproduce_an_onnxruntime_conv():
    model = load(fixtures.linear_conv_pair(kernel=3, pads=1, stride=2, bias2=False))
    node = model.node("conv_kxk")
    info = conv_info(node)
    x = np.random.default_rng(1).standard_normal((2, 12, 16, 16)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], **conv_attrs(info))
    graph = helper.make_graph(
        [conv], "one_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(info.weight, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    y = run_model(proto, {"x": x})["y"]
    rows = np.array([0, 5, 63, 64, 127])  # both samples, borders included
    patches = im2col(x, info, rows)
    flat = y.transpose(0, 2, 3, 1).reshape(-1, info.cout)
    assert np.allclose(patches @ info.weight.reshape(info.cout, -1).T, flat[rows], atol=1e-4)


@pytest.mark.parametrize("fixture, name", [
    (lambda: fixtures.depthwise_multiplier(channels=8, multiplier=1), "dw.conv"),
    (lambda: fixtures.grouped_conv(cin=16, cout=24, groups=4), "grouped.conv"),
])
def test_refit_recovers_depthwise_and_grouped_convs_exactly(fixture, name):
    original = load(fixture())
    spoiled = _spoil(original, [name])
    batches, _ = calibration_batches(original, None, count=8, batch=4)
    fixed = refit(original, spoiled, batches, ridge=1e-6)
    before, after = _weights(original, name), _weights(fixed, name)
    assert after.shape == before.shape and after.dtype == np.float32
    assert fixed.node(name).attrs["group"] == original.node(name).attrs["group"] > 1
    assert _relative(after, before) < 2e-3
    assert _relative(const_value(fixed.node(name).inputs[2]),
                     const_value(original.node(name).inputs[2])) < 5e-3
    assert fixed.changes.refit == [] and spoiled.changes.refit == [name]
    assert _relative(_weights(spoiled, name), before) > 0.5  # the input model is untouched


def test_layers_are_fitted_on_earlier_refits_so_errors_do_not_pile_up():
    """Two convs in a row, both spoiled: the second is fitted on the first's refitted
    output, so the whole model comes back; fitted on the spoiled first conv's output
    instead, it would not."""
    original = load(fixtures.linear_conv_pair(kernel=3, pads=1))
    spoiled = _spoil(original, ["conv_kxk", "conv1x1"])  # listed out of order on purpose
    batches, _ = calibration_batches(original, None, count=8, batch=4)
    fixed = refit(original, spoiled, batches, ridge=1e-6)
    feeds = batches[0]
    reference = run_model(original.to_onnx(), feeds)["output"]
    assert _relative(run_model(fixed.to_onnx(), feeds)["output"], reference) < 1e-2
    assert _relative(run_model(spoiled.to_onnx(), feeds)["output"], reference) > 0.5


def test_refit_a_gemm_without_bias_adds_one():
    original = load(fixtures.residual_concat(channels=20))
    spoiled = _spoil(original, ["classifier.gemm"])
    gemm = spoiled.node("classifier.gemm")
    gemm.inputs.pop()  # Gemm's C is optional: the fit adds it back
    batches, _ = calibration_batches(original, None, count=256, batch=64)
    fixed = refit(original, spoiled, batches)
    assert len(fixed.node("classifier.gemm").inputs) == 3
    feeds = batches[0]
    reference = run_model(original.to_onnx(), feeds)["logits"]
    # Eight features from 256 samples: the fit is near exact (the ridge term is small).
    assert _relative(run_model(fixed.to_onnx(), feeds)["logits"], reference) < 0.05


def test_refit_with_nothing_to_do_and_bad_requests():
    original = load(fixtures.linear_conv_pair())
    batches, _ = calibration_batches(original, None, count=4, batch=4)
    same = refit(original, original, batches)
    assert same is not original and same.changes.refit == []
    missing = original.copy()
    missing.changes.needs_refit("no_such_node")
    with pytest.raises(UnsupportedError, match="no_such_node"):
        refit(original, missing, batches)
    relu = original.copy()
    relu.changes.needs_refit("relu")
    with pytest.raises(UnsupportedError, match="cannot refit Relu"):
        refit(original, relu, batches)


def test_fit_conv_keeps_groups_block_diagonal():
    rng = np.random.default_rng(2)
    info = conv_info(load(fixtures.grouped_conv(cin=16, cout=24, groups=4)).node("grouped.conv"))
    patches = im2col(rng.standard_normal((4, 16, 8, 8)), info)
    grouped = rng.standard_normal(info.weight.shape)
    bias = rng.standard_normal(24)
    # Targets of the block-diagonal dense conv are fitted exactly, group by group ...
    dense = grouped_to_dense(grouped, 4).reshape(24, -1)
    weights, fitted_bias = fit_conv(patches, patches @ dense.T + bias, info, lam=1e-8,
                                    scarcity=0.0)
    assert weights.shape == info.weight.shape
    assert _relative(weights, grouped) < 1e-4 and _relative(fitted_bias, bias) < 1e-4
    # ... while a dense conv's targets, which mix groups, are out of reach of a grouped one.
    mixing = rng.standard_normal(dense.shape)
    weights, fitted_bias = fit_conv(patches, patches @ mixing.T, info, lam=1e-8, scarcity=0.0)
    fitted = patches @ grouped_to_dense(weights, 4).reshape(24, -1).T + fitted_bias
    assert _relative(fitted, patches @ mixing.T) > 0.5


def test_a_refit_after_padding_channels_is_one_clear_error():
    """align-channels-up records no kept channels (it adds them); a refit over a padded
    tensor cannot fit to channels the original lacks, and says so."""
    from rewriter import zoo
    from rewriter.passes import get_pass
    from rewriter.rewrite import apply_pass

    model = apply_pass(load(zoo.build("mobilenetv2", width=0.5, resolution=64)),
                       get_pass("fold-bn")).model
    padded = apply_pass(model, get_pass("align-channels-up", 32)).model
    fused = apply_pass(padded, get_pass("fuse-ibn")).model
    batches, _ = calibration_batches(model, None, count=4, batch=2)
    with pytest.raises(UnsupportedError, match="added channels"):
        refit(model, fused, batches)
