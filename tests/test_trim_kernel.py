"""trim-kernel: a conv's kernel taps that only ever read padding are dropped, exactly.

The oracle is independent of the pass's arithmetic: a tap is dead when giving it a large
weight leaves the conv's output (in onnxruntime, on an input without zeros) unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from rewriter.graph_query import conv_info
from rewriter.passes import CANONICAL_PASSES, get_pass
from rewriter.runtime import run_model
from tests.helpers import apply_and_verify, load


def single_conv(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                dilation: tuple[int, int], pads: tuple[int, int, int, int],
                channels: int = 3, depthwise: bool = False, seed: int = 0,
                weight: np.ndarray | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    cout = channels
    if weight is None:
        weight = rng.standard_normal(
            (cout, 1 if depthwise else channels, *kernel)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv",
                            kernel_shape=list(kernel), strides=list(stride),
                            dilations=list(dilation), pads=list(pads),
                            group=channels if depthwise else 1)
    graph = helper.make_graph(
        [node], "single_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"),
         numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _output(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_model(proto, {"x": x})["y"]


def dead_taps(proto: onnx.ModelProto, x: np.ndarray) -> tuple[set[int], set[int]]:
    """Kernel rows and columns whose every tap can be changed without changing the output."""
    weight = numpy_helper.to_array(proto.graph.initializer[0])
    reference = _output(proto, x)
    kh, kw = weight.shape[2:]
    dead = np.zeros((kh, kw), bool)
    for i in range(kh):
        for j in range(kw):
            changed = weight.copy()
            changed[:, :, i, j] += 100.0
            probe = onnx.ModelProto()
            probe.CopyFrom(proto)
            probe.graph.initializer[0].CopyFrom(numpy_helper.from_array(changed, "w"))
            dead[i, j] = np.array_equal(_output(probe, x), reference)
    return {i for i in range(kh) if dead[i].all()}, {j for j in range(kw) if dead[:, j].all()}


def _edge_run(dead: set[int], taps: range) -> int:
    run = 0
    for tap in taps:
        if tap not in dead:
            break
        run += 1
    return run


geometry = st.tuples(
    st.tuples(st.integers(1, 5), st.integers(1, 5)),  # input size
    st.tuples(st.integers(1, 5), st.integers(1, 5)),  # kernel
    st.tuples(st.integers(1, 3), st.integers(1, 3)),  # stride
    st.tuples(st.integers(1, 2), st.integers(1, 2)),  # dilation
    st.tuples(*[st.integers(0, 4)] * 4),  # pads
    st.booleans(),  # depthwise
)


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(geometry)
def test_trims_exactly_the_dead_edge_taps(case):
    size, kernel, stride, dilation, pads, depthwise = case
    for axis in (0, 1):  # the output must have at least one element
        span = (kernel[axis] - 1) * dilation[axis] + 1
        if size[axis] + pads[axis] + pads[axis + 2] < span:
            return
    proto = single_conv(size, kernel, stride, dilation, pads, depthwise=depthwise)
    x = np.random.default_rng(1).uniform(0.5, 1.5, (1, 3, *size)).astype(np.float32)
    dead_rows, dead_cols = dead_taps(proto, x)
    if len(dead_rows) == kernel[0]:  # every tap reads padding: the output is the bias,
        assert not get_pass("trim-kernel").sites(load(proto))  # not the pass's business
        return
    expected = []
    for axis, dead in ((0, dead_rows), (1, dead_cols)):
        k, d = kernel[axis], dilation[axis]
        # drop the dead runs at either end, as far as the pads allow
        expected += [min(_edge_run(dead, range(k)), pads[axis] // d),
                     min(_edge_run(dead, range(k - 1, -1, -1)), pads[axis + 2] // d)]
    model = load(proto)
    sites = get_pass("trim-kernel").sites(model)
    if not any(expected):
        assert not sites
        return
    assert len(sites) == 1
    result, report = apply_and_verify(model, "trim-kernel")
    assert report.passed, report.summary()
    info = conv_info(result.model.node("conv"))
    top, bottom, left, right = expected
    assert info.kernel == (kernel[0] - top - bottom, kernel[1] - left - right)
    trimmed = result.model.to_onnx()
    np.testing.assert_allclose(_output(trimmed, x), _output(proto, x), rtol=1e-5, atol=1e-5)


def test_depthwise_5x5_on_two_rows_becomes_3x5():
    """The case of PP-OCR's text-direction classifier: its last blocks' 5x5 depthwise convs
    run on 2-row maps, where the first and last kernel rows read only padding."""
    model = load(single_conv((2, 12), (5, 5), (1, 1), (1, 1), (2, 2, 2, 2), channels=4,
                             depthwise=True))
    result, report = apply_and_verify(model, "trim-kernel")
    assert report.passed and report.max_relative_error < 1e-6
    node = result.model.node("conv")
    assert conv_info(node).kernel == (3, 5)
    assert node.attrs["pads"] == [1, 2, 1, 2]
    assert node.attrs["kernel_shape"] == [3, 5]


def test_3x3_on_a_single_pixel_becomes_1x1():
    model = load(single_conv((1, 1), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), channels=6))
    result, report = apply_and_verify(model, "trim-kernel")
    assert report.passed
    node = result.model.node("conv")
    assert conv_info(node).kernel == (1, 1)
    assert node.attrs["pads"] == [0, 0, 0, 0]


def test_dilated_dead_tap_kept_where_dropping_it_needs_a_negative_pad():
    """Dilation 2, pad 1, one input row: tap 0 reads row -1 (dead) but dropping it would
    make the top pad 1 - 2 < 0; tap 2 reads row 1 (dead), bottom pad 1 - 2 < 0 too."""
    model = load(single_conv((1, 8), (3, 3), (1, 1), (2, 1), (1, 1, 1, 1)))
    assert not get_pass("trim-kernel").sites(model)


def test_large_maps_and_valid_padding_have_no_sites():
    for pads in ((1, 1, 1, 1), (0, 0, 0, 0)):
        model = load(single_conv((8, 8), (3, 3), (1, 1), (1, 1), pads))
        assert not get_pass("trim-kernel").sites(model)


def test_canonical_before_the_search():
    assert get_pass("trim-kernel").__class__ in CANONICAL_PASSES


@pytest.mark.parametrize("target", ["edge-tpu-zz", "npu-p32", "cpu-ort"])
def test_trimmed_conv_costs_less(target):
    from rewriter.cost.estimate import Target

    model = load(single_conv((2, 48), (5, 5), (1, 1), (1, 1), (2, 2, 2, 2), channels=64,
                             depthwise=True))
    result, _ = apply_and_verify(model, "trim-kernel")
    estimate = Target.load(target).estimate
    assert estimate(result.model).latency_ms < estimate(model).latency_ms


def test_optimize_starts_from_the_trimmed_kernels():
    """The exact search's result is trimmed, says so, and its gain counts the trim."""
    from rewriter import zoo
    from rewriter.search import optimize

    model = load(zoo.build("mobilenetv3", width=0.35, resolution=64))
    result = optimize(model, "npu-p32", passes=["dw-to-dense"])
    kernels = {n.name: conv_info(n).kernel for n in result.model.graph.nodes
               if n.op == "Conv"}
    assert kernels["features.10.dw.conv"] == (3, 3)
    assert any("features.10.dw.conv 5x5 -> 3x3" in note for note in result.notes)
    assert result.verification.passed
    assert result.after.latency_ms < result.before.latency_ms
