"""Fidelity figures: top-1 / top-5 agreement, cosine, the metric a value is read by, and
how the report says what it was measured on."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewriter.data import Samples
from rewriter.errors import BadInputError
from rewriter.fidelity import (
    CONFIDENT,
    FIDELITY_METRICS,
    MIN_SAMPLES,
    Fidelity,
    OutputFidelity,
    measure_fidelity,
    output_fidelity,
    uncertainty_warning,
)
from tests.helpers import load

# 4 samples, 7 classes. The original's top-1 class: 6, 6, 6, 3.
Y0 = np.array([[0, 1, 2, 3, 4, 5, 6],
               [0, 1, 2, 3, 4, 5, 6],
               [0, 1, 2, 3, 4, 5, 6],
               [0, 0, 0, 9, 1, 1, 1]], np.float64)
Y = np.array([[0, 1, 2, 3, 4, 5, 6],   # same top-1
              [9, 1, 2, 3, 4, 5, 6],   # top-1 0; class 6 second: in the top 5
              [6, 7, 8, 9, 10, 11, 0],  # class 6 last: not in the top 5
              [0, 0, 1, 8, 2, 0, 0]], np.float64)  # same top-1


def hand_cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_hand_made_classifier_case():
    out = output_fidelity("logits", Y0, Y)
    assert out.classifier
    assert out.top1_agreement == 0.5
    assert out.top5_agreement == 0.75
    cosines = [hand_cosine(a, b) for a, b in zip(Y0.tolist(), Y.tolist())]
    assert out.cosine == pytest.approx(sum(cosines) / 4)
    assert out.cosine_std == pytest.approx(np.std(cosines, ddof=1))
    diff = sum((a - b) ** 2 for a, b in zip(Y0.ravel(), Y.ravel()))
    assert out.relative_l2 == pytest.approx(math.sqrt(diff / sum(a * a for a in Y0.ravel())))


def test_agreement_where_the_original_is_sure():
    """Y0's softmax top-1 probabilities: e^6 / sum(e^0..e^6) = 0.63 for the first three
    samples (unsure), e^9 / (e^9 + 3 e^0 + 3 e^1) = 0.998 for the last (sure, agreeing)."""
    out = output_fidelity("logits", Y0, Y)
    assert out.confident_share == 0.25 and out.confident_top1 == 1.0
    sure = Y0.copy()
    sure[:2] *= 3  # e^18 / sum(e^0..e^18) = 0.95: the first agrees, the second does not
    out = output_fidelity("logits", sure, Y)
    assert out.confident_share == 0.75 and out.confident_top1 == pytest.approx(2 / 3)
    # probabilities (a model ending in Softmax) are read as they are, not softmaxed again
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.05, 0.95], [0.92, 0.08]])
    new = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    out = output_fidelity("probs", probs, new)
    assert CONFIDENT == 0.9
    assert out.confident_share == 0.75 and out.confident_top1 == pytest.approx(2 / 3)
    assert output_fidelity("map", Y0.reshape(4, 7, 1), Y.reshape(4, 7, 1)).confident_top1 \
        is None


def test_not_a_classifier():
    maps = output_fidelity("map", Y0.reshape(4, 7, 1), Y.reshape(4, 7, 1))
    assert not maps.classifier and maps.top1_agreement is None and maps.top5_agreement is None
    one = output_fidelity("score", Y0[:, :1], Y[:, :1])  # [N, 1]: a score, not classes
    assert not one.classifier and one.top1_agreement is None


def test_few_classes_top5_is_everything():
    out = output_fidelity("four", Y0[:, 3:], Y[:, 3:])
    assert out.top5_agreement == 1.0


def fidelity(*outputs: OutputFidelity, samples: int = 4) -> Fidelity:
    return Fidelity(tuple(outputs), samples, "hand-made")


CLS = OutputFidelity("cls", 0.3, 0.95, 0.5, 0.75, True, 0.02)
MAP = OutputFidelity("map", 0.1, 0.9, None, None, False, 0.05)


def test_value_metric_selection():
    only = fidelity(CLS)
    assert only.default_metric() == "top1" and only.value() == 0.5
    assert only.value("top5") == 0.75 and only.value("cosine") == 0.95
    mixed = fidelity(CLS, MAP)
    assert mixed.default_metric() == "cosine" and mixed.value() == 0.9
    # outputs without top-1 count by their cosine
    assert mixed.value("top1") == 0.5 and mixed.value("top5") == 0.75
    assert fidelity(MAP).value("top1") == 0.9
    assert fidelity(OutputFidelity("c", 0.0, 0.2, 0.9, 1.0)).value("top1") == 0.9
    with pytest.raises(BadInputError, match="top1, top5, cosine"):
        only.value("top3")
    assert FIDELITY_METRICS == ("top1", "top5", "cosine")


def test_old_constructor_infers_classifier():
    assert OutputFidelity("c", 0.0, 1.0, 1.0).classifier
    assert not OutputFidelity("m", 0.0, 1.0, None).classifier
    assert Fidelity((OutputFidelity("m", 0.0, 0.7, None),)).min_cosine == 0.7


def test_to_dict_keys_and_nesting():
    before = fidelity(CLS, MAP)
    after = fidelity(OutputFidelity("cls", 0.1, 0.99, 0.9, 1.0, True, 0.01), MAP)
    after.before_recovery = before
    data = after.to_dict()
    for key in ("top1_agreement", "top5_agreement", "cosine", "relative_l2", "samples",
                "measured_on", "before_recovery", "metric", "value", "min_cosine",
                "outputs"):
        assert key in data
    assert data["metric"] == "cosine" and data["value"] == 0.9
    assert data["top1_agreement"] == 0.9 and data["top5_agreement"] == 1.0
    assert data["cosine"] == data["min_cosine"] == 0.9
    assert data["relative_l2"] == 0.1  # the worst over outputs
    assert data["samples"] == 4 and data["measured_on"] == "hand-made"
    assert data["before_recovery"]["top1_agreement"] == 0.5
    assert data["before_recovery"]["before_recovery"] is None
    assert [o["name"] for o in data["outputs"]] == ["cls", "map"]
    assert data["outputs"][0]["top5_agreement"] == 1.0
    assert after.to_dict("top1")["value"] == 0.9
    assert data["top1_agreement_confident"] is None  # not given for the hand-made output
    # beside a dense output whose cosine is lower than every agreement: still the classifier's
    dense = OutputFidelity("map", 0.9, 0.1, None)
    measured = Fidelity((output_fidelity("logits", Y0, Y), dense), 4).to_dict()
    assert measured["top1_agreement_confident"] == 1.0 and measured["confident_share"] == 0.25
    json.dumps(data)
    maps = fidelity(MAP).to_dict()
    assert maps["top1_agreement"] is None and maps["top5_agreement"] is None
    # a caller that sets a fidelity as its own before_recovery does not loop forever
    after.before_recovery = after
    assert after.to_dict()["before_recovery"] is None


def test_summary_says_where():
    text = Fidelity((CLS,), 16, "16 held-out samples from 4 images never used for "
                    "fitting (photos/)").summary()
    assert "16 samples" in text and "photos/" in text and "top-5 agreement 75.0%" in text
    text = Fidelity((output_fidelity("logits", Y0, Y),), 4).summary()
    assert "top-1 100.0% on the 25% of samples the original is sure of" in text


def test_uncertainty_warning():
    few = fidelity(CLS, samples=16)
    text = uncertainty_warning(few)
    assert text and "16 samples" in text and "top-1 agreement" in text
    assert f"{math.sqrt(0.5 * 0.5 / 16):.4f}" in text  # binomial standard error
    assert uncertainty_warning(fidelity(CLS, samples=MIN_SAMPLES)) is None
    cosine = uncertainty_warning(fidelity(MAP, samples=25))
    assert cosine and "cosine" in cosine and f"{0.05 / 5:.4f}" in cosine
    perfect = uncertainty_warning(fidelity(OutputFidelity("c", 0, 1, 1.0, 1.0), samples=10))
    assert perfect and "0.700" in perfect  # rule of three: 1 - 3/10


def test_stderr():
    few = fidelity(CLS, samples=16)
    assert few.stderr() == pytest.approx(math.sqrt(0.25 / 16))
    assert few.stderr("cosine") == few.cosine_stderr() == pytest.approx(0.02 / 4)


def gemm_model(weight: np.ndarray):
    """x [N, 4] -> x @ weight [N, 7]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return load(proto)


def test_measure_fidelity_fills_samples_and_where():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 7))
    original, candidate = gemm_model(w), gemm_model(w + 0.3 * rng.standard_normal((4, 7)))
    x = rng.standard_normal((10, 4)).astype(np.float32)
    batches = [{"x": x[:4]}, {"x": x[4:8]}, {"x": x[8:]}]
    result = measure_fidelity(original, candidate, batches, measured_on="ten rows")
    assert result.samples == 10 and result.measured_on == "ten rows"
    expected = output_fidelity("y", x.astype(np.float64) @ w.astype(np.float32),
                               x.astype(np.float64) @ (candidate.graph.tensors()["w"].values))
    assert result.outputs[0].top1_agreement == expected.top1_agreement
    assert result.outputs[0].cosine == pytest.approx(expected.cosine, abs=1e-5)
    assert result.before_recovery is None
    samples = Samples({"x": x}, [f"r{i // 2}" for i in range(10)], "rows.npz (10 samples)")
    on_samples = measure_fidelity(original, candidate, samples)
    assert on_samples.samples == 10 and "rows.npz" in on_samples.measured_on
    assert on_samples.value() == result.value()
    old_style = measure_fidelity(original, candidate, batches)  # old positional API
    assert old_style.measured_on == "" and old_style.min_cosine == result.min_cosine
