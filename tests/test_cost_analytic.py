"""Analytic latency model: channel tiling, depthwise utilisation, and the rewrites it judges."""

from __future__ import annotations

import math

import pytest

from rewriter.cost.analytic import estimate_op, memory_bytes
from rewriter.cost.opspec import KINDS, OpSpec, features, mac_cycles
from rewriter.cost.profile import ProfileError, load_profile

conv = OpSpec.conv2d


@pytest.fixture(scope="module")
def p32():
    return load_profile("npu-p32")


@pytest.fixture(scope="module")
def p16():
    return load_profile("npu-p16")


def lat(spec: OpSpec, profile) -> float:
    return estimate_op(spec, profile).latency_s


def test_opspec_shapes_and_work():
    spec = conv(16, 96, 112, 3)
    assert (spec.kind, spec.h_out, spec.kh, spec.groups) == ("conv", 112, 3, 1)
    assert spec.macs == 112 * 112 * 96 * 16 * 9
    assert spec.weight_bytes == (96 * 16 * 9 + 96) * 4
    assert spec.input_bytes == 16 * 112 * 112 * 4 and spec.output_bytes == 96 * 112 * 112 * 4
    dw = conv(96, 96, 112, 3, stride=2, groups=96)
    assert (dw.kind, dw.h_out, dw.macs) == ("dwconv", 56, 56 * 56 * 96 * 9)
    assert conv(64, 64, 28, 3, groups=4).kind == "groupconv"
    assert conv(64, 64, 28, 1).kind == "conv1x1"
    assert hash(spec.signature()) == hash(conv(16, 96, 112, 3).signature())
    assert spec.signature() != conv(16, 96, 112, 3, act="relu").signature()
    with pytest.raises(ValueError, match="groups"):
        OpSpec("groupconv", cin=10, cout=12, groups=4)
    with pytest.raises(ValueError, match="kind"):
        OpSpec("lstm")
    with pytest.raises(ValueError, match="cin"):
        OpSpec("conv", cin=0)


def test_features_tile_counts():
    f = features(conv(33, 64, 28, 1), 32)
    assert (f["tiles_in"], f["tiles_out"]) == (2.0, 2.0)
    assert f["padded_macs"] == 28 * 28 * 64 * 64
    assert f["utilisation"] == pytest.approx(33 / 64)
    assert f["log_macs"] == pytest.approx(math.log1p(28 * 28 * 33 * 64))
    assert f["kind_conv1x1"] == 1.0 and f["kind_conv"] == 0.0
    assert mac_cycles(conv(32, 32, 10, 3, groups=32), 32, 32) == 100 * 9


def test_channel_tiling_p32(p32):
    c32, c33, c64 = (lat(conv(64, c, 28, 1), p32) for c in (32, 33, 64))
    assert c33 == c64
    assert c33 > c32
    # also in compute alone
    e32, e33, e64 = (estimate_op(conv(64, c, 28, 1), p32).compute_s for c in (32, 33, 64))
    assert e33 == e64 > e32


def test_channel_tiling_p16(p16):
    c16, c17, c32 = (lat(conv(64, c, 28, 1), p16) for c in (16, 17, 32))
    assert c17 == c32 > c16
    assert lat(conv(17, 64, 28, 3), p16) == lat(conv(32, 64, 28, 3), p16)


def test_depthwise_utilisation(p32):
    dw = estimate_op(conv(64, 64, 56, 3, groups=64), p32)
    dense = estimate_op(conv(64, 64, 56, 3), p32)
    assert 0 < dw.utilisation <= 1 / 8
    assert dense.utilisation > 0.9
    assert dense.bound == "compute"


def test_fused_ibn_pays_off_when_wide_spatial(p32):
    fused = lat(conv(16, 96, 112, 3), p32)
    ibn = lat(conv(16, 96, 112, 1, act="relu6"), p32) + lat(conv(96, 96, 112, 3, groups=96), p32)
    assert fused < ibn


def test_fused_ibn_loses_when_deep_narrow(p32):
    fused = lat(conv(160, 960, 7, 3), p32)
    ibn = lat(conv(160, 960, 7, 1, act="relu6"), p32) + lat(conv(960, 960, 7, 3, groups=960), p32)
    assert fused > ibn


def test_dw_to_dense_edge_tpu_calibration(p32):
    dw32, dense32 = lat(conv(32, 32, 112, 3, groups=32), p32), lat(conv(32, 32, 112, 3), p32)
    assert dw32 > dense32
    assert dw32 / dense32 == pytest.approx(1.7, rel=0.05)  # the edge-TPU figure
    dw256, dense256 = lat(conv(256, 256, 14, 3, groups=256), p32), lat(conv(256, 256, 14, 3), p32)
    assert dense256 > dw256
    assert lat(conv(96, 96, 56, 3), p32) > lat(conv(96, 96, 56, 3, groups=96), p32)


def test_roofline_composition(p32):
    for spec in (conv(16, 96, 112, 3), conv(160, 960, 7, 3), OpSpec("gemm", cin=1280, cout=1000)):
        est = estimate_op(spec, p32)
        assert est.latency_s == pytest.approx(max(est.compute_s, est.memory_s) + p32.overhead_s)
        assert est.bound == ("compute" if est.compute_s >= est.memory_s else "memory")
    # weight-heavy gemm is memory bound
    assert estimate_op(OpSpec("gemm", cin=1280, cout=1000), p32).bound == "memory"


def test_spill_moves_activations_twice(p32):
    small = conv(32, 32, 56, 1)   # 2 * 100 KB: fits the 2 MiB SRAM
    big = conv(256, 256, 112, 1)  # 2 * 3.2 MB: spills
    assert memory_bytes(small, p32) == 2 * 56 * 56 * 32 + 32 * 32 + 32
    assert memory_bytes(big, p32) == 2 * 2 * 112 * 112 * 256 + 256 * 256 + 256


def test_activation_cost(p32):
    base = estimate_op(conv(64, 64, 56, 3), p32).compute_s
    assert estimate_op(conv(64, 64, 56, 3, act="relu"), p32).compute_s == base
    assert estimate_op(conv(64, 64, 56, 3, act="hardswish"), p32).compute_s > base


def test_every_kind_positive(p32):
    specs = [
        conv(32, 64, 28, 3), conv(32, 64, 28, 1), conv(32, 32, 28, 3, groups=32),
        conv(32, 64, 28, 3, groups=4), OpSpec("gemm", cin=512, cout=10),
        OpSpec("pool", cin=32, cout=32, h_in=28, w_in=28, h_out=14, w_out=14, kh=2, kw=2,
               stride=2),
        OpSpec("gap", cin=32, cout=32, h_in=28, w_in=28),
        OpSpec("elementwise", cin=32, cout=32, h_in=28, w_in=28, h_out=28, w_out=28, n_inputs=2),
        OpSpec("resize", cin=32, cout=32, h_in=14, w_in=14, h_out=28, w_out=28),
        OpSpec("concat", cin=16, cout=32, h_in=28, w_in=28, h_out=28, w_out=28, n_inputs=2),
        # npu-p32 has no [ops.reorder]: a conversion takes the elementwise parameters
        OpSpec("reorder", cin=32, cout=32, h_in=28, w_in=28, h_out=28, w_out=28,
               layout="nchw"),
    ]
    assert sorted({s.kind for s in specs}) == sorted(KINDS)
    for spec in specs:
        est = estimate_op(spec, p32)
        assert est.latency_s > p32.overhead_s and 0 <= est.utilisation <= 1
        assert math.isfinite(est.latency_s)
    two = OpSpec("elementwise", cin=64, cout=64, h_in=56, w_in=56, h_out=56, w_out=56, n_inputs=2)
    three = OpSpec("elementwise", cin=64, cout=64, h_in=56, w_in=56, h_out=56, w_out=56,
                   n_inputs=3)
    assert lat(three, p32) > lat(two, p32)


def test_measured_profile_rejected():
    with pytest.raises(ProfileError, match="analytic"):
        estimate_op(conv(8, 8, 8, 3), load_profile("cpu-ort"))
