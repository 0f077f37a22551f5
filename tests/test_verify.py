"""The verifier: per-output errors, batch 2 on a symbolic batch, refusals that prove nothing,
and originals noisier than the tolerance judged in float64 (or against their own noise)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import rewriter.verify as verify_module
from rewriter import zoo
from rewriter.errors import BadInputError
from rewriter.float64 import Float64Unavailable, run_float64, to_float64, unchanged_parameters
from rewriter.passes import get_pass
from rewriter.rewrite import apply_pass
from rewriter.runtime import run_model
from rewriter.verify import MAX_BOUND, NOISE_FACTOR, TOLERANCE, load_inputs, make_inputs, verify
from tests import fixture_models as fixtures
from tests.helpers import load


@pytest.fixture()
def model():
    return load(fixtures.linear_conv_pair())


def scaled(model, factor: float):
    """A copy whose first conv's weights are multiplied by `factor`."""
    new = model.copy()
    conv = next(n for n in new.graph.nodes if n.op == "Conv")
    conv.inputs[1] = gs.Constant(conv.inputs[1].name + "_x",
                                 np.asarray(conv.inputs[1].values) * np.float32(factor))
    return new


def test_identical_models_pass_with_zero_error(model):
    report = verify(model, model.copy())
    assert report.passed and report.max_relative_error == 0.0
    assert report.inputs["input"][0] == 2 and report.inputs["input"][2:] == [16, 16]


def test_symbolic_batch_is_verified_at_batch_2(model):
    assert model.batch_is_symbolic()
    assert make_inputs(model)["input"].shape[0] == 2


def test_a_small_weight_change_fails(model):
    report = verify(model, scaled(model, 1.001))
    assert not report.passed and not report.refused
    assert report.max_relative_error > 1e-4
    assert "FAILED" in report.summary()


def test_zero_reference_is_refused(model):
    """An all-zero original proves nothing: a wrong rewrite of it would also 'match'."""
    dead = scaled(model, 0.0)
    # With zero first-conv weights the output is relu(const); make it exactly zero.
    for node in dead.graph.nodes:
        if node.op == "Conv":
            for i in range(1, len(node.inputs)):
                node.inputs[i] = gs.Constant(node.inputs[i].name + "_0",
                                             np.zeros_like(np.asarray(node.inputs[i].values)))
    report = verify(dead, dead.copy())
    assert not report.passed
    assert "near) zero" in report.refused


def test_inputs_file_errors(model, tmp_path):
    with pytest.raises(BadInputError, match="no such inputs file"):
        load_inputs(tmp_path / "none.npz", model)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="cannot read inputs"):
        load_inputs(bad, model)


# -- noisy originals: float64 and noise-bound modes --------------------------------------

def _noisy_proto(shift: float = 1e3) -> onnx.ModelProto:
    """Zoo MobileNetV2 (BN kept) whose BatchNorm running means are moved by `shift`
    standard deviations, beta compensating so the function is unchanged in real arithmetic:
    (x - mean) then cancels catastrophically in float32, as large running statistics make
    EfficientNet and SSDLite do, and onnxruntime's optimised (BN folded) and unoptimised
    runs differ by ~2e-3 of the output's scale."""
    proto = zoo.build("mobilenetv2", width=0.5, resolution=64, fold_bn=False)
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64)
                                  for n in node.input[1:5])
        std = np.sqrt(var + eps)
        for name, value in ((node.input[3], mean + shift * std),
                            (node.input[2], beta + gamma * shift)):
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return proto


@pytest.fixture(scope="module")
def noisy():
    return load(_noisy_proto())


@pytest.fixture(scope="module")
def noisy_folded(noisy):
    return apply_pass(noisy, get_pass("fold-bn")).model


def wrong_weight(model):
    """A copy with the first conv's largest weight multiplied by 1.5."""
    new = model.copy()
    conv = next(n for n in new.graph.nodes if n.op == "Conv")
    w = np.array(conv.inputs[1].values, copy=True)
    w.flat[int(np.argmax(np.abs(w)))] *= np.float32(1.5)
    conv.inputs[1] = gs.Constant(conv.inputs[1].name + "_wrong", w)
    return new


def test_noisy_fixture_is_noisier_than_the_tolerance(noisy):
    """What the float32 verifier used to refuse ('ill-conditioned on these inputs')."""
    proto, feeds = noisy.to_onnx(), make_inputs(noisy)
    optimised, plain = run_model(proto, feeds)["logits"], run_model(proto, feeds,
                                                                     optimize=False)["logits"]
    assert np.max(np.abs(optimised - plain)) / np.max(np.abs(optimised)) > 5 * TOLERANCE


@pytest.mark.parametrize("pass_name", ["fold-bn", "dw-to-dense"])
def test_exact_rewrite_of_noisy_model_passes_in_float64(noisy, pass_name):
    result = apply_pass(noisy, get_pass(pass_name))
    assert result.applied
    report = verify(noisy, result.model)
    assert report.passed and not report.refused, report.summary()
    assert report.mode == "float64" and report.bound == TOLERANCE
    assert report.max_relative_error < 1e-5  # float64 leaves only parameter rounding
    assert report.outputs[0].noise > TOLERANCE
    assert "mode float64" in report.summary() and "float64" in report.note
    data = report.to_dict()
    assert data["mode"] == "float64" and data["bound"] == TOLERANCE and data["passed"]


def test_wrong_weight_fails_on_noisy_model(noisy, noisy_folded):
    report = verify(noisy, wrong_weight(noisy_folded))
    assert not report.passed and not report.refused
    assert report.mode == "float64"
    assert report.max_relative_error > 10 * report.bound
    assert "FAILED" in report.summary()


def test_noise_bound_when_float64_cannot_run(noisy, noisy_folded, monkeypatch):
    def unavailable(*args, **kwargs):
        raise Float64Unavailable("no double kernel for MadeUpOp")

    monkeypatch.setattr(verify_module, "run_float64", unavailable)
    report = verify(noisy, noisy_folded)
    assert report.passed and report.mode == "noise-bound", report.summary()
    noise = report.outputs[0].noise
    assert report.bound == pytest.approx(max(TOLERANCE, NOISE_FACTOR * noise))
    assert "MadeUpOp" in report.note and "mode noise-bound" in report.summary()
    broken = verify(noisy, wrong_weight(noisy_folded))
    assert not broken.passed and broken.mode == "noise-bound"


def test_quiet_model_stays_in_float32(model, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("float64 run for a model whose float32 noise is small")

    monkeypatch.setattr(verify_module, "run_float64", forbidden)
    report = verify(model, scaled(model, 1.0 + 1e-6))
    assert report.passed and report.mode == "float32" and report.bound == TOLERANCE
    assert all(o.noise <= TOLERANCE for o in report.outputs)
    assert "mode float32" in report.summary()
    assert report.to_dict()["mode"] == "float32"
    assert not verify(model, scaled(model, 1.001)).passed


def test_rounding_of_recomputed_parameters_widens_the_float64_bound(noisy, noisy_folded):
    """Where the float64 outputs differ by more than the tolerance, the bound becomes
    ROUNDING_FACTOR x how far one more float32 rounding of the rewrite's recomputed
    parameters moves them (never above MAX_BOUND); parameters the rewrite kept verbatim
    are not perturbed."""
    tight = 1e-7  # fold-bn's float32 parameters move the float64 output by ~2e-6 here
    report = verify(noisy, noisy_folded, tolerance=tight)
    assert report.mode == "float64" and report.passed, report.summary()
    assert tight < report.bound <= MAX_BOUND and "rounding" in report.note
    broken = verify(noisy, wrong_weight(noisy_folded), tolerance=tight)
    assert not broken.passed and broken.max_relative_error > 10 * broken.bound


def test_tolerance_below_float32_resolution_on_noisy_model_is_refused(noisy, noisy_folded):
    report = verify(noisy, noisy_folded, tolerance=1e-12)
    assert not report.passed and "below float32's resolution" in report.refused


def test_unchanged_parameters_are_found_by_value():
    original = fixtures.linear_conv_pair()
    copy = onnx.ModelProto()
    copy.CopyFrom(original)
    first = copy.graph.initializer[0]
    first.name = "renamed"  # same values, new name: still unchanged
    copy.graph.initializer[1].CopyFrom(numpy_helper.from_array(
        numpy_helper.to_array(copy.graph.initializer[1]) * np.float32(2),
        copy.graph.initializer[1].name))
    kept = unchanged_parameters(original, copy)
    assert "renamed" in kept and copy.graph.initializer[1].name not in kept


def test_float64_conversion_of_constants_casts_and_resize():
    """Constant value_float, Cast(to=FLOAT), ConstantOfShape and Resize's float32-only
    scales all survive the conversion, and the float64 model computes the same function."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
            np.array([1, 1, 1, 1], dtype=np.int64))),
        helper.make_node("ConstantOfShape", ["shape"], ["half"],
                         value=numpy_helper.from_array(np.array([0.5], dtype=np.float32))),
        helper.make_node("Cast", ["x"], ["xf"], to=f),
        helper.make_node("Mul", ["xf", "two"], ["m"]),
        helper.make_node("Add", ["m", "half"], ["a"]),
        helper.make_node("Resize", ["a", "", "scales"], ["y"], mode="nearest"),
    ]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", f, [1, 2, 6, 6])], [scales])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto64 = to_float64(proto)
    onnx.checker.check_model(proto64, full_check=True)
    assert proto64.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert proto64.graph.output[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    expected = run_model(proto, {"x": x})["y"]
    got, engine = run_float64(proto64, {"x": x})
    assert got["y"].dtype == np.float64 and engine in ("onnxruntime", "reference")
    np.testing.assert_allclose(got["y"], expected, rtol=1e-6)


@pytest.mark.parametrize("name", zoo.NAMES)
def test_float64_copy_of_every_zoo_model_matches_float32(name):
    proto = zoo.build(name, width=0.35, resolution=64, opset=18)
    feeds = make_inputs(load(proto))
    expected = run_model(proto, feeds)
    got, _ = run_float64(to_float64(proto), feeds)
    for key, value in expected.items():
        assert np.max(np.abs(got[key] - value)) <= 1e-4 * np.max(np.abs(value)), key
