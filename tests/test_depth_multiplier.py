"""depth-multiplier: every free channel group scaled by m, rounded to multiples of P."""

from __future__ import annotations

import json
from math import floor

import numpy as np
import onnx
import pytest

from rewriter import zoo
from rewriter.analysis.channels import channel_groups
from rewriter.cli import main
from rewriter.errors import BadInputError
from rewriter.fidelity import calibration_batches, measure_fidelity
from rewriter.passes import PASSES, get_pass
from rewriter.passes.depth_multiplier import DepthMultiplier
from rewriter.reconstruct import refit
from rewriter.rewrite import apply_pass
from tests import fixture_models as fixtures
from tests.helpers import load


def test_get_pass_builds_it_with_a_multiplier():
    assert "depth-multiplier" in PASSES and not DepthMultiplier.exact
    rule = get_pass("depth-multiplier", 16, multiplier=0.75)
    assert isinstance(rule, DepthMultiplier) and (rule.multiple, rule.multiplier) == (16, 0.75)
    default = get_pass("depth-multiplier")
    assert (default.multiple, default.multiplier) == (32, 0.5)
    for bad in (0.0, 1.5, -0.5):
        with pytest.raises(BadInputError):
            get_pass("depth-multiplier", 32, multiplier=bad)
    with pytest.raises(BadInputError, match="depth-multiplier only"):
        get_pass("fuse-ibn", multiplier=0.5)


@pytest.mark.parametrize("m", [0.75, 0.5])
def test_one_site_with_every_changed_group(mnv2_folded, m):
    sites = get_pass("depth-multiplier", 32, multiplier=m).sites(mnv2_folded)
    assert len(sites) == 1 and sites[0].id == f"x{m:g}"
    detail = sites[0].detail
    assert detail["multiplier"] == m
    expected = {}
    for group in channel_groups(mnv2_folded):
        if group.is_frozen or not group.by_role("producer"):
            continue
        c = group.channels
        new = min(c, max(32, floor(c * m / 32 + 0.5) * 32))
        if new != c:
            expected[group.id] = [c, new]
    assert detail["groups"] == expected
    assert expected["features.18.conv"] == [1280, 960 if m == 0.75 else 640]
    assert "features.0.conv" not in expected  # 16 channels: below P already
    assert all(new % 32 == 0 and new < c for c, new in expected.values())


def test_apply_prunes_every_group_and_lists_consumers(mnv2_folded):
    site = get_pass("depth-multiplier", 32, multiplier=0.5).sites(mnv2_folded)[0]
    pruned = apply_pass(mnv2_folded, get_pass("depth-multiplier", 32, multiplier=0.5)).model
    groups = {g.id: g for g in channel_groups(mnv2_folded)}
    consumers = set()
    for gid, (_, new) in site.detail["groups"].items():
        for tensor in groups[gid].tensors:
            assert pruned.shapes[tensor][1] == new, tensor
            assert len(pruned.changes.kept_channels[tensor]) == new
        consumers |= {m.node for m in groups[gid].by_role("consumer")}
    assert set(pruned.changes.refit) == consumers
    assert pruned.changes.passes == ["depth-multiplier@x0.5"]
    assert pruned.shapes["logits"] == mnv2_folded.shapes["logits"]
    params = [sum(np.asarray(t.values).size for t in m.graph.tensors().values()
                  if hasattr(t, "values")) for m in (mnv2_folded, pruned)]
    assert params[1] < 0.5 * params[0]
    # A second multiplier finds nothing it would shrink further at the same level.
    assert get_pass("depth-multiplier", 32, multiplier=1.0).sites(pruned) == []


@pytest.mark.parametrize("m", [0.75, 0.5])
def test_refit_beats_pruned_weights(mnv2_folded, mnv2_data, m):
    fit, held = mnv2_data
    pruned = apply_pass(mnv2_folded, get_pass("depth-multiplier", 32, multiplier=m)).model
    before = measure_fidelity(mnv2_folded, pruned, held)
    after = measure_fidelity(mnv2_folded, refit(mnv2_folded, pruned, fit), held)
    assert after.outputs[0].relative_l2 < 0.8 * before.outputs[0].relative_l2
    assert after.min_cosine > before.min_cosine + 0.1


def test_groups_meeting_in_a_concat_prune_together():
    model = load(fixtures.residual_concat(channels=20))
    rule = get_pass("depth-multiplier", 8, multiplier=0.5)
    site = rule.sites(model)[0]
    assert site.detail["groups"] == {"stem.conv": [20, 8], "branch_b.conv": [12, 8]}
    pruned = apply_pass(model, rule).model
    kept = pruned.changes.kept_channels
    assert pruned.shapes["concat"][1] == 16
    assert np.array_equal(kept["concat"], np.concatenate([kept["dw.act"],
                                                          20 + kept["branch_b.act"]]))
    fit, _ = calibration_batches(model, None, count=16, batch=4, seed=0)
    held, _ = calibration_batches(model, None, count=16, batch=4, seed=1)
    before = measure_fidelity(model, pruned, held).outputs[0].relative_l2
    after = measure_fidelity(model, refit(model, pruned, fit), held).outputs[0].relative_l2
    assert after < 0.8 * before, (before, after)


def test_cli_applies_a_multiplier(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "d.onnx"
    onnx.save(zoo.build("mobilenetv2", width=0.5, resolution=64), path)
    assert main(["apply", str(path), "--pass", "fuse-ibn", "--multiplier", "0.5",
                 "--allow-architecture-changes", "-o", str(out)]) == 2
    assert "depth-multiplier only" in capsys.readouterr().err
    assert main(["apply", str(path), "--pass", "depth-multiplier", "--multiplier", "0.75",
                 "--multiple", "16", "--allow-architecture-changes", "-o", str(out),
                 "--recover", "refit", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["id"] for s in data["applied"]] == ["x0.75"]
    assert data["warnings"] and "proxy" in data["warnings"][0]
    written = onnx.load(str(out))
    meta = {p.key: p.value for p in written.metadata_props}
    assert meta["rewriter.architecture_changed"].startswith(
        "depth-multiplier@x0.75; weights refitted only; top1 fidelity ")
    assert data["applied"][0]["groups"]["features.18.conv"] == [1280, 960]
    weights = {t.name: t.dims for t in written.graph.initializer}
    last = next(n for n in written.graph.node if n.name == "features.18.conv")
    assert weights[last.input[1]][0] == 960
