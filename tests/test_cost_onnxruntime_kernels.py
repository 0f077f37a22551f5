"""Kernels onnxruntime runs otherwise than their OpSpec says: ConvTranspose as GEMM +
col2im, nearest upsamplings that copy pixels (cost.onnxruntime_kernels), as cpu-ort
estimates them and as onnxruntime itself decides (its layout)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewriter.cost.estimate import Target
from rewriter.cost.kernels import decompose
from rewriter.cost.opspec import OpSpec
from rewriter.graph_io import Model
from tests.helpers import load


def _model(nodes, inits, x_shape, y_shape) -> Model:
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))], inits)
    return load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def _weight(name, shape):
    rng = np.random.default_rng(0)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)


def _conv_transpose(groups: int = 1) -> Model:
    """24 -> 16 channels, k2 s2, 20x20 -> 40x40, then a Relu onnxruntime runs on its own."""
    return _model([helper.make_node("ConvTranspose", ["x", "w"], ["t"], name="up",
                                    kernel_shape=[2, 2], strides=[2, 2], group=groups),
                   helper.make_node("Relu", ["t"], ["y"], name="up.relu")],
                  [_weight("w", (24, 16 // groups, 2, 2))], (1, 24, 20, 20), (1, 16, 40, 40))


@pytest.fixture(scope="module")
def cpu_ort() -> Target:
    return Target.load("cpu-ort")


@pytest.mark.parametrize("groups", [1, 4])
def test_conv_transpose_is_a_gemm_over_the_input_map_and_a_col2im(cpu_ort, groups):
    model = _conv_transpose(groups)
    (kernel,) = decompose(model)
    true_macs = 20 * 20 * 24 * (16 // groups) * 2 * 2  # each input pixel meets k*k taps
    assert kernel.spec.macs == 4 * true_macs  # the zero-inserted conv other targets price
    ops = {o.name: o for o in cpu_ort.estimate(model).ops}
    assert set(ops) == {"up", "up:col2im", "up.relu"}
    gemm = OpSpec("conv1x1" if groups == 1 else "groupconv", cin=24, cout=64, h_in=20, w_in=20,
                  h_out=20, w_out=20, groups=groups)
    assert gemm.macs == true_macs
    assert ops["up"].kind == gemm.kind and ops["up"].nodes == ("up", "up.relu")
    assert ops["up"].latency_ms == cpu_ort.kernel(gemm)[0]
    col2im = OpSpec("elementwise", cin=16, cout=16, h_in=40, w_in=40, h_out=40, w_out=40)
    assert ops["up:col2im"].latency_ms == cpu_ort.kernel(col2im)[0]
    assert ops["up.relu"].kind == "elementwise"  # onnxruntime fuses no activation into it
    # the zero-inserted conv over the output map would be priced far dearer
    assert cpu_ort.kernel(kernel.spec)[0] > ops["up"].latency_ms + ops["up:col2im"].latency_ms


def test_targets_without_onnxruntime_keep_the_conv_transpose_one_kernel():
    model = _conv_transpose()
    ops = Target.load("npu-p32").estimate(model).ops
    assert [o.name for o in ops] == ["up"] and ops[0].kind == "conv"


def _upsample(factor: int, coordinates: str, *, blocked: bool) -> Model:
    """Resize (nearest) by `factor`; behind and before a 1x1 conv when `blocked`, so that
    onnxruntime may run it in its blocked layout."""
    attrs = dict(mode="nearest", coordinate_transformation_mode=coordinates)
    if coordinates == "asymmetric":
        attrs["nearest_mode"] = "floor"
    scales = numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")
    size = 10 * factor
    if not blocked:
        return _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs",
                                        **attrs)], [scales], (1, 32, 10, 10),
                      (1, 32, size, size))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("Resize", ["a", "", "scales"], ["b"], name="rs", **attrs),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="c2")]
    return _model(nodes, [_weight("w1", (32, 16, 1, 1)), _weight("w2", (16, 32, 1, 1)), scales],
                  (1, 16, 10, 10), (1, 16, size, size))


@pytest.mark.parametrize("factor, coordinates, blocked, copies", [
    (2, "asymmetric", False, True),  # onnxruntime's own x2 kernel
    (4, "asymmetric", False, False),  # the general path from x3 up
    (2, "half_pixel", False, False),
    (2, "asymmetric", True, True),  # its blocked Upsample
    (4, "asymmetric", True, True),
    (2, "half_pixel", True, False),  # onnxruntime never blocks a half-pixel nearest Resize
])
def test_nearest_upsamplings_that_copy_pixels(cpu_ort, factor, coordinates, blocked, copies):
    from rewriter.cost.layout import onnxruntime_layout

    model = _upsample(factor, coordinates, blocked=blocked)
    left_plain = "rs" in onnxruntime_layout(model).unblocked
    assert left_plain == (not blocked or coordinates == "half_pixel")
    resize = next(k for k in decompose(model) if k.name == "rs").spec
    op = next(o for o in cpu_ort.estimate(model).ops if o.name == "rs")
    size = 10 * factor
    copy = OpSpec("elementwise", cin=32, cout=32, h_in=size, w_in=size, h_out=size,
                  w_out=size)
    if copies:
        assert op.kind == "elementwise" and op.latency_ms == cpu_ort.kernel(copy)[0]
    else:
        assert op.kind == "resize"
        assert op.latency_ms == cpu_ort.kernel(
            OpSpec(**{**resize.__dict__, "layout": "nchw" if left_plain else ""}))[0]
