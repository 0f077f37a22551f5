"""Built-in targets fitted on ZigZag simulations: they estimate without ZigZag installed and
show the effects ZigZag shows (issue: an early IBN costs ~5x its fused form on the
edge-TPU-like array; a narrow depthwise conv is slower than its dense replacement)."""

from __future__ import annotations

import pytest

from rewriter import zoo
from rewriter.cli import main
from rewriter.cost.estimate import Target
from rewriter.cost.profile import ProfileError, load_profile
from rewriter.cost.zigzag import ZigZagError
from rewriter.cost.zigzag_models import target_accelerator, validate_with_zigzag
from rewriter.passes import get_pass
from rewriter.passes.fuse_ibn import FuseIBN
from rewriter.rewrite import apply_pass
from tests.helpers import edited_profile, load


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


@pytest.mark.parametrize("name, old, new, message", [
    ("edge-tpu-zz", '"elementwise", "pool"', '"elementwise", "warp"', "free_kinds"),
    ("tpu-zz", 'accelerator = "tpu_like"', "accelerator = 3", "accelerator: expected a string"),
    ("edge-tpu-zz", "parallelism_ox = 4", "parallelism_ox = 2", "floor_at_peak needs"),
    ("edge-tpu-zz", "parallelism_ox = 4", "parallelism_ox = 0",
     "parallelism_ox: must be positive"),
])
def test_bad_zz_profile_keys_are_one_clear_error(tmp_path, name, old, new, message):
    with pytest.raises(ProfileError, match=message):
        load_profile(edited_profile(tmp_path, name, old, new))


@pytest.mark.parametrize("name, accelerator", [("edge-tpu-zz", "edge_tpu_like"),
                                               ("tpu-zz", "tpu_like")])
def test_zz_targets_name_their_zigzag_accelerator(name, accelerator):
    assert load_profile(name).accelerator == accelerator
    assert target_accelerator(Target.load(name)) == accelerator


@pytest.mark.parametrize("name", ["npu-p32", "cpu-ort"])
def test_only_zigzag_fitted_targets_validate_with_zigzag(mnv2, name):
    # raised before anything is simulated, so this needs no ZigZag installed
    with pytest.raises(ZigZagError, match=f"target {name} is not fitted on ZigZag"):
        validate_with_zigzag(mnv2, mnv2, Target.load(name))
    assert load_profile(name).accelerator is None


def test_cli_pairs_need_a_zigzag_target(capsys):
    assert main(["cost", "validate", "--target", "cpu-ort", "--pairs", "--no-zoo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("rewriter: error: --pairs needs a ZigZag-fitted target such as "
                   "edge-tpu-zz, not cpu-ort")


def test_edge_tpu_zz_tiles_the_output_map_and_never_beats_its_peak():
    """edge_tpu_like unrolls 8x8 channels by 4x4 output pixels: the ideal cycles of a 6x6 map
    equal an 8x8 one's, and no estimate (even far outside the sampled shapes) falls below
    them, as no ZigZag simulation can."""
    from rewriter.cost.analytic import peak_s
    from rewriter.cost.latency import regression_for
    from rewriter.cost.opspec import OpSpec, mac_cycles

    target = Target.load("edge-tpu-zz")
    profile = target.profile
    assert (profile.parallelism_ox, profile.parallelism_oy, profile.floor_at_peak) == (4, 4, True)
    assert mac_cycles(OpSpec.conv2d(16, 16, 6), 8, 8, 4, 4) == mac_cycles(
        OpSpec.conv2d(16, 16, 8), 8, 8, 4, 4) == 4 * 9 * 2 * 2
    huge = OpSpec("conv", cin=240, cout=480, h_in=12, w_in=80, h_out=12, w_out=80, kh=5, kw=5)
    # far beyond the sampled MACs, the fit alone undershoots; the floor holds
    assert regression_for(profile).predict_ms(huge) < peak_s(huge, profile) * 1e3
    assert target.kernel(huge)[0] == pytest.approx(peak_s(huge, profile) * 1e3)
