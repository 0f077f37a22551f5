"""align-channels-down: prune a channel group to a multiple of P, then refit its consumers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from rewriter import zoo
from rewriter.analysis.channels import channel_groups
from rewriter.cli import main
from rewriter.errors import BadInputError
from rewriter.fidelity import calibration_batches, measure_fidelity
from rewriter.passes import get_pass
from rewriter.passes.align_channels_down import AlignChannelsDown
from rewriter.reconstruct import refit
from rewriter.rewrite import apply_pass
from rewriter.staged import collect
from tests import fixture_models as fixtures
from tests.helpers import load


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_sites_are_unaligned_free_groups_wider_than_p(mnv2_folded):
    rule = get_pass("align-channels-down", 32)
    assert isinstance(rule, AlignChannelsDown) and not rule.exact
    sites = rule.sites(mnv2_folded)
    assert {s.id: s.detail for s in sites} == {
        "features.2.expand.conv": {"channels": 48, "to": 32},
        "features.11.project.conv": {"channels": 48, "to": 32},
        "features.14.project.conv": {"channels": 80, "to": 64},
    }
    # The same ids as align-channels-up, minus groups narrower than P (16 -> 32 pads up).
    up = {s.id for s in get_pass("align-channels-up", 32).sites(mnv2_folded)}
    assert {s.id for s in sites} < up and "features.1.project.conv" in up
    with pytest.raises(BadInputError):
        get_pass("align-channels-down", 1)


def test_pruned_model_runs_with_expected_channels_and_records_changes(mnv2_folded, mnv2_data):
    result = apply_pass(mnv2_folded, get_pass("align-channels-down", 32))
    pruned = result.model
    groups = {g.id: g for g in channel_groups(mnv2_folded)}
    for site in result.applied:
        group = groups[site.id]
        for tensor in group.tensors:
            assert pruned.shapes[tensor][1] == site.detail["to"], tensor
            kept = pruned.changes.kept_channels[tensor]
            assert len(kept) == site.detail["to"] and np.all(np.diff(kept) > 0)
        assert set(pruned.changes.refit) >= {m.node for m in group.by_role("consumer")}
    assert pruned.node("features.2.dw.conv").attrs["group"] == 32
    assert pruned.changes.passes == [f"align-channels-down@{s.id}" for s in result.applied]
    assert [pruned.shapes[t.name] for t in pruned.graph.outputs] == [
        mnv2_folded.shapes[t.name] for t in mnv2_folded.graph.outputs]
    assert mnv2_folded.changes.kept_channels == {}  # the input model is left as it was
    # Producers and followers are untouched on the kept channels: the expand conv and the
    # depthwise conv of block 2 (whose inputs did not change) give the original's values.
    fit, _ = mnv2_data
    for name in ("features.2.expand.act", "features.2.dw.act"):
        kept = pruned.changes.kept_channels[name]
        original = collect(mnv2_folded, fit[:1], [name])[name][:, kept]
        assert _relative(collect(pruned, fit[:1], [name])[name], original) < 1e-5


def test_refit_beats_pruned_weights_on_held_out_inputs(mnv2_folded, mnv2_data):
    fit, held = mnv2_data
    pruned = apply_pass(mnv2_folded, get_pass("align-channels-down", 32),
                        ["features.2.expand.conv"]).model
    assert pruned.changes.refit == ["features.2.project.conv"]
    refitted = refit(mnv2_folded, pruned, fit)
    target = "features.2.project.bn"  # the consumer's output (BN mnv2_folded into the conv)
    y0 = collect(mnv2_folded, held, [target])[target]
    before = _relative(collect(pruned, held, [target])[target], y0)
    after = _relative(collect(refitted, held, [target])[target], y0)
    assert after < 0.8 * before, (before, after)
    whole_before = measure_fidelity(mnv2_folded, pruned, held)
    whole_after = measure_fidelity(mnv2_folded, refitted, held)
    assert whole_after.outputs[0].relative_l2 < whole_before.outputs[0].relative_l2
    assert whole_after.min_cosine > whole_before.min_cosine


def test_pruning_twice_composes_kept_channels(mnv2_folded, mnv2_data):
    """48 -> 40 (P = 40) -> 32 (P = 32): the second pass's indices map through the first."""
    once = apply_pass(mnv2_folded, get_pass("align-channels-down", 40),
                      ["features.2.expand.conv"]).model
    twice = apply_pass(once, get_pass("align-channels-down", 32),
                       ["features.2.expand.conv"]).model
    name = "features.2.expand.act"
    first, both = once.changes.kept_channels[name], twice.changes.kept_channels[name]
    assert len(first) == 40 and len(both) == 32 and set(both) <= set(first)
    fit, _ = mnv2_data
    original = collect(mnv2_folded, fit[:1], [name])[name]
    assert _relative(collect(twice, fit[:1], [name])[name], original[:, both]) < 1e-5
    assert twice.changes.passes == ["align-channels-down@features.2.expand.conv"] * 2


def test_groups_inside_a_concat_prune_and_refit():
    model = load(fixtures.residual_concat(channels=20))
    result = apply_pass(model, get_pass("align-channels-down", 8))
    assert {s.id: s.detail["to"] for s in result.applied} == {"stem.conv": 16,
                                                              "branch_b.conv": 8}
    pruned = result.model
    assert pruned.shapes["concat"][1] == 24 and pruned.shapes["mix.conv"][1] == 8
    changes = pruned.changes
    # The Concat's kept channels: the first slice's, then the second's after offset 20.
    assert np.array_equal(changes.kept_channels["concat"],
                          np.concatenate([changes.kept_channels["dw.act"],
                                          20 + changes.kept_channels["branch_b.act"]]))
    assert "mix.conv" in changes.refit and "branch_b.gate.conv" in changes.refit
    fit, _ = calibration_batches(model, None, count=16, batch=4, seed=0)
    held, _ = calibration_batches(model, None, count=16, batch=4, seed=1)
    before = measure_fidelity(model, pruned, held).outputs[0].relative_l2
    after = measure_fidelity(model, refit(model, pruned, fit), held).outputs[0].relative_l2
    assert after < 0.5 * before, (before, after)


def test_lraspp_concat_group_prunes_and_runs():
    model = apply_pass(load(zoo.build("lraspp", width=0.5, resolution=96)),
                       get_pass("fold-bn")).model
    sites = get_pass("align-channels-down", 12).sites(model)
    low = next(s for s in sites if s.id == "head.low.conv")  # read by the classifier at 64
    pruned = apply_pass(model, get_pass("align-channels-down", 12), [low.id]).model
    kept = pruned.changes.kept_channels["head.concat"]
    width = model.shapes["head.concat"][1]
    assert pruned.shapes["head.concat"][1] == len(kept) == width - 4
    assert np.array_equal(kept[:width - 16], np.arange(width - 16))  # the first slice stays
    assert pruned.changes.refit == ["head.classifier"]
    fit, _ = calibration_batches(model, None, count=8, batch=4, seed=0)
    assert measure_fidelity(model, refit(model, pruned, fit), fit).min_cosine > 0.9


def test_cli_prunes_refits_and_labels(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(zoo.build("mobilenetv2", width=0.5, resolution=64), path)
    args = ["apply", str(path), "--pass", "align-channels-down", "--multiple", "32",
            "-o", str(out)]
    assert main(args) == 2 and not out.exists()
    assert "--allow-architecture-changes" in capsys.readouterr().err
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, input=np.random.default_rng(0).standard_normal(
        (12, 3, 64, 64)).astype(np.float32))
    assert main([*args, "--allow-architecture-changes", "--calibration", str(calibration),
                 "--recover-budget", "10steps", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exact"] is False and len(data["applied"]) == 3
    assert not any("proxy" in w for w in data["warnings"])  # real data given: no proxy note
    assert data["method"] == "distill" and data["fidelity"]["before_recovery"] is not None
    assert 0 < data["fidelity"]["min_cosine"] <= 1
    written = onnx.load(str(out))
    meta = {p.key: p.value for p in written.metadata_props}
    assert meta["rewriter.architecture_changed"].startswith("align-channels-down@")
    assert "recovered by distillation" in meta["rewriter.architecture_changed"]
    saved = load(written)
    assert saved.shapes["features.2.dw.act"][1] == 32
