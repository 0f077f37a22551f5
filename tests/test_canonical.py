"""Canonical form (rewriter.canonical): each exporter idiom is normalised, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewriter import zoo
from rewriter.analysis.blocks import find_blocks
from rewriter.analysis.channels import analyse_channels, channel_groups
from rewriter.errors import UnsupportedError
from rewriter.graph_io import model_from_proto
from rewriter.passes.fuse_ibn import FuseIBN
from rewriter.runtime import run_model
from tests import fixture_models as fixtures

RNG = np.random.default_rng(0)


# -- helpers -------------------------------------------------------------------------------
def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32) * 0.3


def _graph_model(nodes, inits, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    """A checked model whose outputs carry the shapes onnx infers (an empty shape where a
    computed shape leaves the rank unknown)."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops)
    model.ir_version = helper.find_min_ir_version_for(ops)
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape"):
            out.type.tensor_type.shape.SetInParent()
    onnx.checker.check_model(model)
    return model


def _model(nodes: list[onnx.NodeProto], inits: list[TensorProto], cin: int = 4,
           res: int = 8, opset: int = 13, outputs: list[str] | None = None
           ) -> onnx.ModelProto:
    return _graph_model(
        nodes, inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, res, res])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs or ["y"]],
        opset)


def _feeds(proto: onnx.ModelProto, batch: int = 2, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in proto.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch
                for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _assert_same_function(proto: onnx.ModelProto, model=None) -> None:
    """The loaded (canonical) model computes what the original proto does."""
    model = model if model is not None else model_from_proto(proto)
    feeds = _feeds(proto)
    want = run_model(proto, feeds, optimize=False)
    got = run_model(model.to_onnx(), feeds, optimize=False)
    assert set(want) == set(got)
    for name, value in want.items():
        scale = float(np.abs(value).max()) or 1.0
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=name)


def _ops(model) -> list[str]:
    return [n.op for n in model.graph.nodes]


def _conv(name: str, x: str, y: str, cin: int, cout: int, k: int = 3, pads=(0, 0, 0, 0),
          bias: bool = True, group: int = 1, **attrs) -> tuple[onnx.NodeProto, list]:
    inits = [_init(f"{name}.w", _w(cout, cin // group, k, k))]
    inputs = [x, f"{name}.w"]
    if bias:
        inits.append(_init(f"{name}.b", _w(cout)))
        inputs.append(f"{name}.b")
    node = helper.make_node("Conv", inputs, [y], name=name, kernel_shape=[k, k],
                            group=group, **({"pads": list(pads)} if "auto_pad" not in attrs
                                             else {}), **attrs)
    return node, inits


def _pad(name: str, x: str, y: str, pads, value: float | None = None, mode: str = "constant",
         axes=None) -> tuple[onnx.NodeProto, list]:
    inits = [_init(f"{name}.pads", np.array(pads, dtype=np.int64))]
    inputs = [x, f"{name}.pads"]
    if value is not None or axes is not None:
        if value is not None:
            inits.append(_init(f"{name}.value", np.array(value, dtype=np.float32)))
            inputs.append(f"{name}.value")
        else:
            inputs.append("")
    if axes is not None:
        inits.append(_init(f"{name}.axes", np.array(axes, dtype=np.int64)))
        inputs.append(f"{name}.axes")
    return helper.make_node("Pad", inputs, [y], name=name, mode=mode), inits


SPATIAL = [0, 0, 1, 1, 0, 0, 1, 1]


# -- 1. Pad folding --------------------------------------------------------------------------
@pytest.mark.parametrize("opset,axes", [(13, None), (18, [2, 3]), (18, [-2, -1])])
def test_zero_spatial_pad_folds_into_conv(opset, axes):
    pads = SPATIAL if axes is None else [1, 2, 0, 1]
    pad, p_inits = _pad("pad", "x", "p", pads, value=0.0 if axes else None, axes=axes)
    conv, c_inits = _conv("conv", "p", "y", 4, 6, pads=(1, 0, 0, 1))
    proto = _model([pad, conv], p_inits + c_inits, opset=opset)
    model = model_from_proto(proto)
    assert _ops(model) == ["Conv"]
    expected = [2, 1, 1, 2] if axes is None else [2, 2, 0, 2]
    assert list(model.graph.nodes[0].attrs["pads"]) == expected
    assert any("folded 1 Pad node into Conv pads" in n for n in model.canonical_notes)
    _assert_same_function(proto, model)


def test_pad_folds_into_every_conv_reader_and_valid_auto_pad():
    pad, p_inits = _pad("pad", "x", "p", SPATIAL)
    c1, i1 = _conv("c1", "p", "a", 4, 4)
    c2, i2 = _conv("c2", "p", "b", 4, 4, auto_pad="VALID", strides=[2, 2], k=3)
    c3, i3 = _conv("c3", "b", "c", 4, 4, k=1)
    resize_free = helper.make_node("GlobalAveragePool", ["a"], ["ga"], name="gap_a")
    resize_free2 = helper.make_node("GlobalAveragePool", ["c"], ["gc"], name="gap_c")
    add = helper.make_node("Add", ["ga", "gc"], ["y"], name="add")
    proto = _model([pad, c1, c2, c3, resize_free, resize_free2, add], p_inits + i1 + i2 + i3)
    model = model_from_proto(proto)
    assert "Pad" not in _ops(model)
    assert model.node("c2").attrs.get("auto_pad", "NOTSET") == "NOTSET"
    _assert_same_function(proto, model)


def test_pad_folds_into_average_pool_counting_pads():
    pad, p_inits = _pad("pad", "x", "p", SPATIAL)
    pool = helper.make_node("AveragePool", ["p"], ["y"], name="pool", kernel_shape=[3, 3])
    proto = _model([pad, pool], p_inits)
    model = model_from_proto(proto)
    assert _ops(model) == ["AveragePool"]
    assert model.graph.nodes[0].attrs["count_include_pad"] == 1
    _assert_same_function(proto, model)


def test_pad_stays_before_average_pool_that_excludes_its_own_pads():
    pad, p_inits = _pad("pad", "x", "p", SPATIAL)
    pool = helper.make_node("AveragePool", ["p"], ["y"], name="pool", kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1], count_include_pad=0)
    proto = _model([pad, pool], p_inits)
    model = model_from_proto(proto)
    assert "Pad" in _ops(model)
    _assert_same_function(proto, model)


@pytest.mark.parametrize("relu", [True, False])
def test_pad_folds_into_max_pool_only_after_a_non_negative_op(relu):
    nodes = [helper.make_node("Relu" if relu else "Neg", ["x"], ["r"], name="act")]
    pad, p_inits = _pad("pad", "r", "p", SPATIAL)
    pool = helper.make_node("MaxPool", ["p"], ["y"], name="pool", kernel_shape=[3, 3])
    proto = _model(nodes + [pad, pool], p_inits)
    model = model_from_proto(proto)
    assert ("Pad" in _ops(model)) is not relu
    _assert_same_function(proto, model)


@pytest.mark.parametrize("case", ["reflect", "value", "channel", "non_conv_reader", "crop"])
def test_pads_that_are_not_exact_to_fold_stay(case):
    cout = 6
    if case == "reflect":
        pad, p_inits = _pad("pad", "x", "p", SPATIAL, mode="reflect")
    elif case == "value":
        pad, p_inits = _pad("pad", "x", "p", SPATIAL, value=1.5)
    elif case == "channel":
        pad, p_inits = _pad("pad", "x", "p", [0, 1, 0, 0, 0, 1, 0, 0])
    elif case == "crop":
        pad, p_inits = _pad("pad", "x", "p", [0, 0, -1, 0, 0, 0, 0, 0])
    else:
        pad, p_inits = _pad("pad", "x", "p", SPATIAL)
    cin = 6 if case == "channel" else 4
    conv, c_inits = _conv("conv", "p", "c", cin, cout)
    nodes = [pad, conv]
    if case == "non_conv_reader":
        nodes.append(helper.make_node("Relu", ["p"], ["pr"], name="relu_p"))
        nodes.append(helper.make_node("GlobalAveragePool", ["pr"], ["gp"], name="gp"))
        nodes.append(helper.make_node("Add", ["c", "gp"], ["y"], name="add"))
        cout = 4
        conv, c_inits = _conv("conv", "p", "c", cin, cout)
        nodes[1] = conv
    else:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    proto = _model(nodes, p_inits + c_inits)
    model = model_from_proto(proto)
    assert "Pad" in _ops(model)
    assert any(n.startswith("left 1 Pad node") for n in model.canonical_notes)
    _assert_same_function(proto, model)


def _pad_expand_model(pads: list[int], mode: str = "reflect") -> onnx.ModelProto:
    """x -> 1x1 conv (a group of 8 channels) -> Relu -> Pad -> 3x3 conv -> Relu."""
    c1, i1 = _conv("c1", "x", "a", 4, 8, k=1)
    act = helper.make_node("Relu", ["a"], ["r"], name="relu1")
    pad, p_inits = _pad("pad", "r", "p", pads, mode=mode)
    cin = 8 + pads[1] + pads[5]
    c2, i2 = _conv("c2", "p", "c", cin, 6)
    out = helper.make_node("Relu", ["c"], ["y"], name="relu2")
    return _model([c1, act, pad, c2, out], i1 + p_inits + i2)


def test_spatial_pad_that_stays_is_channel_transparent():
    model = model_from_proto(_pad_expand_model(SPATIAL))
    pad = model.node("pad")
    analysis = analyse_channels(model)
    assert analysis.layout[pad.inputs[0].name] == analysis.layout[pad.outputs[0].name]
    group = next(g for g in analysis.groups if pad.outputs[0].name in g.tensors)
    assert group.frozen == []
    assert [m.node for m in group.by_role("producer")] == ["c1"]
    assert [m.node for m in group.by_role("consumer")] == ["c2"]


def test_channel_axis_pad_stays_and_freezes():
    model = model_from_proto(_pad_expand_model([0, 1, 1, 1, 0, 1, 1, 1], mode="constant"))
    assert "Pad" in _ops(model)
    group = next(g for g in channel_groups(model) if "a" in g.tensors)
    assert any("Pad" in reason for reason in group.frozen)


# -- 2. Identity and Dropout -----------------------------------------------------------------
def test_identity_and_dropout_are_removed():
    c1, i1 = _conv("c1", "x", "a", 4, 4, pads=(1, 1, 1, 1))
    ident = helper.make_node("Identity", ["a"], ["ai"], name="ident")
    drop = helper.make_node("Dropout", ["ai", "ratio", "training"], ["ad", "mask"], name="drop")
    act = helper.make_node("Relu", ["ad"], ["r"], name="relu")
    out = helper.make_node("Identity", ["r"], ["y"], name="out_ident")
    inits = i1 + [_init("ratio", np.array(0.5, np.float32)), _init("training", np.array(False))]
    proto = _model([c1, ident, drop, act, out], inits)
    model = model_from_proto(proto)
    assert _ops(model) == ["Conv", "Relu"]
    assert [t.name for t in model.graph.outputs] == ["y"]
    assert model.node("relu").outputs[0].name == "y"
    assert "removed 1 Dropout node" in model.canonical_notes
    assert "removed 2 Identity nodes" in model.canonical_notes
    _assert_same_function(proto, model)


def test_dropout_in_training_mode_or_with_a_used_mask_stays():
    drop = helper.make_node("Dropout", ["x", "", "training"], ["d", "mask"], name="drop")
    cast = helper.make_node("Cast", ["mask"], ["m"], name="cast", to=TensorProto.FLOAT)
    add = helper.make_node("Add", ["d", "m"], ["y"], name="add")
    proto = _model([drop, cast, add], [_init("training", np.array(False))])
    assert "Dropout" in _ops(model_from_proto(proto))


def test_identity_from_graph_input_to_graph_output_stays():
    c1, i1 = _conv("c1", "x", "y", 4, 4, pads=(1, 1, 1, 1))
    ident = helper.make_node("Identity", ["x"], ["x_copy"], name="ident")
    proto = _model([c1, ident], i1, outputs=["y", "x_copy"])
    model = model_from_proto(proto)
    assert "Identity" in _ops(model)
    _assert_same_function(proto, model)


# -- 3. conv bias and BN as Mul / Add --------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (6, 1, 1), (1,), ()])
@pytest.mark.parametrize("op", ["Add", "Sub"])
@pytest.mark.parametrize("bias", [True, False])
def test_separate_bias_add_folds_into_the_conv(shape, op, bias):
    conv, inits = _conv("conv", "x", "c", 4, 6, pads=(1, 1, 1, 1), bias=bias)
    add = helper.make_node(op, ["c", "t"], ["y"], name="bias_add")
    proto = _model([conv, add], inits + [_init("t", _w(*shape))])
    model = model_from_proto(proto)
    assert _ops(model) == ["Conv"]
    assert model.graph.nodes[0].outputs[0].name == "y"
    _assert_same_function(proto, model)


def test_add_of_a_width_vector_is_not_a_bias():
    # Shape [C] broadcasts along W, not channels: it must stay an Add.
    conv, inits = _conv("conv", "x", "c", 4, 8, pads=(1, 1, 1, 1))
    add = helper.make_node("Add", ["c", "t"], ["y"], name="add")
    proto = _model([conv, add], inits + [_init("t", _w(8))])
    model = model_from_proto(proto)
    assert _ops(model) == ["Conv", "Add"]
    _assert_same_function(proto, model)


@pytest.mark.parametrize("group", [1, 4])
def test_batchnorm_as_mul_add_folds_into_weights_and_bias(group):
    conv, inits = _conv("conv", "x", "c", 4, 4, pads=(1, 1, 1, 1), group=group, bias=False)
    mul = helper.make_node("Mul", ["s", "c"], ["m"], name="bn_mul")
    add = helper.make_node("Add", ["m", "t"], ["b"], name="bn_add")
    act = helper.make_node("Relu", ["b"], ["y"], name="relu")
    scale = RNG.uniform(0.5, 2.0, (1, 4, 1, 1)).astype(np.float32)
    proto = _model([conv, mul, add, act], inits + [_init("s", scale), _init("t", _w(4, 1, 1))])
    model = model_from_proto(proto)
    assert _ops(model) == ["Conv", "Relu"]
    _assert_same_function(proto, model)


def test_shared_conv_output_is_not_folded():
    conv, inits = _conv("conv", "x", "c", 4, 4, pads=(1, 1, 1, 1))
    add = helper.make_node("Add", ["c", "t"], ["a"], name="add")
    mul = helper.make_node("Mul", ["c", "a"], ["y"], name="mul")
    proto = _model([conv, add, mul], inits + [_init("t", _w(1, 4, 1, 1))])
    model = model_from_proto(proto)
    assert _ops(model) == ["Conv", "Add", "Mul"]


@pytest.mark.parametrize("act", ["silu", "hardswish"])
def test_inverted_bottleneck_hidden_by_every_idiom_is_found(act):
    """expand 1x1 -> BN as Mul+Add -> act spelled out -> Identity -> zero Pad -> depthwise
    3x3 -> bias as a separate Add -> act -> Dropout -> project 1x1 -> residual Add."""
    nodes, inits = [], []

    def spelled(x: str, prefix: str) -> str:
        gate = "Sigmoid" if act == "silu" else "HardSigmoid"
        nodes.append(helper.make_node(gate, [x], [f"{prefix}.g"], name=f"{prefix}.gate"))
        nodes.append(helper.make_node("Mul", [x, f"{prefix}.g"], [f"{prefix}.o"],
                                      name=f"{prefix}.mul"))
        return f"{prefix}.o"

    expand, i = _conv("expand", "x", "e", 4, 12, k=1, bias=False)
    nodes.append(expand)
    inits += i + [_init("s", RNG.uniform(0.5, 1.5, (12, 1, 1)).astype(np.float32)),
                  _init("t", _w(1, 12, 1, 1)), _init("db", _w(12, 1, 1))]
    nodes.append(helper.make_node("Mul", ["e", "s"], ["em"], name="bn.mul"))
    nodes.append(helper.make_node("Add", ["em", "t"], ["ea"], name="bn.add"))
    a = spelled("ea", "act1")
    nodes.append(helper.make_node("Identity", [a], ["ai"], name="ident"))
    pad, i = _pad("pad", "ai", "ap", SPATIAL)
    dw, j = _conv("dw", "ap", "d", 12, 12, group=12, bias=False)
    nodes += [pad, dw, helper.make_node("Add", ["d", "db"], ["dd"], name="dw.bias")]
    inits += i + j
    b = spelled("dd", "act2")
    nodes.append(helper.make_node("Dropout", [b], ["bd"], name="drop"))
    project, i = _conv("project", "bd", "p", 12, 4, k=1)
    nodes += [project, helper.make_node("Add", ["x", "p"], ["y"], name="residual")]
    proto = _model(nodes, inits + i)
    model = model_from_proto(proto)
    blocks = [b for b in find_blocks(model) if b.kind == "inverted_bottleneck"]
    assert len(blocks) == 1
    assert (blocks[0].activation, blocks[0].residual, blocks[0].expansion) == (act, True, 3.0)
    assert len(FuseIBN().sites(model)) == 1
    _assert_same_function(proto, model)


# -- lenient loading -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["no_type", "no_shape"])
def test_graph_output_without_type_loads(kind):
    conv, inits = _conv("conv", "x", "c", 4, 4, pads=(1, 1, 1, 1))
    act = helper.make_node("Relu", ["c"], ["y"], name="relu")
    proto = _model([conv, act], inits)
    del proto.graph.output[:]
    if kind == "no_type":
        proto.graph.output.append(onnx.ValueInfoProto(name="y"))
    else:
        proto.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(proto)
    model = model_from_proto(proto)
    assert any("missing type" in n and "'y'" in n for n in model.canonical_notes)
    assert model.shapes["y"] == (1, 4, 8, 8)
    assert model.copy().canonical_notes == model.canonical_notes
    _assert_same_function(proto, model)


def test_graph_output_without_type_loads_when_shape_inference_fails(monkeypatch):
    conv, inits = _conv("conv", "x", "c", 4, 4, pads=(1, 1, 1, 1))
    act = helper.make_node("Relu", ["c"], ["y"], name="relu")
    proto = _model([conv, act], inits)
    del proto.graph.output[:]
    proto.graph.output.append(onnx.ValueInfoProto(name="y"))

    def fail(*args, **kwargs):
        raise RuntimeError("inference failed")

    import rewriter.graph_io as graph_io

    monkeypatch.setattr(graph_io.onnx.shape_inference, "infer_shapes", fail)
    model = model_from_proto(proto)
    monkeypatch.undo()
    assert any("inference failed for 'y'" in n for n in model.canonical_notes)
    assert model.shapes["y"] == (1, 4, 8, 8)
    _assert_same_function(proto, model)


# -- whole models ----------------------------------------------------------------------------
FIXTURES = [
    (fixtures.linear_conv_pair, {}),
    (fixtures.depthwise_multiplier, {}),
    (fixtures.grouped_conv, {}),
    (fixtures.residual_concat, {}),
    (fixtures.se_block, {}),
]
ZOO = [("mobilenetv2", {}), ("mobilenetv3", {}), ("ssdlite", {}), ("lraspp", {})]


@pytest.mark.parametrize("make,kwargs", FIXTURES, ids=[f[0].__name__ for f in FIXTURES])
def test_fixtures_keep_their_function(make, kwargs):
    _assert_same_function(make(**kwargs))


@pytest.mark.parametrize("static_padding", [False, True])
@pytest.mark.parametrize("name", [z[0] for z in ZOO])
def test_zoo_models_keep_their_function(name, static_padding):
    proto = zoo.build(name, width=0.5, resolution=64, static_padding=static_padding)
    model = model_from_proto(proto)
    if static_padding:
        assert "Pad" not in _ops(model)
        assert any("Pad nodes into Conv pads" in n for n in model.canonical_notes)
    else:
        assert model.canonical_notes == []
    _assert_same_function(proto, model)


def test_static_padding_zoo_model_writes_explicit_pads():
    proto = zoo.build("mobilenetv2", width=0.5, resolution=64, static_padding=True)
    pads = [n for n in proto.graph.node if n.op_type == "Pad"]
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    assert pads and all(n.name.endswith(".pad") for n in pads)
    kxk = [n for n in convs.values()
           if next(a.ints for a in n.attribute if a.name == "kernel_shape")[0] > 1]
    assert len(pads) == len(kxk)
    for conv in convs.values():
        assert not any(next(a.ints for a in conv.attribute if a.name == "pads"))
    assert zoo.build("mobilenetv2", width=0.5, resolution=64) == zoo.build(
        "mobilenetv2", width=0.5, resolution=64, static_padding=False)


@pytest.mark.parametrize("fold_bn", [False, True])
def test_static_padding_mobilenetv2_is_seen_like_the_normal_one(fold_bn):
    kwargs = dict(width=0.5, resolution=96, fold_bn=fold_bn)
    normal = model_from_proto(zoo.build("mobilenetv2", **kwargs))
    static_proto = zoo.build("mobilenetv2", static_padding=True, **kwargs)
    static = model_from_proto(static_proto)

    def ibns(model):
        return [b.nodes for b in find_blocks(model) if b.kind == "inverted_bottleneck"]

    assert len(ibns(normal)) == 17
    assert ibns(static) == ibns(normal)
    normal_sites = [s.id for s in FuseIBN().sites(normal)]
    assert [s.id for s in FuseIBN().sites(static)] == normal_sites
    if fold_bn:
        assert len(normal_sites) == 16  # every block but the first has an expansion conv
    reasons = [r for g in channel_groups(static) for r in g.frozen]
    assert not [r for r in reasons if "Pad" in r]
    assert [g.to_dict() for g in channel_groups(static)] == [
        g.to_dict() for g in channel_groups(normal)]
    _assert_same_function(static_proto, static)


# -- ConvTranspose, MatMul + Add, computed shapes, recurrent zero states ----------------------
def _same_at_batches(proto: onnx.ModelProto, model, batches=(1, 2, 5)) -> None:
    """The loaded model computes the original's function at every batch size (so the
    batch stayed symbolic)."""
    exported = model.to_onnx()
    for batch in batches:
        feeds = {name: np.random.default_rng(batch).standard_normal(
                     (batch, *shape[1:])).astype(np.float32)
                 for name, shape in model.concrete_input_shapes().items()}
        want = run_model(proto, feeds, optimize=False)
        got = run_model(exported, feeds, optimize=False)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_per_channel_op_after_conv_transpose_folds(op):
    w = _w(4, 3, 2, 2)  # [Cin, Cout, k, k]
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2]),
             helper.make_node(op, ["t", "s"], ["y"])]
    inits = [_init("w", w), _init("s", _w(1, 3, 1, 1) + 1.0)]
    proto = _model(nodes, inits)
    model = model_from_proto(proto)
    assert _ops(model) == ["ConvTranspose"]
    _assert_same_function(proto, model)


def test_conv_transpose_bias_add_then_batchnorm_folds_completely():
    """paddle2onnx's upsampling: ConvTranspose -> Add(bias) -> BatchNormalization; once
    the Add is in the bias, fold-bn takes the BN."""
    from rewriter.passes import get_pass
    from rewriter.rewrite import apply_pass

    c = 3
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2]),
             helper.make_node("Add", ["t", "b"], ["u"]),
             helper.make_node("BatchNormalization", ["u", "g", "be", "m", "v"], ["y"])]
    inits = [_init("w", _w(4, c, 2, 2)), _init("b", _w(1, c, 1, 1)),
             _init("g", _w(c) + 1), _init("be", _w(c)), _init("m", _w(c)),
             _init("v", np.abs(_w(c)) + 0.5)]
    proto = _model(nodes, inits)
    model = model_from_proto(proto)
    assert _ops(model) == ["ConvTranspose", "BatchNormalization"]
    _assert_same_function(proto, model)
    folded = apply_pass(model, get_pass("fold-bn")).model
    assert _ops(folded) == ["ConvTranspose"]
    _assert_same_function(proto, folded)


def test_grouped_conv_transpose_is_not_scaled_per_channel():
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], group=2),
             helper.make_node("Mul", ["t", "s"], ["y"])]
    proto = _model(nodes, [_init("w", _w(4, 2, 3, 3)), _init("s", _w(1, 4, 1, 1))])
    model = model_from_proto(proto)
    assert _ops(model) == ["ConvTranspose", "Mul"]
    _assert_same_function(proto, model)


@pytest.mark.parametrize("rank, time_major", [(2, False), (3, False), (3, True)])
def test_matmul_plus_bias_becomes_gemm(rank, time_major):
    """2-D: one Gemm. [N, T, K] (or time-major [T, N, K], as RNN outputs are): Gemm over
    the rows between two Reshapes, the batch still symbolic."""
    k, m = 6, 5
    shape = ["N", k] if rank == 2 else ["N", 7, k]
    nodes = [helper.make_node("MatMul", ["t" if time_major else "x", "w"], ["p"]),
             helper.make_node("Add", ["b", "p"], ["y"])]
    if time_major:
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]))
    proto = _graph_model(nodes, [_init("w", _w(k, m)), _init("b", _w(m))],
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = model_from_proto(proto)
    assert _ops(model) == (["Gemm"] if rank == 2 else ["Transpose"] * time_major
                           + ["Reshape", "Gemm", "Reshape"])
    assert any("into Gemm" in n for n in model.canonical_notes)
    _same_at_batches(proto, model)


def test_matmul_with_a_bias_that_is_not_a_row_vector_stays():
    k, m = 6, 5
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]),
             helper.make_node("Add", ["p", "b"], ["y"])]
    proto = _graph_model(nodes, [_init("w", _w(k, m)), _init("b", _w(3, m))],
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert _ops(model_from_proto(proto)) == ["MatMul", "Add"]


def _computed_reshape(proto_batch_source: str = "x") -> onnx.ModelProto:
    """y = Reshape(conv(x), [Shape(x)[0], C * H * W / 4, 4]): the exporters' idiom."""
    conv, inits = _conv("conv", "x", "c", 4, 6, pads=(1, 1, 1, 1))
    nodes = [conv,
             helper.make_node("Shape", [proto_batch_source], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Shape", ["c"], ["cs"]),
             helper.make_node("Slice", ["cs", "one", "four"], ["chw"]),
             helper.make_node("ReduceProd", ["chw"], ["prod"], keepdims=1),
             helper.make_node("Div", ["prod", "four_i"], ["q"]),
             helper.make_node("Concat", ["n1", "q", "four_i"], ["shape"], axis=0),
             helper.make_node("Reshape", ["c", "shape"], ["y"])]
    inits += [_init("zero", np.array(0, np.int64)), _init("axes", np.array([0], np.int64)),
              _init("one", np.array([1], np.int64)), _init("four", np.array([4], np.int64)),
              _init("four_i", np.array([4], np.int64))]
    return _graph_model(nodes, inits,
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], opset=13)


def test_computed_reshape_shape_becomes_constant_with_the_batch_symbolic():
    proto = _computed_reshape()
    model = model_from_proto(proto, {"x": (1, 4, 8, 8)})
    assert _ops(model) == ["Conv", "Reshape"]
    shape = model.graph.nodes[1].inputs[1].values.tolist()
    assert shape == [0, -1, 4]  # dim 0 copied from the data (any batch), 96 inferred
    assert any("computed Reshape/Expand shape" in n for n in model.canonical_notes)
    _same_at_batches(proto, model)


def test_computed_shape_stays_without_fixed_input_dims():
    proto = _computed_reshape()
    with pytest.raises(UnsupportedError, match="dynamic input dims"):
        _ = model_from_proto(proto).shapes  # H, W unknown: nothing to fold against
    model = model_from_proto(proto)
    assert "Shape" in _ops(model)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_zero_initial_state_of_a_recurrent_node_is_dropped(op):
    """torch exports an LSTM's zero h0 / c0 as ConstantOfShape([1, batch, hidden])."""
    t, n_in, hidden = 5, 3, 4
    gates = 4 if op == "LSTM" else 3
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["dirs", "n1", "hid"], ["state_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["state_shape"], ["h0"],
                              value=numpy_helper.from_array(np.zeros(1, np.float32)))]
    inputs = ["x", "W", "R", "B", "", "h0"] + (["h0"] if op == "LSTM" else [])
    nodes.append(helper.make_node(op, inputs, ["y"], hidden_size=hidden))
    inits = [_init("W", _w(1, gates * hidden, n_in)), _init("R", _w(1, gates * hidden, hidden)),
             _init("B", _w(1, 2 * gates * hidden)), _init("one", np.array(1, np.int64)),
             _init("axes", np.array([0], np.int64)), _init("dirs", np.array([1], np.int64)),
             _init("hid", np.array([hidden], np.int64))]
    proto = _graph_model(nodes, inits,
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [t, "N", n_in])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], opset=13)
    model = model_from_proto(proto)
    assert _ops(model) == [op]
    assert any("zero initial state" in n for n in model.canonical_notes)
    feeds_batches = (1, 3)
    exported = model.to_onnx()
    for batch in feeds_batches:
        x = np.random.default_rng(batch).standard_normal((t, batch, n_in)).astype(np.float32)
        want = run_model(proto, {"x": x}, optimize=False)["y"]
        np.testing.assert_allclose(run_model(exported, {"x": x}, optimize=False)["y"], want,
                                   rtol=1e-5, atol=1e-6)


def test_zero_state_terms_of_an_unrolled_cell_fold_away():
    """torch's unrolled RNN cell: h0 = zeros(batch, H) from the batch size, Gemm(h0, R, b)
    added to the input gates, and c0 * gate added to the new cell state. Both terms fold
    (b alone stays), the batch stays symbolic, and so does the function."""
    k, h = 6, 4
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "hid"], ["state_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["state_shape"], ["h0"],
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("Gemm", ["x", "W", "bw"], ["xg"], transB=1),
             helper.make_node("Gemm", ["h0", "R", "br"], ["hg"], transB=1),
             helper.make_node("Add", ["hg", "xg"], ["gates"]),
             helper.make_node("Sigmoid", ["gates"], ["f"]),
             helper.make_node("Mul", ["f", "h0"], ["kept"]),
             helper.make_node("Tanh", ["gates"], ["new"]),
             helper.make_node("Add", ["kept", "new"], ["y"])]
    inits = [_init("W", _w(h, k)), _init("bw", _w(h)), _init("R", _w(h, h)),
             _init("br", _w(h) + 1.0), _init("zero", np.array(0, np.int64)),
             _init("axes", np.array([0], np.int64)), _init("hid", np.array([h], np.int64))]
    proto = _graph_model(nodes, inits,
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         opset=13)
    model = model_from_proto(proto)
    ops = _ops(model)
    assert "ConstantOfShape" not in ops and "Shape" not in ops and "Mul" not in ops, ops
    assert ops.count("Gemm") == 1
    assert any("zero initial states" in n for n in model.canonical_notes)
    _same_at_batches(proto, model)


def test_a_zero_term_that_sets_the_broadcast_shape_stays():
    """Add(Mul(g, h0), y) with y of shape [1, H] and h0 [batch, H]: the zeros decide the
    output's batch, so the term stays."""
    h = 4
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "hid"], ["state_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["state_shape"], ["h0"]),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
             helper.make_node("Mul", ["m", "h0"], ["kept"]),
             helper.make_node("Add", ["kept", "m"], ["y"])]
    inits = [_init("zero", np.array(0, np.int64)), _init("axes", np.array([0], np.int64)),
             _init("hid", np.array([h], np.int64))]
    proto = _graph_model(nodes, inits,
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", h])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         opset=13)
    model = model_from_proto(proto)
    assert "ConstantOfShape" in _ops(model)
    _same_at_batches(proto, model)
