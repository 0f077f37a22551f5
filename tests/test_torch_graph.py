"""TorchGraph: the ONNX graph run by torch equals onnxruntime, and trained weights written
back into the same initializers give an ONNX model equal to the trained module."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from rewriter import zoo  # noqa: E402
from rewriter.errors import UnsupportedError  # noqa: E402
from rewriter.graph_io import Model, load_model, model_from_proto  # noqa: E402
from rewriter.passes import PASSES, get_pass  # noqa: E402
from rewriter.runtime import run_model  # noqa: E402
from rewriter.torch_graph import TorchGraph  # noqa: E402
from tests import fixture_models as fixtures  # noqa: E402

TOL = 1e-4  # of the output's largest magnitude


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _feeds(model: Model, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((batch, *shape[1:])).astype(np.float32)
            for name, shape in model.concrete_input_shapes().items()}


def _error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _assert_matches_onnxruntime(model: Model, net: "TorchGraph",
                                feeds: dict[str, np.ndarray], tol: float = TOL) -> None:
    expected = run_model(model.to_onnx(infer_shapes=False), feeds)
    with torch.no_grad():
        got = net(feeds)
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert got[name].shape == want.shape, name
        assert _error(got[name].numpy(), want) < tol, name


def _round_trip(model: Model) -> None:
    """forward == onnxruntime; perturbed parameters written back == perturbed module."""
    feeds = _feeds(model)
    net = TorchGraph(model)
    _assert_matches_onnxruntime(model, net, feeds)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in net.parameters():
            param.mul_(1 + 0.1 * torch.randn(param.shape, generator=generator))
    written = net.write_back(model)
    # the same graph: node list, op set and initializer names and shapes unchanged
    assert [(n.op, n.name) for n in written.graph.nodes] == [
        (n.op, n.name) for n in model.graph.nodes]
    assert {k: np.asarray(v.values).shape for k, v in written.graph.tensors().items()
            if hasattr(v, "values")} == {
        k: np.asarray(v.values).shape for k, v in model.graph.tensors().items()
        if hasattr(v, "values")}
    _assert_matches_onnxruntime(written, net, feeds)
    # and the perturbation did change the outputs (the check above is not vacuous)
    before = run_model(model.to_onnx(infer_shapes=False), feeds)
    after = run_model(written.to_onnx(infer_shapes=False), feeds)
    assert any(_error(after[k], before[k]) > 1e-3 for k in before)


@pytest.fixture(scope="module")
def mnv2() -> Model:
    return model_from_proto(zoo.build("mobilenetv2", width=0.5, resolution=64))


@pytest.fixture(scope="module")
def mnv2_folded() -> Model:
    return model_from_proto(zoo.build("mobilenetv2", width=0.5, resolution=64, fold_bn=True))


@pytest.mark.parametrize("name", zoo.NAMES)
def test_zoo_models_round_trip(name):
    _round_trip(model_from_proto(zoo.build(name, width=0.5, resolution=64)))


@pytest.mark.parametrize("pass_name", sorted(PASSES))
def test_every_pass_output_round_trips(pass_name, mnv2, mnv2_folded):
    if pass_name == "fuse-linear-conv":
        candidates = [model_from_proto(fixtures.linear_conv_pair())]
    elif pass_name == "trim-kernel":  # 5x5 depthwise convs on 2x2 maps
        candidates = [model_from_proto(zoo.build("mobilenetv3", width=0.35, resolution=64))]
    else:  # fuse-ibn needs BN folded; fold-bn needs it not folded
        candidates = [mnv2, mnv2_folded]
    rule = get_pass(pass_name)
    for model in candidates:
        sites = rule.sites(model)
        if sites:
            break
    else:
        pytest.fail(f"{pass_name} finds no site to test on")
    rewritten = rule.apply(model, sites[0])
    _round_trip(rewritten)


def test_weights_are_parameters_and_statistics_buffers(mnv2):
    net = TorchGraph(mnv2)
    names = set(net.onnx_parameters())
    convs = [n for n in mnv2.graph.nodes if n.op == "Conv"]
    for node in convs:
        assert node.inputs[1].name in names
    bns = [n for n in mnv2.graph.nodes if n.op == "BatchNormalization"]
    assert bns
    for node in bns:
        assert {node.inputs[1].name, node.inputs[2].name} <= names
        assert not {node.inputs[3].name, node.inputs[4].name} & names
    frozen = TorchGraph(mnv2, trainable=False)
    assert not list(frozen.parameters())
    # BatchNormalization stays in inference mode: train() and eval() compute the same
    feeds = _feeds(mnv2)
    with torch.no_grad():
        a = net.train()(feeds)["logits"]
        b = net.eval()(feeds)["logits"]
    assert torch.equal(a, b)


def test_forced_tensor_is_read_downstream_and_its_own_value_returned(mnv2):
    """Teacher forcing: nodes after a forced tensor read the given value; a tap of it
    still returns what the graph computed there."""
    feeds = _feeds(mnv2)
    net = TorchGraph(mnv2)
    convs = [n for n in mnv2.graph.nodes if n.op == "Conv"]
    name = convs[len(convs) // 2].inputs[0].name  # a tensor half-way through
    net.taps = [name]
    with torch.no_grad():
        plain = net(feeds)
        net.forced = {name: plain[name]}
        same = net(feeds)
        net.forced = {name: torch.zeros_like(plain[name])}
        zeroed = net(feeds)
        net.forced = {}
        other = net(_feeds(mnv2, seed=1))
        net.forced = {name: plain[name]}
        steered = net(_feeds(mnv2, seed=1))
    assert torch.equal(same["logits"], plain["logits"])
    assert not torch.allclose(zeroed["logits"], plain["logits"], atol=1e-3)
    assert torch.equal(zeroed[name], plain[name])  # the computed value, not the forced
    # other inputs with the first inputs' tensor forced: what follows reads the forced
    # value (residual branches still bring the new inputs' own)
    assert not torch.allclose(steered["logits"], other["logits"], atol=1e-3)
    assert torch.equal(steered[name], other[name])


def test_float64_reference_run(mnv2):
    feeds = _feeds(mnv2)
    net = TorchGraph(mnv2)
    with torch.no_grad():
        y32 = net(feeds)["logits"]
        y64 = net.to(dtype=torch.float64)(feeds)["logits"]
    assert y64.dtype == torch.float64 and y32.dtype == torch.float32
    assert _error(y32.double().numpy(), y64.numpy()) < 1e-5
    built64 = TorchGraph(mnv2, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(built64(feeds)["logits"], y64)
    # float64 weights written back are stored in the model's float32
    written = net.write_back(mnv2)
    weight = next(n for n in written.graph.nodes if n.op == "Conv").inputs[1]
    assert np.asarray(weight.values).dtype == np.float32


def test_unknown_op_is_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    values = helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 2])
    indices = helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 2])
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    graph = helper.make_graph([helper.make_node("TopK", ["x", "k"], ["values", "indices"])],
                              "g", [x], [values, indices], [k])
    model = model_from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    with pytest.raises(UnsupportedError, match="TopK"):
        TorchGraph(model)


# -- single ops against onnxruntime -------------------------------------------------------
def _single(op: str, shape: list[int], attrs: dict | None = None,
            consts: list[np.ndarray | None] | None = None, opset: int = 13,
            extra_inputs: int = 0) -> Model:
    """A one-node model: input "x" of `shape`, then constant inputs (None: omitted)."""
    names, inits = ["x"], []
    for i, value in enumerate(consts or []):
        if value is None:
            names.append("")
            continue
        inits.append(numpy_helper.from_array(np.asarray(value), f"c{i}"))
        names.append(f"c{i}")
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model_from_proto(proto)


rng = np.random.default_rng(1)
f32 = np.float32
CASES = {
    "conv_asym_pads": ("Conv", [2, 4, 9, 9], {"pads": [0, 1, 1, 2], "strides": [2, 2]},
                       [rng.standard_normal((6, 4, 3, 3)).astype(f32)]),
    "conv_same_upper": ("Conv", [2, 4, 10, 10], {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                        [rng.standard_normal((6, 4, 4, 4)).astype(f32)]),
    "conv_dilated_grouped": ("Conv", [1, 4, 12, 12],
                             {"dilations": [2, 2], "group": 2, "pads": [2, 2, 2, 2]},
                             [rng.standard_normal((4, 2, 3, 3)).astype(f32),
                              rng.standard_normal(4).astype(f32)]),
    "conv_transpose_pads": ("ConvTranspose", [1, 4, 5, 5],
                            {"strides": [2, 2], "pads": [1, 0, 0, 1],
                             "output_padding": [1, 1]},
                            [rng.standard_normal((4, 3, 3, 3)).astype(f32),
                             rng.standard_normal(3).astype(f32)]),
    "gemm_trans": ("Gemm", [5, 3], {"transA": 1, "alpha": 0.5, "beta": 2.0},
                   [rng.standard_normal((5, 4)).astype(f32), rng.standard_normal(4).astype(f32)]),
    "prelu": ("PRelu", [2, 3, 4, 4], None, [rng.standard_normal((3, 1, 1)).astype(f32)]),
    "leaky": ("LeakyRelu", [2, 3, 4], {"alpha": 0.2}, None),
    "hardsigmoid": ("HardSigmoid", [2, 3, 4], {"alpha": 0.3, "beta": 0.4}, None),
    "hardswish": ("HardSwish", [2, 3, 4], None, None, 14),
    "clip_inputs": ("Clip", [2, 3, 4], None, [np.array(-0.5, f32), np.array(0.7, f32)]),
    "clip_max_only": ("Clip", [2, 3, 4], None, [None, np.array(0.7, f32)]),
    "maxpool_pads": ("MaxPool", [1, 2, 7, 7],
                     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 1, 0]}, None),
    "avgpool_pads": ("AveragePool", [1, 2, 7, 7],
                     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, None),
    "avgpool_include": ("AveragePool", [1, 2, 7, 7],
                        {"kernel_shape": [3, 3], "pads": [1, 0, 1, 2],
                         "count_include_pad": 1}, None),
    "reduce_mean": ("ReduceMean", [2, 3, 4, 5], {"axes": [1, -1], "keepdims": 0}, None),
    "softmax": ("Softmax", [2, 3, 4], {"axis": 1}, None),
    "softmax11": ("Softmax", [2, 3, 4], {"axis": 1}, None, 11),
    "slice_neg_step": ("Slice", [2, 6, 5], None,
                       [np.array([-1, 4], np.int64), np.array([-100, 0], np.int64),
                        np.array([1, 2], np.int64), np.array([-2, -1], np.int64)]),
    "pad_reflect": ("Pad", [1, 2, 5, 5], {"mode": "reflect"},
                    [np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)]),
    "pad_constant": ("Pad", [1, 2, 5, 5], None,
                     [np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64), np.array(0.5, f32)]),
    "flatten": ("Flatten", [2, 3, 4, 5], {"axis": 2}, None),
    "transpose": ("Transpose", [2, 3, 4], {"perm": [2, 0, 1]}, None),
    "unsqueeze": ("Unsqueeze", [2, 3], None, [np.array([0, -1], np.int64)]),
    "squeeze": ("Squeeze", [2, 1, 3, 1], None, [np.array([1, 3], np.int64)]),
    "reshape": ("Reshape", [2, 3, 4], None, [np.array([0, -1], np.int64)]),
    "pow": ("Pow", [2, 3], None, [np.array(2.0, f32)]),
    "layernorm": ("LayerNormalization", [2, 3, 8], {"axis": -1, "epsilon": 1e-5},
                  [rng.standard_normal(8).astype(f32), rng.standard_normal(8).astype(f32)], 17),
    "resize_nearest_floor": ("Resize", [1, 2, 3, 5],
                             {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                              "nearest_mode": "floor"},
                             [None, np.array([1, 1, 2, 3], f32)]),
    "resize_nearest_half_pixel_down": ("Resize", [1, 2, 9, 7], {"mode": "nearest"},
                                       [None, None, np.array([1, 2, 4, 3], np.int64)]),
    "resize_linear_half_pixel": ("Resize", [1, 2, 4, 5], {"mode": "linear"},
                                 [None, np.array([1, 1, 2.0, 1.5], f32)]),
    "resize_linear_align_corners": ("Resize", [1, 2, 4, 5],
                                    {"mode": "linear",
                                     "coordinate_transformation_mode": "align_corners"},
                                    [None, None, np.array([1, 2, 7, 9], np.int64)]),
    "resize_linear_asymmetric": ("Resize", [1, 2, 4, 5],
                                 {"mode": "linear",
                                  "coordinate_transformation_mode": "asymmetric"},
                                 [None, np.array([1, 1, 2.0, 2.0], f32)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_op_matches_onnxruntime(case):
    op, shape, attrs, consts, *rest = CASES[case]
    model = _single(op, shape, attrs, consts, *rest)
    feeds = {"x": np.random.default_rng(2).standard_normal(shape).astype(np.float32)}
    _assert_matches_onnxruntime(model, TorchGraph(model), feeds, tol=1e-5)


# -- real models ------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("key,shape", [("cls", (1, 3, 48, 192)), ("det", (1, 3, 64, 64)),
                                       ("rec", (1, 3, 48, 192))])
def test_paddleocr_models_round_trip(real_models, key, shape):
    from rewriter.samples import rapidocr_models, text_image

    # real_models has the wheel cached; rec is read from it beside cls and det
    model = load_model(rapidocr_models((key,))[key], {"x": shape})
    # text-like input: on noise the detector's output saturates and proves nothing
    feeds = {"x": text_image(shape[2], shape[3], seed=0)}
    net = TorchGraph(model)
    _assert_matches_onnxruntime(model, net, feeds, tol=1e-3)
    written = net.write_back(model)
    _assert_matches_onnxruntime(written, net, feeds, tol=1e-3)
