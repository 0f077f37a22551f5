"""dw-to-grouped: a depthwise or grouped conv's groups merged into groups of up to P
channels with block-diagonal weights, exactly, and priced by the search as built."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from rewriter import optimize, zoo
from rewriter.cost.estimate import Target
from rewriter.graph_query import conv_info
from rewriter.passes import get_pass
from rewriter.rewrite import apply_pass
from rewriter.runtime import run_model
from rewriter.search.space import SearchSpace
from tests.fixture_models import depthwise_multiplier, grouped_conv
from tests.helpers import apply_and_verify, load


def single_grouped_conv(groups: int, cin_g: int, cout_g: int, kernel: int, stride: int,
                        pads: tuple[int, int, int, int], size: int = 6,
                        seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    cin, cout = groups * cin_g, groups * cout_g
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv",
                            kernel_shape=[kernel, kernel], strides=[stride, stride],
                            pads=list(pads), group=groups)
    graph = helper.make_graph(
        [node], "grouped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(
            rng.standard_normal((cout, cin_g, kernel, kernel)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def fewest_groups(groups: int, cin_g: int, width: int) -> int:
    """The oracle: the fewest groups (a divisor of `groups`) with at most `width` input
    channels each."""
    return min(d for d in range(1, groups + 1)
               if groups % d == 0 and groups // d * cin_g <= width)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([2, 3, 4, 6, 8, 12, 16, 24]),  # groups
       st.integers(1, 3),  # input channels per group
       st.integers(1, 3),  # output channels per group (a depthwise multiplier when cin_g 1)
       st.sampled_from([1, 3, 5]), st.integers(1, 2),
       st.tuples(*[st.integers(0, 2)] * 4),
       st.sampled_from([2, 4, 8, 16, 32]))
def test_merged_groups_compute_the_same_function(groups, cin_g, cout_g, kernel, stride, pads,
                                                 width):
    proto = single_grouped_conv(groups, cin_g, cout_g, kernel, stride, pads)
    model = load(proto)
    sites = get_pass("dw-to-grouped", width).sites(model)
    expected = fewest_groups(groups, cin_g, max(width, cin_g))
    if expected in (1, groups):  # nothing to merge, or one group: dw-to-dense's rewrite
        assert sites == []
        return
    (site,) = sites
    rewritten = apply_pass(model, get_pass("dw-to-grouped", width)).model
    info = conv_info(rewritten.node("conv"))
    assert info.groups == expected and site.detail["merged"] == expected
    assert info.cin == groups * cin_g and info.cout == groups * cout_g
    x = np.random.default_rng(1).standard_normal(
        (1, groups * cin_g, 6, 6)).astype(np.float32)
    before = run_model(proto, {"x": x})["y"]
    after = run_model(rewritten.to_onnx(), {"x": x})["y"]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # what each output reads is the old group's inputs and nothing else
    weight = info.weight
    old_in = np.arange(groups * cin_g) // cin_g
    for o in range(groups * cout_g):
        new_group = o // (groups * cout_g // expected)
        read = new_group * weight.shape[1] + np.flatnonzero(np.abs(weight[o]).sum((1, 2)))
        assert set(old_in[read]) <= {o // cout_g}


def test_depthwise_with_a_multiplier_and_a_grouped_conv_verify():
    result, report = apply_and_verify(load(depthwise_multiplier(channels=16, multiplier=2)),
                                      "dw-to-grouped", multiple=8)
    assert report.passed and [s.detail["merged"] for s in result.applied] == [2]
    assert conv_info(result.model.node("dw.conv")).weight.shape == (32, 8, 3, 3)
    result, report = apply_and_verify(load(grouped_conv(cin=16, cout=24, groups=8)),
                                      "dw-to-grouped", multiple=8)
    assert report.passed and conv_info(result.model.node("grouped.conv")).groups == 2


def test_no_site_where_groups_already_fill_p_or_would_become_one():
    assert get_pass("dw-to-grouped", 4).sites(load(grouped_conv(16, 24, 4))) == []
    assert get_pass("dw-to-grouped", 8).sites(load(depthwise_multiplier(channels=8))) == []


def test_the_search_regroups_depthwise_convs_where_the_target_prices_them_lower():
    """On edge-tpu-zz (an 8x8 array over output and input channels) the depthwise convs of
    a MobileNetV2 become groups of 8 channels; the result is verified and cheaper."""
    model = load(zoo.build("mobilenetv2", width=0.5, resolution=96))
    result = optimize(model, "edge-tpu-zz", passes=["dw-to-grouped"])
    chosen = [d for d in result.decisions if d.pass_name == "dw-to-grouped"]
    assert chosen and result.verification.passed
    assert result.after.latency_ms < 0.8 * result.before.latency_ms
    for decision in chosen:
        info = conv_info(result.model.node(decision.site))
        assert info.cin // info.groups == 8


@pytest.mark.parametrize("resize", ["depth-multiplier", "align-channels-up"])
def test_regrouping_follows_the_channels_other_genes_set(resize):
    """A depthwise conv resized by another gene is merged from its new channel count (or
    left alone where all would fit in one group, dw-to-dense's rewrite): scored as the
    passes build it."""
    model = load(zoo.build("mobilenetv2", width=0.5, resolution=96))
    target = Target.load("npu-p32")
    space = SearchSpace(model, target, architecture=True)
    regroups = [i for i, g in enumerate(space.genes) if g.pass_name == "dw-to-grouped"]
    resizes = [i for i, g in enumerate(space.genes) if g.pass_name == resize]
    assert regroups and resizes
    changed = 0
    for r in resizes[:3]:
        for i in regroups[::3]:
            genome = [0] * len(space)
            genome[r] = genome[i] = 1
            genome = tuple(genome)
            active = space.active(genome)
            alone = [0] * len(space)
            alone[r] = 1
            if space.active(tuple(alone)) != [r]:
                continue
            if i in active:
                changed += space.score(genome) != space.score(tuple(alone))
            built = target.estimate(space.build(genome))
            assert space.score(genome).latency_ms == pytest.approx(built.latency_ms, rel=1e-9)
            assert space.score(genome).param_bytes == built.param_bytes
    assert changed
