"""Every exact pass on every zoo model matches the original in onnxruntime (tolerance 1e-4
of each output's scale), plus the cases that need care: the border term of the 1x1 -> KxK
fusion, depthwise with a channel multiplier, alignment across a residual Add and a Concat."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewriter import zoo
from rewriter.analysis.channels import channel_groups
from rewriter.graph_query import conv_info
from rewriter.passes import EXACT_PASSES, PASSES, get_pass
from rewriter.rewrite import apply_pass
from rewriter.verify import verify
from tests import fixture_models as fixtures
from tests.helpers import apply_and_verify, load, ops

ZOO_SMALL = {name: dict(width=0.35, resolution=64) for name in zoo.NAMES}


@pytest.fixture(scope="module")
def zoo_models():
    return {name: load(zoo.build(name, **kw)) for name, kw in ZOO_SMALL.items()}


@pytest.mark.parametrize("name", zoo.NAMES)
@pytest.mark.parametrize("pass_name", EXACT_PASSES)
def test_every_pass_on_every_zoo_model(zoo_models, name, pass_name):
    model = zoo_models[name]
    result, report = apply_and_verify(model, pass_name, multiple=16)
    assert report.passed, report.summary()
    assert not report.refused
    assert report.max_relative_error <= 1e-4
    has_bn = "BatchNormalization" in ops(model)
    if pass_name == "fold-bn":
        assert bool(result.applied) == has_bn
    elif pass_name == "trim-kernel":  # only MobileNetV3's 5x5 kernels outgrow a 2x2 map
        assert bool(result.applied) == (name in ("mobilenetv3", "lraspp"))
    elif pass_name != "fuse-linear-conv":
        assert result.applied, f"{pass_name} found nothing to do on {name}"


@pytest.mark.parametrize("name", ["mobilenetv2", "ssdlite"])
def test_fuse_linear_conv_after_folding(name):
    """Project conv -> next block's expand conv (no residual between) fuse once BN is folded."""
    unfolded = load(zoo.build(name, width=0.35, resolution=64))
    assert not get_pass("fuse-linear-conv").sites(unfolded)  # a BN sits between them
    folded = load(zoo.build(name, width=0.35, resolution=64, fold_bn=True))
    result, report = apply_and_verify(folded, "fuse-linear-conv")
    assert report.passed, report.summary()
    # Only projections not read by a residual Add: after stage 1 and before the last conv.
    assert len(result.applied) == 2


def test_fold_bn_removes_every_batchnorm(zoo_models):
    model = zoo_models["mobilenetv2"]
    assert "BatchNormalization" in ops(model)
    result, report = apply_and_verify(model, "fold-bn")
    assert report.passed
    assert "BatchNormalization" not in ops(result.model)
    assert len(result.applied) == ops(model).count("BatchNormalization")


@pytest.mark.parametrize("multiplier", [1, 2, 3])
def test_depthwise_with_channel_multiplier_to_dense(multiplier):
    model = load(fixtures.depthwise_multiplier(channels=8, multiplier=multiplier))
    result, report = apply_and_verify(model, "dw-to-dense")
    assert report.passed, report.summary()
    assert len(result.applied) == 1
    dense = [conv_info(n) for n in result.model.graph.nodes if n.op == "Conv"]
    assert all(info.groups == 1 for info in dense)
    assert any(info.weight.shape[:2] == (8 * multiplier, 8) for info in dense)


def test_grouped_conv_to_dense():
    model = load(fixtures.grouped_conv(cin=16, cout=24, groups=4))
    result, report = apply_and_verify(model, "dw-to-dense")
    assert report.passed and len(result.applied) == 1


@pytest.mark.parametrize("kernel, pads, stride, depthwise", [
    (3, 1, 1, False), (3, 1, 2, False), (5, 2, 1, False), (3, 1, 1, True), (3, 0, 1, False),
    (1, 0, 1, False),
])
def test_fuse_linear_conv_border_term(kernel, pads, stride, depthwise):
    model = load(fixtures.linear_conv_pair(kernel=kernel, pads=pads, stride=stride,
                                           depthwise2=depthwise, bias1=True))
    result, report = apply_and_verify(model, "fuse-linear-conv")
    assert report.passed, report.summary()
    assert len(result.applied) == 1
    convs = [n for n in result.model.graph.nodes if n.op == "Conv"]
    assert len(convs) == 1
    border_add = any(n.name.endswith("border_bias") for n in result.model.graph.nodes)
    assert border_add == (pads > 0), "a bias map is needed exactly where the KxK conv pads"


def test_border_term_is_needed():
    """Folding conv(b1) into a per-channel bias (the naive fusion) is wrong at the borders."""
    model = load(fixtures.linear_conv_pair(kernel=3, pads=1, bias1=True))
    result = apply_pass(model, get_pass("fuse-linear-conv"))
    naive = result.model.copy()
    add = next(n for n in naive.graph.nodes if n.name.endswith("border_bias"))
    bias_map = np.asarray(add.inputs[1].values)
    # Replace the map by its value at the centre, i.e. treat the bias as per-channel.
    centre = bias_map[:, :, bias_map.shape[2] // 2:bias_map.shape[2] // 2 + 1,
                      bias_map.shape[3] // 2:bias_map.shape[3] // 2 + 1]
    import onnx_graphsurgeon as gs
    add.inputs[1] = gs.Constant(add.inputs[1].name + "_naive", np.ascontiguousarray(centre))
    naive.invalidate()
    assert not verify(model, naive).passed
    assert verify(model, result.model).passed


def test_fuse_without_first_bias_folds_into_conv_bias():
    model = load(fixtures.linear_conv_pair(kernel=3, pads=1, bias1=False))
    result, report = apply_and_verify(model, "fuse-linear-conv")
    assert report.passed
    assert "Add" not in ops(result.model)


@pytest.mark.parametrize("multiple", [8, 16, 32])
def test_align_across_residual_add_and_concat(multiple):
    model = load(fixtures.residual_concat(channels=20))
    groups_before = {g.id: g for g in channel_groups(model)}
    result, report = apply_and_verify(model, "align-channels-up", multiple=multiple)
    assert report.passed, report.summary()
    assert result.applied
    coupled = [g for g in groups_before.values() if g.channels == 20 and not g.is_frozen]
    assert coupled, "the residual Add must couple the stem and branch into one free group"
    assert len(coupled[0].by_role("producer")) >= 2
    for group in channel_groups(result.model):
        if not group.is_frozen and group.by_role("producer"):
            assert group.channels % multiple == 0, group.to_dict()
    # The outputs keep their shapes (groups reaching outputs are frozen).
    assert [result.model.shapes[t.name] for t in result.model.graph.outputs] == [
        model.shapes[t.name] for t in model.graph.outputs]


def test_align_one_site_by_id_leaves_others():
    model = load(fixtures.residual_concat(channels=20))
    sites = get_pass("align-channels-up", 16).sites(model)
    assert len(sites) >= 2
    result, report = apply_and_verify(model, "align-channels-up", 16, [sites[0].id])
    assert report.passed and [s.id for s in result.applied] == [sites[0].id]
    remaining = {s.id for s in get_pass("align-channels-up", 16).sites(result.model)}
    assert sites[0].id not in remaining and sites[1].id in remaining


def test_se_block_and_spelled_hardswish():
    model = load(fixtures.se_block())
    for pass_name in EXACT_PASSES:
        _, report = apply_and_verify(model, pass_name, 16)
        assert report.passed, (pass_name, report.summary())


def test_passes_do_not_modify_their_input(zoo_models):
    unfolded = zoo_models["mobilenetv2"]
    folded = apply_pass(unfolded, get_pass("fold-bn")).model  # where fuse-ibn has sites
    for model in (unfolded, folded):
        before = model.to_onnx().SerializeToString()
        applied = {name: bool(apply_pass(model, get_pass(name, 16)).applied) for name in PASSES}
        assert model.to_onnx().SerializeToString() == before
        assert model.changes.kept_channels == {} and model.changes.refit == []
    assert applied["fuse-ibn"]  # the architecture changes ran too


def _conv_prelu_conv(slope_shape: tuple[int, ...]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (20, 3, 3, 3)), ("w2", (8, 20, 1, 1)))]
    inits.append(numpy_helper.from_array((0.3 * rng.random(slope_shape)).astype(np.float32),
                                         "slope"))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
         helper.make_node("PRelu", ["c1", "slope"], ["p"], name="prelu"),
         helper.make_node("Conv", ["p", "w2"], ["y"], name="c2")],
        "conv_prelu_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("slope_shape", [(20, 1, 1), (1,)])
def test_align_pads_and_prunes_prelu_slopes(slope_shape):
    """A per-channel slope [C, 1, 1] (PyTorch's export of nn.PReLU(C)) grows and shrinks
    with its group on axis 0; a shared slope [1] broadcasts and is left alone."""
    model = load(_conv_prelu_conv(slope_shape))
    result, report = apply_and_verify(model, "align-channels-up", 16)
    assert report.passed and [s.id for s in result.applied] == ["c1"], report.summary()

    def slope(m):
        return m.node("prelu").inputs[1].values.shape

    assert slope(result.model) == ((32, 1, 1) if slope_shape[0] > 1 else (1,))
    pruned = apply_pass(model, get_pass("align-channels-down", 16)).model
    assert pruned.shapes["p"] == (1, 16, 8, 8)
    assert slope(pruned) == ((16, 1, 1) if slope_shape[0] > 1 else (1,))
