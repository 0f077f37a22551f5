"""fuse-ibn: an architecture change whose weights are refitted from calibration data."""

from __future__ import annotations

import json

import numpy as np
import onnx

from rewriter import zoo
from rewriter.cli import main
from rewriter.cost.estimate import Target
from rewriter.fidelity import measure_fidelity
from rewriter.passes import get_pass
from rewriter.passes.fuse_ibn import FuseIBN
from rewriter.reconstruct import refit
from rewriter.rewrite import apply_pass
from rewriter.staged import collect
from tests.helpers import load


def test_sites_need_folded_bn_and_are_labelled_not_exact(mnv2_folded):
    assert not FuseIBN.exact
    unfolded = load(zoo.build("mobilenetv2", width=0.5, resolution=96))
    assert FuseIBN().sites(unfolded) == []  # a BatchNormalization sits in each block
    sites = FuseIBN().sites(mnv2_folded)
    assert len(sites) == 16  # every block with an expansion conv (all but the first)
    assert sites[0].detail == {"cin": 8, "channels": 48, "kernel": 3, "stride": 2}


def test_refit_reproduces_the_block_better_than_composed_weights(mnv2_folded, mnv2_data):
    fit, held = mnv2_data
    site = FuseIBN().sites(mnv2_folded)[0]
    target = mnv2_folded.node(site.nodes[-1]).outputs[0].name
    y0 = collect(mnv2_folded, held, [target])[target]
    composed = apply_pass(mnv2_folded, FuseIBN(), [site.id]).model
    fused = next(n.name for n in composed.graph.nodes if n.outputs[0].name == target)
    assert composed.changes.refit == [fused]  # the fused conv, writing D's output
    errors = {}
    for label, new in (("composed", composed), ("refit", refit(mnv2_folded, composed, fit))):
        y = collect(new, held, [target])[target]
        errors[label] = np.linalg.norm(y - y0) / np.linalg.norm(y0)
    assert errors["refit"] < 0.8 * errors["composed"], errors


def test_refit_beats_composed_on_the_whole_model(mnv2_folded, mnv2_data):
    fit, held = mnv2_data
    ids = [s.id for s in FuseIBN().sites(mnv2_folded)]
    fused = apply_pass(mnv2_folded, FuseIBN(), ids).model
    assert len(fused.changes.refit) == len(ids)
    refitted = refit(mnv2_folded, fused, fit)
    assert refitted.changes.refit == [] and fused.changes.refit  # the input is left as it was
    composed = measure_fidelity(mnv2_folded, fused, held)
    after = measure_fidelity(mnv2_folded, refitted, held)
    assert after.outputs[0].relative_l2 < 0.5 * composed.outputs[0].relative_l2
    assert after.min_cosine > composed.min_cosine


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
                 "--site", "features.2.expand.conv", "-o", str(out), "--recover-budget",
                 "10steps", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["exact"] is False and len(data["applied"]) == 1
    assert 0 < data["fidelity"]["min_cosine"] <= 1
    assert data["warnings"] and "proxy" in data["warnings"][0]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    label = meta["rewriter.architecture_changed"]
    assert label.startswith("fuse-ibn@features.2.expand.conv; recovered by distillation")
