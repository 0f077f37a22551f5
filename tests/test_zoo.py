"""The model zoo: valid, runnable, deterministic models with a healthy, input-dependent
output scale, the structure each architecture promises, and the fixtures for the passes."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from rewriter import zoo
from tests import fixture_models as fixtures

SMALL = dict(width=0.35, resolution=64)
# (name, build kwargs): every model small at opset 13, plus other opsets and widths.
CASES = [(name, dict(SMALL)) for name in zoo.NAMES] + [
    ("mobilenetv2", dict(width=0.5, resolution=96, opset=11)),
    ("mobilenetv3", dict(width=0.5, resolution=64, opset=17)),
    ("lraspp", dict(width=0.5, resolution=96, opset=17)),
    ("ssdlite", dict(width=0.5, resolution=64, opset=11)),
    ("mobilenetv3", dict(width=0.35, resolution=64, opset=21)),
]
CASE_IDS = [f"{name}-w{kw['width']}-r{kw['resolution']}-op{kw.get('opset', 13)}"
            for name, kw in CASES]

# torchvision MobileNetV2: (expansion t, channels c, repeats n, first stride s)
MNV2_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]


def divisible(v: float, d: int = 8) -> int:
    """torchvision's _make_divisible, written out again for an independent check."""
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


@functools.lru_cache(maxsize=None)
def _cached(name: str, items: tuple) -> bytes:
    return zoo.build(name, **dict(items)).SerializeToString()


def build(name: str, **kw) -> onnx.ModelProto:
    """zoo.build, cached across tests (each caller gets its own copy)."""
    return onnx.load_from_string(_cached(name, tuple(sorted(kw.items()))))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, batch: int = 2, seed: int = 1) -> dict[str, np.ndarray]:
    sess = session(model)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [batch, *inp.shape[1:]]
        feeds[inp.name] = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def assert_healthy(outputs: dict[str, np.ndarray]) -> None:
    """Finite, std in [0.05, 100], and depending on the input: the two samples of the
    batch differ by at least 2% of the output's scale."""
    for name, value in outputs.items():
        assert np.all(np.isfinite(value)), name
        std = float(value.std())
        assert 0.05 < std < 100, (name, std)
        assert float((value[0] - value[1]).std()) > 0.02 * std, f"{name} ignores its input"


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def params(model: onnx.ModelProto) -> int:
    """Every initializer that is not a scalar constant (Clip bounds) is a parameter."""
    return sum(v.size for v in initializers(model).values() if v.size > 1)


def dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# -- argument checking -------------------------------------------------------------------
def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError) as info:
        zoo.build("resnet50")
    assert all(name in str(info.value) for name in zoo.NAMES)


@pytest.mark.parametrize("kwargs", [
    dict(width=0), dict(width=-1.0), dict(width=float("nan")), dict(width=100.0),
    dict(width="1"), dict(resolution=16), dict(resolution=64.0), dict(resolution=True),
    dict(opset=10), dict(opset=22), dict(batch=0), dict(batch="2N"), dict(num_classes=0),
    dict(seed=-1),
])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        zoo.build("mobilenetv2", **{"resolution": 64, **kwargs})


def test_lraspp_needs_resolution_divisible_by_32():
    with pytest.raises(ValueError, match="32"):
        zoo.build("lraspp", width=0.35, resolution=80)


# -- every model -------------------------------------------------------------------------
@pytest.mark.parametrize("name, kw", CASES, ids=CASE_IDS)
def test_valid_runnable_and_healthy(name, kw):
    model = build(name, **kw)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == kw.get("opset", 13)
    outputs = run(model, batch=2)
    assert_healthy(outputs)
    for out in model.graph.output:
        assert dims(out)[0] == "N" and list(outputs[out.name].shape) == [2, *dims(out)[1:]]


@pytest.mark.parametrize("name", zoo.NAMES)
def test_numpy_reference_matches_onnxruntime(name):
    """The builder's own numpy forward pass (used to set the BN statistics) computes what
    onnxruntime computes: the graph means what the builder meant."""
    model, builder = zoo.build_with_probe(name, **SMALL)
    sess = session(model)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, builder.probe_inputs)))
    for out, reference in builder.probe_outputs.items():
        scale = float(reference.std())
        assert np.abs(got[out] - reference).max() <= 1e-3 * scale, out


@pytest.mark.parametrize("name", zoo.NAMES)
def test_graph_conventions(name):
    model = build(name, **SMALL)
    graph = model.graph
    assert [i.name for i in graph.input] == ["input"]
    assert dims(graph.input[0]) == ["N", 3, 64, 64]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "Constant" not in op_types(model)
    assert "Reshape" not in op_types(model)  # symbolic batch: Flatten(axis=1), never Reshape
    names = [n.name for n in graph.node]
    assert all(names) and len(set(names)) == len(names)
    known = {"", *initializers(model), *(i.name for i in graph.input)}
    for node in graph.node:
        assert all(t in known for t in node.input), node.name
        known.update(node.output)
        if node.op_type == "Clip":  # opset >= 11: bounds are initializer inputs
            assert len(node.input) == 3 and all(t in initializers(model) for t in node.input[1:])
        if node.op_type in ("Conv", "Gemm"):
            assert all(t in initializers(model) for t in node.input[1:]), node.name
    assert all(o.name in known for o in graph.output)


def test_node_names_follow_torchvision_modules():
    names = {n.name for n in build("mobilenetv2", **SMALL).graph.node}
    assert {"features.0.conv", "features.0.bn", "features.0.act", "features.3.expand.conv",
            "features.3.expand.bn", "features.3.expand.act", "features.3.dw.conv",
            "features.3.project.conv", "features.3.project.bn", "features.3.add",
            "features.18.conv", "pool", "flatten", "classifier.gemm"} <= names
    assert "features.1.expand.conv" not in names  # t == 1: no expansion
    assert "features.2.add" not in names  # stride 2


@pytest.mark.parametrize("name", zoo.NAMES)
def test_deterministic(name):
    first = zoo.build(name, **SMALL, seed=3).SerializeToString()
    assert zoo.build(name, **SMALL, seed=3).SerializeToString() == first
    a = initializers(zoo.build(name, **SMALL, seed=3))
    b = initializers(zoo.build(name, **SMALL, seed=4))
    assert a.keys() == b.keys()
    weights = [k for k in a if k.endswith(".weight")]
    assert weights and all(not np.array_equal(a[k], b[k]) for k in weights)


@pytest.mark.parametrize("batch, expected", [("N", "N"), ("batch", "batch"), (3, 3)])
def test_batch_dim(batch, expected):
    model = zoo.build("ssdlite", **SMALL, batch=batch)
    onnx.checker.check_model(model, full_check=True)
    assert dims(model.graph.input[0])[0] == expected
    assert all(dims(o)[0] == expected for o in model.graph.output)
    if batch == 3:
        assert all(v.shape[0] == 3 for v in run(model, batch=3).values())


# -- BatchNormalization defaults and folding ---------------------------------------------
@pytest.mark.parametrize("name, unfolded_by_default", [
    ("mobilenetv2", True), ("ssdlite", True), ("mobilenetv3", False), ("lraspp", False)])
def test_batchnorm_defaults(name, unfolded_by_default):
    default = op_types(build(name, **SMALL))
    assert ("BatchNormalization" in default) == unfolded_by_default
    override = op_types(zoo.build(name, **SMALL, fold_bn=unfolded_by_default))
    assert ("BatchNormalization" in override) != unfolded_by_default


@pytest.mark.parametrize("name", ["mobilenetv2", "mobilenetv3"])
def test_folded_and_unfolded_compute_the_same_function(name):
    unfolded = zoo.build(name, **SMALL, fold_bn=False)
    folded = zoo.build(name, **SMALL, fold_bn=True)
    bn = sum(op == "BatchNormalization" for op in op_types(unfolded))
    assert bn > 0 and "BatchNormalization" not in op_types(folded)
    assert len(folded.graph.node) == len(unfolded.graph.node) - bn
    a, b = run(unfolded), run(folded)
    for out, value in a.items():
        err = float(np.abs(value - b[out]).max())
        assert err < 1e-4 * float(value.std()), (out, err)


def test_unfolded_convs_have_no_bias_and_bn_has_running_statistics():
    model = build("mobilenetv2", **SMALL)
    inits = initializers(model)
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert len(node.input) == 2, node.name
        if node.op_type == "BatchNormalization":
            scale, bias, mean, var = (inits[t] for t in node.input[1:])
            assert np.all((scale >= 0.5) & (scale <= 1.0)) and np.all(var > 0)
            eps = next(a.f for a in node.attribute if a.name == "epsilon")
            assert eps == pytest.approx(1e-5)


# -- architecture details ----------------------------------------------------------------
def mobilenetv2_params(width: float, num_classes: int = 1000) -> int:
    """From the block table: conv weights (no bias), 4 values per BN channel, the Gemm."""
    bn = 4
    cin = divisible(32 * width)
    total = 3 * cin * 9 + bn * cin
    for t, c, n, _ in MNV2_TABLE:
        cout = divisible(c * width)
        for _ in range(n):
            hidden = cin * t
            if t != 1:
                total += cin * hidden + bn * hidden
            total += hidden * 9 + bn * hidden + hidden * cout + bn * cout
            cin = cout
    last = divisible(1280 * max(1.0, width))
    return total + cin * last + bn * last + last * num_classes + num_classes


@pytest.mark.parametrize("width", [0.35, 0.5, 1.0])
def test_mobilenetv2_parameter_count(width):
    assert params(build("mobilenetv2", width=width, resolution=64)) == mobilenetv2_params(width)


def test_mobilenetv2_matches_torchvision_parameter_count():
    # torchvision's mobilenet_v2() has 3,504,872 parameters; the ONNX graph also stores
    # BN running mean and var (2 x 17,056 values).
    assert mobilenetv2_params(1.0) == 3_504_872 + 2 * 17_056
    assert params(build("mobilenetv2", width=1.0, resolution=64)) == 3_538_984


def test_mobilenetv2_structure():
    model = build("mobilenetv2", **SMALL)
    ops = op_types(model)
    assert ops.count("Add") == 10  # residual blocks: 1 + 2 + 3 + 2 + 2
    assert ops[-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    depthwise = [n for n in convs if n.name.endswith("dw.conv")]
    assert len(depthwise) == 17 and len(convs) == 1 + 16 * 3 + 2 + 1
    for node in depthwise:
        group = next(a.i for a in node.attribute if a.name == "group")
        assert initializers(model)[node.input[1]].shape == (group, 1, 3, 3)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert next(a.i for a in gemm.attribute if a.name == "transB") == 1
    assert dims(model.graph.output[0]) == ["N", 1000]


@pytest.mark.parametrize("opset, hardswish_op", [(13, False), (14, True)])
def test_mobilenetv3_structure(opset, hardswish_op):
    model = zoo.build("mobilenetv3", width=1.0, resolution=64, opset=opset, num_classes=10)
    ops = op_types(model)
    assert ("HardSwish" in ops) == hardswish_op
    assert ops.count("HardSigmoid") == 9 + (0 if hardswish_op else ops.count("Mul") - 9)
    inits = initializers(model)
    names = {n.name for n in model.graph.node}
    assert "features.1.expand.conv" not in names  # exp == in
    assert "features.1.se.mul" in names and "features.2.se.mul" not in names
    se = inits["features.4.se.fc1.weight"]
    assert se.shape == (divisible(96 // 4), 96, 1, 1)
    assert inits["features.4.dw.conv.weight"].shape == (96, 1, 5, 5)
    assert inits["features.12.conv.weight"].shape == (576, 96, 1, 1)
    assert inits["classifier.0.gemm.weight"].shape == (1024, 576)
    assert dims(model.graph.output[0]) == ["N", 10]
    assert sum(n.endswith(".add") and "act" not in n for n in names) == 6


def test_ssdlite_outputs():
    model = build("ssdlite", **SMALL)
    assert [o.name for o in model.graph.output] == ["boxes_0", "scores_0", "boxes_1",
                                                    "scores_1"]
    shapes = {o.name: dims(o) for o in model.graph.output}
    assert shapes["boxes_0"] == ["N", 24, 4, 4] and shapes["scores_0"] == ["N", 126, 4, 4]
    assert shapes["boxes_1"] == ["N", 24, 2, 2] and shapes["scores_1"] == ["N", 126, 2, 2]
    inits = initializers(model)
    assert inits["head.box.0.dw.conv.weight"].shape == (divisible(96 * 0.35), 1, 3, 3)
    assert inits["head.cls.1.pred.weight"].shape == (126, divisible(640 * 0.35), 1, 1)
    assert "BatchNormalization" in op_types(model)


@pytest.mark.parametrize("opset", [11, 13])
def test_lraspp_structure(opset):
    model = zoo.build("lraspp", width=0.5, resolution=64, opset=opset)
    ops = op_types(model)
    assert {"Resize", "Concat", "Mul", "Sigmoid", "GlobalAveragePool"} <= set(ops)
    assert dims(model.graph.output[0]) == ["N", 21, 64, 64]
    inits = initializers(model)
    for node in (n for n in model.graph.node if n.op_type == "Resize"):
        roi, scales = node.input[1], node.input[2]
        assert (roi == "") == (opset >= 13)
        assert inits[scales].tolist() in ([1, 1, 4, 4], [1, 1, 8, 8])
        attrs = {a.name: a.s.decode() for a in node.attribute}
        assert attrs == {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    assert concat.input[0] == "head.up" and concat.input[1] == "head.low.act"


def test_lraspp_opset_11_runs():
    assert_healthy(run(zoo.build("lraspp", width=0.35, resolution=64, opset=11)))


def test_make_divisible():
    assert [zoo.make_divisible(v) for v in (32 * 0.35, 16 * 0.5, 1280 * 1.0, 96 * 0.35,
                                            24 * 0.75, 3.0)] == [16, 8, 1280, 32, 24, 8]


# -- fixtures ----------------------------------------------------------------------------
FIXTURES = [
    ("linear_conv_pair", fixtures.linear_conv_pair, {}),
    ("linear_conv_pair-dw-s2", fixtures.linear_conv_pair,
     dict(kernel=5, pads=2, stride=2, depthwise2=True)),
    ("linear_conv_pair-nobias", fixtures.linear_conv_pair, dict(bias1=False, bias2=False)),
    ("depthwise_multiplier", fixtures.depthwise_multiplier, dict(multiplier=3)),
    ("grouped_conv", fixtures.grouped_conv, {}),
    ("residual_concat", fixtures.residual_concat, {}),
    ("residual_concat-nogate", fixtures.residual_concat, dict(sigmoid_gate=False)),
    ("se_block", fixtures.se_block, {}),
]


@pytest.mark.parametrize("make, kwargs", [f[1:] for f in FIXTURES], ids=[f[0] for f in FIXTURES])
def test_fixture_valid_and_healthy(make, kwargs):
    model = make(**kwargs)
    onnx.checker.check_model(model, full_check=True)
    assert dims(model.graph.input[0])[0] == "N"
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names)
    assert make(**kwargs).SerializeToString() == model.SerializeToString()
    assert_healthy(run(model))


def conv_nodes(model: onnx.ModelProto) -> dict[str, tuple[onnx.NodeProto, np.ndarray, int]]:
    inits = initializers(model)
    return {n.name: (n, inits[n.input[1]], next(a.i for a in n.attribute if a.name == "group"))
            for n in model.graph.node if n.op_type == "Conv"}


@pytest.mark.parametrize("depthwise2", [False, True])
def test_linear_conv_pair_structure(depthwise2):
    model = fixtures.linear_conv_pair(kernel=3, pads=1, depthwise2=depthwise2)
    convs = conv_nodes(model)
    first, w1, _ = convs["conv1x1"]
    second, w2, group = convs["conv_kxk"]
    assert second.input[0] == first.output[0] and w1.shape == (12, 8, 1, 1)
    assert np.abs(initializers(model)[first.input[2]]).mean() > 0.1  # a real bias
    assert w2.shape == ((12, 1, 3, 3) if depthwise2 else (10, 12, 3, 3))
    assert group == (12 if depthwise2 else 1)
    assert op_types(model) == ["Conv", "Conv", "Relu"]


@pytest.mark.parametrize("multiplier", [1, 2, 3])
def test_depthwise_multiplier_structure(multiplier):
    _, weight, group = conv_nodes(fixtures.depthwise_multiplier(multiplier=multiplier))["dw.conv"]
    assert group == 8 and weight.shape == (8 * multiplier, 1, 3, 3)


def test_grouped_conv_structure():
    _, weight, group = conv_nodes(fixtures.grouped_conv(cin=16, cout=24, groups=4))[
        "grouped.conv"]
    assert group == 4 and weight.shape == (24, 4, 3, 3)


def test_residual_concat_structure():
    model = fixtures.residual_concat(channels=20)
    nodes = {n.name: n for n in model.graph.node}
    assert nodes["residual.add"].input[:] == ["stem.act", "branch_a.act"]
    assert nodes["concat"].input[:] == ["dw.act", "branch_b.gate.mul"]
    assert conv_nodes(model)["mix.conv"][1].shape == (8, 32, 1, 1)
    assert "BatchNormalization" in op_types(model) and "Sigmoid" in op_types(model)
    assert dims(model.graph.output[0]) == ["N", 10]


def test_se_block_spells_hardswish_like_paddle():
    ops = op_types(fixtures.se_block())
    assert "HardSwish" not in ops
    assert ops[:6] == ["Conv", "Add", "Clip", "Div", "Mul", "Conv"]
    assert ops.count("HardSigmoid") == 1 and ops.count("GlobalAveragePool") == 1
