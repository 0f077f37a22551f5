"""The verifier: per-output errors, batch 2 on a symbolic batch, refusals that prove nothing."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from rewriter.errors import BadInputError
from rewriter.verify import load_inputs, make_inputs, verify
from rewriter.zoo import fixtures
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
