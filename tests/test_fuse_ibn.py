"""fuse-ibn: an architecture change whose weights are refitted from calibration data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from rewriter import zoo
from rewriter.cli import main
from rewriter.cost.estimate import Target
from rewriter.fidelity import calibration_batches, measure_fidelity
from rewriter.passes import get_pass
from rewriter.passes.fuse_ibn import Calibration, FuseIBN
from rewriter.reconstruct import collect
from rewriter.rewrite import apply_pass
from tests.helpers import load


@pytest.fixture(scope="module")
def folded():
    model = load(zoo.build("mobilenetv2", width=0.5, resolution=96))
    return apply_pass(model, get_pass("fold-bn")).model


@pytest.fixture(scope="module")
def data(folded):
    fit, _ = calibration_batches(folded, None, count=16, batch=4, seed=0)
    held, _ = calibration_batches(folded, None, count=8, batch=4, seed=1)
    return fit, held


def test_sites_need_folded_bn_and_are_labelled_not_exact(folded):
    assert not FuseIBN.exact
    unfolded = load(zoo.build("mobilenetv2", width=0.5, resolution=96))
    assert FuseIBN().sites(unfolded) == []  # a BatchNormalization sits in each block
    sites = FuseIBN().sites(folded)
    assert len(sites) == 16  # every block with an expansion conv (all but the first)
    assert sites[0].detail == {"cin": 8, "channels": 48, "kernel": 3, "stride": 2}


def test_refit_reproduces_the_block_better_than_composed_weights(folded, data):
    fit, held = data
    site = FuseIBN().sites(folded)[0]
    target = folded.node(site.nodes[-1]).outputs[0].name
    y0 = collect(folded, held, [target])[target]
    errors = {}
    for label, rule in (("composed", FuseIBN()), ("refit", FuseIBN(Calibration(folded, fit)))):
        new = apply_pass(folded, rule, [site.id]).model
        y = collect(new, held, [target])[target]
        errors[label] = np.linalg.norm(y - y0) / np.linalg.norm(y0)
    assert errors["refit"] < 0.8 * errors["composed"], errors


def test_refit_beats_composed_on_the_whole_model(folded, data):
    fit, held = data
    ids = [s.id for s in FuseIBN().sites(folded)]
    composed = measure_fidelity(folded, apply_pass(folded, FuseIBN(), ids).model, held)
    refit = measure_fidelity(folded, apply_pass(folded, FuseIBN(Calibration(folded, fit)),
                                                ids).model, held)
    assert refit.outputs[0].relative_l2 < 0.5 * composed.outputs[0].relative_l2
    assert refit.min_cosine > composed.min_cosine


def test_fused_ibn_pays_off_early_on_the_npu():
    model = apply_pass(load(zoo.build("mobilenetv2", width=1.0, resolution=224)),
                       get_pass("fold-bn")).model
    target = Target.load("npu-p32")
    base = target.estimate(model).latency_ms
    early = apply_pass(model, FuseIBN(), ["features.2.expand.conv"]).model
    late = apply_pass(model, FuseIBN(), ["features.17.expand.conv"]).model
    assert target.estimate(early).latency_ms < base < target.estimate(late).latency_ms


def test_cli_requires_the_flag_and_labels_the_model(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "f.onnx"
    onnx.save(zoo.build("mobilenetv2", width=0.5, resolution=64), path)
    assert main(["apply", str(path), "--pass", "fuse-ibn", "-o", str(out)]) == 2
    assert "--allow-architecture-changes" in capsys.readouterr().err and not out.exists()
    assert main(["apply", str(path), "--pass", "fuse-ibn", "--allow-architecture-changes",
                 "--site", "features.2.expand.conv", "-o", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["exact"] is False and len(data["applied"]) == 1
    assert 0 < data["fidelity"]["min_cosine"] <= 1
    assert data["warnings"] and "proxy" in data["warnings"][0]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["rewriter.architecture_changed"].endswith("fine-tune before use")
