"""One-op ONNX models: a single kernel to time, on any device.

`one_op_model` builds a one-kernel ONNX model (opset 13, float32, fixed shapes, seeded
random weights): the op, plus its fused activation when ``act`` is set. Conv kinds use
explicit pads giving exactly ``h_out x w_out``; "pool" is a MaxPool; "elementwise" is Add
(2 inputs), Sum (more), or the activation alone (1 input; Relu when ``act`` is empty);
"resize" is a Resize to the output size (kh = 1: nearest; 2: linear, half-pixel; 4: cubic),
an upsampling one behind a 1x1 helper conv that puts its input in onnxruntime's blocked
layout, as in a CNN; "concat" joins ``n_inputs`` inputs, the first with ``cin`` channels
and the rest sharing ``cout - cin`` equally; "reorder" is the conversion onnxruntime
inserts around a helper 1x1 conv (out of its blocked layout at the output for layout
"nchw", into it at the input otherwise), timed on that Reorder node alone. A resize with
layout "nchw" is built without the helper, so it runs unblocked.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rewriter.cost.measurements import MeasurementError
from rewriter.cost.opspec import (
    CONV_KINDS,
    RESIZE_TAPS,
    OpSpec,
)

OPSET = 13



LAYOUT_HELPER = "layout_helper"  # name prefix of nodes a one-op model adds only for layout
# Channels on the far side of a helper conv: past onnxruntime's blocking threshold.
_HELPER_CHANNELS = 16
_RESIZE_MODES = {taps: mode for mode, taps in RESIZE_TAPS.items()}  # a resize's kh -> mode


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        scale = 1.0 / math.sqrt(max(1, fan_in))
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def _activation(b: _Builder, act: str, x: str) -> str:
    if act == "relu":
        return b.node("Relu", [x], "act")
    if act == "relu6":
        lo = b.const("act_lo", np.array(0.0, np.float32))
        hi = b.const("act_hi", np.array(6.0, np.float32))
        return b.node("Clip", [x, lo, hi], "act")
    if act in ("sigmoid", "tanh"):
        return b.node(act.capitalize(), [x], "act")
    if act == "hardswish":  # HardSwish is opset 14: x * HardSigmoid(x, 1/6, 1/2)
        gate = b.node("HardSigmoid", [x], "act_gate", alpha=1.0 / 6.0, beta=0.5)
        return b.node("Mul", [x, gate], "act")
    if act == "silu":
        return b.node("Mul", [x, b.node("Sigmoid", [x], "act_gate")], "act")
    raise MeasurementError(f"activation {act!r} cannot be built "
                           "(relu, relu6, hardswish, sigmoid, silu, tanh)")


def _axis(size_in: int, size_out: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(stride, pad before, pad after) of one spatial axis: the spec's stride, or 1 on an
    axis that it fits only by padding more than a kernel per side (an anisotropic stride
    such as PP-OCR rec's (2, 1), of which the spec keeps the larger)."""
    fits = []
    for axis_stride in dict.fromkeys((stride, 1)):
        total = max(0, (size_out - 1) * axis_stride + kernel - size_in)
        if (size_in + total - kernel) // axis_stride + 1 == size_out:
            fits.append((axis_stride, total // 2, total - total // 2))
    if not fits:
        raise MeasurementError(f"no padding gives {size_in} -> {size_out} with kernel "
                               f"{kernel}, stride {stride}")
    # only fit by heavy padding: a transposed conv's spec, the conv over its zero-inserted
    # input, which pads that much by construction
    return next((f for f in fits if f[2] < kernel), fits[0])


def _window(spec: OpSpec) -> tuple[list[int], list[int]]:
    """ONNX strides and pads of a conv or pool spec."""
    sh, top, bottom = _axis(spec.h_in, spec.h_out, spec.kh, spec.stride)
    sw, left, right = _axis(spec.w_in, spec.w_out, spec.kw, spec.stride)
    return [sh, sw], [top, left, bottom, right]


def _helper_input(b: _Builder, spec: OpSpec) -> tuple[list[onnx.ValueInfoProto], str]:
    """A graph input of _HELPER_CHANNELS channels and a helper 1x1 conv (a LAYOUT_HELPER
    node) from it to `spec`'s input channels: onnxruntime runs the conv blocked, so what
    reads its output reads a blocked tensor, as in a CNN."""
    shape = [spec.n, _HELPER_CHANNELS, spec.h_in, spec.w_in]
    inputs = [helper.make_tensor_value_info("x0", TensorProto.FLOAT, shape)]
    w = b.weight("W", (spec.cin, _HELPER_CHANNELS, 1, 1), _HELPER_CHANNELS)
    return inputs, b.node("Conv", ["x0", w], f"{LAYOUT_HELPER}_conv")


def one_op_model(spec: OpSpec, seed: int = 0) -> onnx.ModelProto:
    """A model computing only `spec` (and its fused activation), with random weights."""
    b = _Builder(seed)
    shape = [spec.n, spec.cin, spec.h_in, spec.w_in]
    inputs = [helper.make_tensor_value_info("x0", TensorProto.FLOAT, shape)]
    act = spec.act
    k = spec.kind
    out_channels = spec.cout
    if k in CONV_KINDS:
        strides, pads = _window(spec)
        cin_g = spec.cin // spec.groups
        w = b.weight("W", (spec.cout, cin_g, spec.kh, spec.kw), cin_g * spec.kh * spec.kw)
        bias = b.weight("B", (spec.cout,), 1)
        y = b.node("Conv", ["x0", w, bias], "op", kernel_shape=[spec.kh, spec.kw],
                   strides=strides, pads=pads, group=spec.groups)
    elif k == "gemm":
        if spec.h_in * spec.w_in * spec.h_out * spec.w_out != 1:
            raise MeasurementError("gemm specs must have h_in = w_in = h_out = w_out = 1")
        inputs = [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [spec.n, spec.cin])]
        w = b.weight("W", (spec.cout, spec.cin), spec.cin)
        y = b.node("Gemm", ["x0", w, b.weight("B", (spec.cout,), 1)], "op", transB=1)
    elif k == "pool":
        strides, pads = _window(spec)
        y = b.node("MaxPool", ["x0"], "op", kernel_shape=[spec.kh, spec.kw], strides=strides,
                   pads=pads)
    elif k == "gap":
        y = b.node("GlobalAveragePool", ["x0"], "op")
    elif k == "resize":
        mode = _RESIZE_MODES.get(spec.kh)
        if mode is None:
            raise MeasurementError(f"resize: kh={spec.kh} is no interpolation's taps "
                                   f"({RESIZE_TAPS})")
        if (spec.layout == "nchw" or spec.h_out % spec.h_in or spec.w_out % spec.w_in
                or spec.h_out <= spec.h_in):
            sizes = b.const("sizes", np.array([spec.n, spec.cout, spec.h_out, spec.w_out],
                                              np.int64))
            y = b.node("Resize", ["x0", "", "", sizes], "op", mode=mode,
                       coordinate_transformation_mode="half_pixel")
        else:
            # In a CNN an upsampling Resize reads a conv's output, and onnxruntime runs a
            # linear one blocked (NCHWc Upsample), 2-5x faster than the NCHW Resize a lone
            # Resize gets. A 1x1 conv in front (16 channels in, past the blocking threshold)
            # puts it in that layout; time_model leaves the helper out.
            inputs, x = _helper_input(b, spec)
            scales = b.const("scales", np.array(
                [1, 1, spec.h_out // spec.h_in, spec.w_out // spec.w_in], np.float32))
            y = b.node("Resize", [x, "", scales], "op", mode=mode,
                       coordinate_transformation_mode="half_pixel")
    elif k == "reorder":
        # onnxruntime inserts the conversion itself, around a helper 1x1 conv that it runs
        # blocked: out of the blocked layout at the graph output (layout "nchw"), into it at
        # the graph input (layout ""); time_model times that one Reorder node.
        if spec.cin != spec.cout or (spec.h_in, spec.w_in) != (spec.h_out, spec.w_out):
            raise MeasurementError("reorder specs keep their shape: cin = cout, same map")
        if spec.layout == "nchw":
            inputs, y = _helper_input(b, spec)
        else:
            out_channels = _HELPER_CHANNELS
            w = b.weight("W", (out_channels, spec.cin, 1, 1), spec.cin)
            y = b.node("Conv", ["x0", w], f"{LAYOUT_HELPER}_conv")
    elif k == "elementwise":
        names = [f"x{i}" for i in range(spec.n_inputs)]
        inputs = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, shape) for nm in names]
        if spec.n_inputs == 1:
            y, act = _activation(b, act or "relu", "x0"), ""
        else:
            y = b.node("Add" if spec.n_inputs == 2 else "Sum", names, "op")
    else:  # concat
        rest = spec.cout - spec.cin
        if spec.n_inputs < 2 or rest <= 0 or rest % (spec.n_inputs - 1):
            raise MeasurementError(f"concat: cout - cin = {rest} cannot be split over "
                                   f"{spec.n_inputs - 1} more inputs")
        chans = [spec.cin] + [rest // (spec.n_inputs - 1)] * (spec.n_inputs - 1)
        inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT,
                                                [spec.n, c, spec.h_in, spec.w_in])
                  for i, c in enumerate(chans)]
        y = b.node("Concat", [v.name for v in inputs], "op", axis=1)
    if act:
        y = _activation(b, act, y)
    out_shape = [spec.n, out_channels] + ([] if k == "gemm" else [spec.h_out, spec.w_out])
    out = helper.make_tensor_value_info(y, TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(b.nodes, f"one_{k}", inputs, [out], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="rewriter.cost.measure")
    model.ir_version = 8
    return model


def relu_chain(length: int) -> onnx.ModelProto:
    """`length` Relus in a row on a 1x8x4x4 tensor: a model that is almost all overhead
    (what one inference costs besides its kernels, `measure.calibrate`; a kit's baselines)."""
    names = ["x", *(f"t{i}" for i in range(length))]
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in zip(names, names[1:])]
    graph = helper.make_graph(
        nodes, "relu_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, [1, 8, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # as one_op_model: older runtimes on a device load it too
    return model
