"""Measure single ops in onnxruntime and store the timings as CSV.

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

`measure_specs` times each model on the CPUExecutionProvider (``intra_op_num_threads`` =
threads, 0 meaning onnxruntime's default, ``inter_op_num_threads`` = 1, default graph
optimisation): `warmup` runs, then the median of `repeats` runs, in milliseconds, of the
op's own kernel time as onnxruntime's profiler reports it. Wall time of a one-op model
would be wrong for estimating whole models: onnxruntime runs a whole CNN in its blocked
NCHWc layout, converting once at the input and once at the output, but a one-op model pays
both conversions (ReorderInput/ReorderOutput) around its single op, which inflated sums
over a model's kernels by 1.4-1.7x. The profiler's per-node times exclude those reorders;
the per-kernel dispatch cost that a whole model does pay is the profile's `overhead_s`.

CSV columns, in this order (`write_csv`)::

    kind, n, cin, cout, h_in, w_in, h_out, w_out, kh, kw, stride, groups, act, n_inputs,
    dtype_bytes, layout               the OpSpec fields
    latency_ms                        median latency of one run, ms (> 0)
    device, threads, repeats          metadata: where and how it was measured

``rewriter cost measure -n 3000 --seed 0 --threads 1 -o FILE.csv`` samples, times and
writes a measurement set; ``--space wide|oblong|stem|layout ... --append`` adds rows from
other corners of the op space (the bundled cost/data/cpu-ort.csv was made this way, see
its profile).

`read_csv` needs only kind, n, cin, cout, h_in, w_in, h_out, w_out, kh, kw, stride, groups
and latency_ms (a CSV measured elsewhere); the other columns default to act "",
n_inputs 1, dtype_bytes 4, layout "", device "", threads 0, repeats 0, and unknown columns are
ignored. A malformed file raises `MeasurementError` naming the file, the row (counted as
lines, the header being row 1) and the column.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from rewriter.cost.opspec import (
    CONV_KINDS,
    INT_FIELDS,
    KINDS,
    RESIZE_TAPS,
    SPEC_FIELDS,
    OpSpec,
    ceil_div,
)
from rewriter.runtime import session

OPSET = 13
META_COLUMNS = ("latency_ms", "device", "threads", "repeats")
COLUMNS = (*SPEC_FIELDS, *META_COLUMNS)
REQUIRED_COLUMNS = (*SPEC_FIELDS[:12], "latency_ms")
_DEFAULTS = {"act": "", "n_inputs": "1", "dtype_bytes": "4", "layout": "", "device": "",
             "threads": "0", "repeats": "0"}


class MeasurementError(ValueError):
    """A measurement file or spec cannot be used; the message is one line."""


@dataclass(frozen=True)
class Measurement:
    spec: OpSpec
    latency_ms: float
    device: str = ""
    threads: int = 0
    repeats: int = 0


# ----------------------------------------------------------------------------- models

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


# ----------------------------------------------------------------------------- sampling

def _channels(rng: np.random.Generator, p: int, lo: int = 8, hi: int = 512) -> int:
    """Channel counts: multiples of P, P +- 1, and arbitrary values in [lo, hi]."""
    r = rng.random()
    if r < 0.4:
        c = int(rng.integers(1, hi // p + 1)) * p
    elif r < 0.6:
        c = int(rng.integers(1, hi // p + 1)) * p + int(rng.choice([-1, 1]))
    else:
        c = int(rng.integers(lo, hi + 1))
    return min(hi, max(lo, c))


_KIND_WEIGHTS = {"conv": 0.22, "conv1x1": 0.2, "dwconv": 0.2, "groupconv": 0.08, "gemm": 0.05,
                 "pool": 0.06, "gap": 0.04, "elementwise": 0.09, "resize": 0.03, "concat": 0.03}
_ACTS = ("", "", "relu", "relu6", "hardswish", "sigmoid", "silu")
MAX_MACS = 250_000_000
MAX_ELEMENTS = 3_300_000


def _sampled_conv(rng: np.random.Generator, kind: str, cin: int, cout: int, size: int,
                  kernel: int, stride: int, act: str) -> OpSpec:
    """A conv of `kind`: depthwise with multiplier 1 or 2, grouped with 2, 4 or 8 groups."""
    groups = 1
    if kind == "dwconv":
        groups, cout = cin, cin * int(rng.choice([1, 1, 1, 2]))
    elif kind == "groupconv":
        groups = int(rng.choice([2, 4, 8]))
        cin, cout = (max(2, c // groups) * groups for c in (cin, cout))
    return OpSpec.conv2d(cin, cout, size, kernel, stride, groups, act)


# (scale, taps): one draw of four, so the draws after it are those of the nearest-only
# sampler before linear resizes were added (the ZigZag data's MAC layers stay reproducible).
_RESIZES = ((2.0, 1), (2.0, 2), (4.0, 2), (0.5, 1))


def _sample_one(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    common = rng.random() < 0.7
    size = int(rng.choice([7, 14, 28, 56, 112])) if common else int(rng.integers(7, 113))
    stride = int(rng.choice([1, 2], p=[0.75, 0.25]))
    act = str(rng.choice(_ACTS))
    cin, cout = _channels(rng, p), _channels(rng, p)
    if kind in CONV_KINDS:
        kernel = 1 if kind == "conv1x1" else int(rng.choice([3, 5], p=[0.8, 0.2]))
        return _sampled_conv(rng, kind, cin, cout, size, kernel, stride, act)
    if kind == "gemm":
        return OpSpec("gemm", cin=_channels(rng, p, 16, 2048), cout=_channels(rng, p, 16, 2048),
                      act=act)
    if kind == "pool":
        kernel = int(rng.choice([2, 3]))  # 2x2 stride 2 unpadded, or 3x3 padded by 1
        stride, pad = (2, 0) if kernel == 2 else (stride, 1)
        out = (size + 2 * pad - kernel) // stride + 1
        return OpSpec("pool", cin=cin, cout=cin, h_in=size, w_in=size, h_out=out, w_out=out,
                      kh=kernel, kw=kernel, stride=stride)
    if kind == "gap":
        return OpSpec("gap", cin=cin, cout=cin, h_in=size, w_in=size)
    if kind == "resize":  # upsampling x2 (nearest or linear), x4 (linear); nearest /2
        scale, taps = _RESIZES[int(rng.integers(len(_RESIZES)))]
        size = min(size, 56) // 2 * 2  # even, so /2 is exact
        out = int(size * scale)
        return OpSpec("resize", cin=cin, cout=cin, h_in=size, w_in=size, h_out=out, w_out=out,
                      kh=taps, kw=taps)
    n_inputs = int(rng.choice([2, 2, 3]))
    if kind == "concat":
        part = max(1, cin // n_inputs)
        return OpSpec("concat", cin=part, cout=part * n_inputs, h_in=size, w_in=size,
                      h_out=size, w_out=size, n_inputs=n_inputs)
    if rng.random() < 0.3:  # a standalone activation ('' is built as a Relu)
        return OpSpec("elementwise", cin=cin, cout=cin, h_in=size, w_in=size, h_out=size,
                      w_out=size, act=str(rng.choice(_ACTS[1:])))
    return OpSpec("elementwise", cin=cin, cout=cin, h_in=size, w_in=size, h_out=size,
                  w_out=size, n_inputs=n_inputs, act=act if rng.random() < 0.3 else "")


def _modest(spec: OpSpec) -> bool:
    return (spec.macs <= MAX_MACS and spec.input_elements <= MAX_ELEMENTS
            and spec.output_elements <= MAX_ELEMENTS)


_WIDE_SIZES = (1, 1, 2, 3, 4, 7, 10, 14, 20, 24, 28, 40, 48, 56, 80, 112)


def _log_channels(rng: np.random.Generator, p: int, hi: int = 1280, snap: float = 0.4
                  ) -> int:
    """Log-uniform over 8-`hi`, rounded to a multiple of P with probability `snap`."""
    c = int(round(math.exp(rng.uniform(math.log(8), math.log(hi)))))
    return max(p, round(c / p) * p) if rng.random() < snap else c


def _sample_wide(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """A MAC layer from the corners the default space samples thinly: maps from 1x1 (a
    squeeze-excite conv) to 112x112, channels log-uniform over 8-1280 (few input channels
    at large maps, 576-1280 channels at small ones)."""
    size = int(rng.choice(_WIDE_SIZES))
    stride = 1 if size < 4 else int(rng.choice([1, 2], p=[0.75, 0.25]))
    act = str(rng.choice(_ACTS))
    cin, cout = _log_channels(rng, p), _log_channels(rng, p)
    if kind == "gemm":
        return OpSpec("gemm", cin=cin, cout=cout, act=act)
    kernel = 1 if kind == "conv1x1" or size == 1 else int(rng.choice([3, 5], p=[0.8, 0.2]))
    return _sampled_conv(rng, kind, cin, cout, size, kernel, stride, act)


_WIDE_KIND_WEIGHTS = {"conv": 0.3, "conv1x1": 0.4, "dwconv": 0.2, "groupconv": 0.05,
                      "gemm": 0.05}
_OBLONG_SIDES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 80, 96, 160, 320)


def _widened(square: OpSpec, width: int) -> OpSpec:
    """A square conv spec on a map `width` wide ('same' padding, its stride)."""
    return replace(square, w_in=width, w_out=ceil_div(width, square.stride))


def _sample_oblong(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """A MAC layer of a shape the square spaces never draw: a gemm over 2-512 rows (a
    MatMul over a sequence, as in a text recogniser's head) or a conv on a non-square map
    (text lines such as 12x80, 1xN sequences); channels log-uniform over 8-1280."""
    act = str(rng.choice(_ACTS))
    cin, cout = _log_channels(rng, p), _log_channels(rng, p)
    if kind == "gemm":
        rows = int(round(math.exp(rng.uniform(math.log(2), math.log(512)))))
        return OpSpec("gemm", n=rows, cin=cin, cout=cout, act=act)
    height, width = (int(side) for side in rng.choice(_OBLONG_SIDES, size=2, replace=False))
    stride = 1 if min(height, width) < 4 else int(rng.choice([1, 2], p=[0.75, 0.25]))
    kernel = 1 if kind == "conv1x1" else int(rng.choice([3, 5], p=[0.8, 0.2]))
    return _widened(_sampled_conv(rng, kind, cin, cout, height, kernel, stride, act), width)


_OBLONG_KIND_WEIGHTS = {"conv": 0.25, "conv1x1": 0.25, "dwconv": 0.15, "gemm": 0.35}
_STEM_SIDES = (32, 48, 64, 80, 96, 128, 160, 192, 224, 256, 320, 384, 512, 640)


def _sample_stem(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """The first conv of an image model, which no other space draws (they start at 8 input
    channels): 1, 3 or 4 input channels (grey, RGB, RGBA) on a 32-640 pixel image, square
    or not, 3x3 to 7x7 mostly at stride 2, 8-64 output channels."""
    act = str(rng.choice(_ACTS))
    cin = int(rng.choice([1, 3, 3, 3, 4]))
    cout = _log_channels(rng, p, hi=64, snap=0.5)
    height = int(rng.choice(_STEM_SIDES))
    width = height if rng.random() < 0.6 else int(rng.choice(_STEM_SIDES))
    stride = int(rng.choice([1, 2, 2, 2]))
    kernel = int(rng.choice([3, 3, 3, 5, 7]))
    return _widened(OpSpec.conv2d(cin, cout, height, kernel, stride, 1, act), width)


_STEM_KIND_WEIGHTS = {"conv": 1.0}
_LAYOUT_SIDES = (2, 3, 4, 6, 7, 10, 14, 20, 28, 40, 56, 80, 112, 160, 224, 320)


def _reorder(channels: int, size: int, layout: str) -> OpSpec:
    return OpSpec("reorder", cin=channels, cout=channels, h_in=size, w_in=size, h_out=size,
                  w_out=size, layout=layout)


def _upsampling(rng: np.random.Generator, channels: int, size: int, scale: int) -> OpSpec:
    """`size` x `scale`, nearest or linear, blocked or left in NCHW (drawn in that order)."""
    taps = int(rng.choice([1, 2]))
    return OpSpec("resize", cin=channels, cout=channels, h_in=size, w_in=size,
                  h_out=size * scale, w_out=size * scale, kh=taps, kw=taps,
                  layout=str(rng.choice(["", "nchw"])))


def _sample_layout(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """What a runtime with a blocked layout adds between kernels, and the upsampling a
    segmentation or detection head runs: a layout conversion of one tensor (out of the
    blocked layout, or into it: channels a multiple of 8, at least 16, as onnxruntime
    blocks them), or a nearest or linear x2, x4 or x8 upsampling, blocked or left in NCHW;
    channels log-uniform over 8-1280."""
    channels = _log_channels(rng, p)
    size = int(rng.choice(_LAYOUT_SIDES))
    if kind == "reorder":
        layout = str(rng.choice(["", "nchw"]))
        if layout == "":
            channels = max(16, round(channels / 8) * 8)
        return _reorder(channels, size, layout)
    scale = int(rng.choice([2, 4, 8]))
    return _upsampling(rng, channels, max(1, size // scale), scale)


_LAYOUT_KIND_WEIGHTS = {"reorder": 0.6, "resize": 0.4}


def _sample_head(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """The output end of a segmentation or detection head, which the layout space draws
    few of (its channels start at 8 and its largest factor is x8): a class map of 1-64
    channels (log-uniform) upsampled x2-x16, nearest or linear, blocked or left in NCHW, to
    a 48-512 pixel image; or that map's conversion out of the blocked layout."""
    classes = int(round(math.exp(rng.uniform(0.0, math.log(64)))))
    image = int(rng.integers(3, 33)) * 16
    if kind == "reorder":
        return _reorder(classes, image, "nchw")
    scale = int(rng.choice([2, 4, 8, 16]))
    return _upsampling(rng, classes, image // scale, scale)


_HEAD_KIND_WEIGHTS = {"resize": 0.7, "reorder": 0.3}
# name -> (kind weights, sampler)
SPACES = {"default": (_KIND_WEIGHTS, _sample_one), "wide": (_WIDE_KIND_WEIGHTS, _sample_wide),
          "oblong": (_OBLONG_KIND_WEIGHTS, _sample_oblong),
          "stem": (_STEM_KIND_WEIGHTS, _sample_stem),
          "layout": (_LAYOUT_KIND_WEIGHTS, _sample_layout),
          "head": (_HEAD_KIND_WEIGHTS, _sample_head)}


def sample_specs(n: int, seed: int, parallelism: int = 32, space: str = "default"
                 ) -> list[OpSpec]:
    """`n` random specs over the op space, each at most MAX_MACS MACs and MAX_ELEMENTS
    elements per tensor (a few ms on one CPU core); deterministic for a seed.
    space="wide", "oblong" and "stem": MAC layers only, from the corners the default space
    samples thinly or never (see `_sample_wide`, `_sample_oblong`, `_sample_stem`);
    "layout": layout conversions and upsampling (`_sample_layout`); "head": a head's
    class map upsampled to the image (`_sample_head`); all to add to a measurement set."""
    if space not in SPACES:
        raise ValueError(f"unknown sample space {space!r}")
    kinds, sample = SPACES[space]
    rng = np.random.default_rng(seed)
    weights = np.array(list(kinds.values()))
    specs: list[OpSpec] = []
    for kind in rng.choice(list(kinds), size=n, p=weights / weights.sum()):
        spec = sample(rng, parallelism, str(kind))
        while not _modest(spec):  # redraw the shape, keeping the kind mix
            spec = sample(rng, parallelism, str(kind))
        specs.append(spec)
    return specs


# ----------------------------------------------------------------------------- timing

def device_name() -> str:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} / onnxruntime {ort.__version__} CPU"


def _inputs(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _session(model: onnx.ModelProto, threads: int, profile: bool):
    prefix = str(Path(tempfile.gettempdir()) / "rewriter-measure") if profile else None
    return session(model, threads, profile_prefix=prefix)


# onnxruntime's layout conversions -> the layout each converts to (into the blocked one:
# "", out of it: "nchw"); cost.layout reads them from the graph onnxruntime runs
REORDERS = {"ReorderInput": "", "ReorderOutput": "nchw"}
MIN_MS = 1e-4  # 0.1 us


def time_model(model: onnx.ModelProto, *, repeats: int = 20, warmup: int = 3,
               threads: int = 1, node_floor_ms: float = 0.0,
               only: str | None = None) -> float:
    """Median per-run kernel time of `model`'s ops (layout reorders and LAYOUT_HELPER
    nodes excluded; with `only`, the nodes of that onnxruntime op alone, which must run),
    in ms.

    `node_floor_ms` is subtracted from every profiled node (never below zero): the
    profiler's own cost per node, which a run without profiling does not pay. One kernel
    can be several nodes in a one-op model (x * HardSigmoid(x) when it is not fused), so
    the floor belongs to nodes, not to kernels.
    """
    session = _session(model, threads, profile=True)
    feeds = _inputs(model, np.random.default_rng(0))
    for _ in range(warmup + repeats):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session"
                  and e.get("name") == "model_run")
    per_run = [0.0] * len(runs)
    seen = 0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name")
        if (op == only if only else
                op not in REORDERS and not e["name"].startswith(LAYOUT_HELPER)):
            index = bisect.bisect_right(runs, e["ts"]) - 1
            if index >= 0:
                per_run[index] += max(e["dur"] / 1e3 - node_floor_ms, 0.0)
                seen += 1
    if only and not seen:
        raise MeasurementError(f"onnxruntime ran no {only} node in this model")
    timed = per_run[warmup:] or per_run
    # The profiler counts whole microseconds; an op below its resolution still costs > 0.
    return max(statistics.median(timed), MIN_MS)


def reorder_op(spec: OpSpec) -> str | None:
    """The onnxruntime node a reorder spec is timed by (None for other kinds)."""
    if spec.kind != "reorder":
        return None
    return next(op for op, layout in REORDERS.items() if layout == spec.layout)


def _relu_chain(length: int) -> onnx.ModelProto:
    names = ["x", *(f"t{i}" for i in range(length))]
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in zip(names, names[1:])]
    graph = helper.make_graph(
        nodes, "relu_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, [1, 8, 4, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


FLOOR_ROUNDS = 5


def profiler_floor_ms(threads: int = 1, repeats: int = 300) -> float:
    """The profiled kernel time of one trivial op, which is almost all the profiler's own
    cost per node: measure_specs removes it from every profiled node. The lowest median of
    FLOOR_ROUNDS rounds: one burst of load during a single round read 5 us here instead of
    3, and every op of that sitting then came out 2 us fast (a third of a small one)."""
    return min(time_model(_relu_chain(1), repeats=max(1, repeats // FLOOR_ROUNDS),
                          threads=threads) for _ in range(FLOOR_ROUNDS))


def calibrate(threads: int = 1, repeats: int = 300) -> tuple[float, float]:
    """(in-model dispatch cost per node, the profiler's floor per node), in seconds.

    Dispatch: wall time of a chain of 101 trivial ops minus a chain of 1, per extra op
    (no profiler): a measured profile's overhead_s. Floor: `profiler_floor_ms`.
    """
    feeds = {"x": np.zeros((1, 8, 4, 4), np.float32)}
    one = wall_time(_relu_chain(1), feeds, repeats=repeats, threads=threads)
    many = wall_time(_relu_chain(101), feeds, repeats=repeats, threads=threads)
    return max(many - one, 0.0) / 100 / 1e3, profiler_floor_ms(threads, repeats) / 1e3


def wall_time(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None, *,
              repeats: int = 20, warmup: int = 3, threads: int = 1) -> float:
    """Median wall time of one run of a whole model, in ms (what a user sees)."""
    feeds = feeds if feeds is not None else _inputs(model, np.random.default_rng(0))
    return session_wall_time(_session(model, threads, profile=False), feeds,
                             repeats=repeats, warmup=warmup)


def session_wall_time(session, feeds: dict[str, np.ndarray], *, repeats: int = 20,
                      warmup: int = 3) -> float:
    """`wall_time` of a model whose onnxruntime session is already open."""
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure_specs(specs: Iterable[OpSpec], *, repeats: int = 20, warmup: int = 3,
                  threads: int = 1, progress: bool = True,
                  floor_ms: float | None = None) -> list[Measurement]:
    """Time every spec as a one-op model, the profiler's per-node floor removed (`floor_ms`,
    measured here when not given: `profiler_floor_ms`)."""
    specs = list(specs)
    device = device_name()
    if floor_ms is None:
        floor_ms = profiler_floor_ms(threads)
    rows = []
    for spec in tqdm(specs, desc="measuring ops", unit="op", disable=not progress):
        ms = time_model(one_op_model(spec), repeats=repeats, warmup=warmup, threads=threads,
                        node_floor_ms=floor_ms, only=reorder_op(spec))
        rows.append(Measurement(spec, ms, device, threads, repeats))
    return rows


# ----------------------------------------------------------------------------- CSV

def write_csv(path: str | Path, rows: Iterable[Measurement]) -> None:
    """Write the rows atomically (rewriter.atomic: a new temporary file, then renamed)."""
    from rewriter.atomic import atomic_write

    rows = list(rows)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([*row.spec.signature(), f"{row.latency_ms:.6g}", row.device,
                                 row.threads, row.repeats])

    atomic_write(path, write)


def _parse_row(path: Path, line: int, record: dict[str, str]) -> Measurement:
    values: dict[str, object] = {}
    for column in COLUMNS:
        text = (record.get(column) or "").strip() or _DEFAULTS.get(column, "")
        where = f"{path}, row {line}: column {column!r}"
        if column == "kind" and text not in KINDS:
            raise MeasurementError(f"{where}: unknown op kind {text!r}")
        if column in INT_FIELDS or column in ("threads", "repeats"):
            try:
                values[column] = int(text)
            except ValueError:
                raise MeasurementError(f"{where}: expected an integer, got {text!r}") from None
        elif column == "latency_ms":
            try:
                values[column] = float(text)
            except ValueError:
                raise MeasurementError(f"{where}: expected a number, got {text!r}") from None
            if not math.isfinite(values[column]) or values[column] <= 0:
                raise MeasurementError(f"{where}: latency must be a positive number, got {text!r}")
        else:
            values[column] = text
    try:
        spec = OpSpec(**{f: values[f] for f in SPEC_FIELDS})
    except ValueError as exc:
        raise MeasurementError(f"{path}, row {line}: {exc}") from None
    return Measurement(spec, values["latency_ms"], values["device"], values["threads"],
                       values["repeats"])


def read_csv(path: str | Path) -> list[Measurement]:
    """Measurements from a CSV (ours, or one measured elsewhere); see the module docstring."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise MeasurementError(f"{path}, row 1: missing column {missing[0]!r} "
                                       f"(required: {', '.join(REQUIRED_COLUMNS)})")
            rows = []
            for record in reader:
                if None in record:
                    raise MeasurementError(f"{path}, row {reader.line_num}: more fields than "
                                           "the header has columns")
                rows.append(_parse_row(path, reader.line_num, record))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MeasurementError(f"{path}: cannot read: {' '.join(str(exc).split())}") from None
    if not rows:
        raise MeasurementError(f"{path}: no measurements (only a header, or empty)")
    return rows
