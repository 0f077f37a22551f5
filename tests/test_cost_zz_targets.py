"""Built-in targets fitted on ZigZag simulations: they estimate without ZigZag installed and
show the effects ZigZag shows (issue: an early IBN costs ~5x its fused form on the
edge-TPU-like array; a narrow depthwise conv is slower than its dense replacement)."""

from __future__ import annotations

import pytest

from rewriter import zoo
from rewriter.cost.estimate import Target
from rewriter.cost.profile import ProfileError, load_profile
from rewriter.passes import get_pass
from rewriter.passes.fuse_ibn import FuseIBN
from rewriter.rewrite import apply_pass
from tests.helpers import load


@pytest.fixture(scope="module")
def mnv2():
    model = load(zoo.build("mobilenetv2", width=1.0, resolution=224))
    return apply_pass(model, get_pass("fold-bn")).model


@pytest.mark.parametrize("name", ["edge-tpu-zz", "tpu-zz"])
def test_zz_targets_estimate_and_treat_non_mac_ops_as_free(mnv2, name):
    target = Target.load(name)
    assert target.profile.kind == "measured" and "elementwise" in target.profile.free_kinds
    result = target.estimate(mnv2)
    assert result.latency_ms > 0
    for op in result.ops:
        if op.kind in target.profile.free_kinds:
            assert op.latency_ms == 0.0
        else:
            assert op.latency_ms > 0


@pytest.mark.parametrize("name", ["edge-tpu-zz", "tpu-zz"])
def test_zz_targets_reward_dense_replacements_of_narrow_depthwise_convs(mnv2, name):
    target = Target.load(name)
    base = target.estimate(mnv2).latency_ms
    dense = apply_pass(mnv2, get_pass("dw-to-dense"), ["features.1.dw.conv"]).model
    fused = apply_pass(mnv2, FuseIBN(), ["features.2.expand.conv"]).model
    assert target.estimate(dense).latency_ms < base
    assert target.estimate(fused).latency_ms < base


def test_free_kinds_are_validated(tmp_path):
    text = load_profile("edge-tpu-zz").source.read_text()
    data = load_profile("edge-tpu-zz").measurements
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('"elementwise", "pool"', '"elementwise", "warp"')
                   .replace('measurements = "edge-tpu-zz.csv"', f'measurements = "{data}"'))
    with pytest.raises(ProfileError, match="free_kinds"):
        load_profile(bad)
