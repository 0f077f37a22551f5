"""Decompose a model into kernels: an op plus the BatchNormalization and activation it fuses.

Accelerator compilers (and onnxruntime's CPU provider) run a conv, the BN folded into it and
the activation after it as one kernel, so latency is estimated per kernel, not per node:
Conv -> BN? -> act? is one `OpSpec` with `act` set; the nodes of a squeeze-excite are their
own small kernels; shape-only ops (Shape, Reshape, Flatten, Squeeze, Identity, Cast, ...)
cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod

import onnx_graphsurgeon as gs

from rewriter.analysis.blocks import follow_bn_act
from rewriter.cost.opspec import KNOWN_ACTIVATIONS, MAC_KINDS, RESIZE_TAPS, OpSpec, conv_kind
from rewriter.graph_io import Model
from rewriter.graph_query import const_value, conv_info

FREE = {
    "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Dropout",
    "Constant", "Gather", "Slice", "ConstantOfShape", "Range",
}
POOLS = {"MaxPool", "AveragePool"}
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean"}


@dataclass(frozen=True)
class Kernel:
    name: str  # the first node's name
    op_type: str  # the first node's op
    nodes: tuple[str, ...]
    spec: OpSpec


# (name, op type, the model's nodes it covers, spec) of one pass a target prices
Part = tuple[str, str, tuple[str, ...], OpSpec]


def nchw(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(n, c, h, w) of a tensor shape: a 3-D one has no w, a 2-D one no map, a 1-D one is
    channels."""
    if len(shape) >= 3:
        return shape[0], shape[1], shape[2], shape[3] if len(shape) > 3 else 1
    if len(shape) == 2:
        return shape[0], shape[1], 1, 1
    return 1, prod(shape) if shape else 1, 1, 1


# Activations the measurement harness cannot build map to the nearest one it can.
_ACT_ALIASES = {"hardsigmoid": "sigmoid", "clip": "relu6", "leakyrelu": "relu", "elu": "relu",
                "prelu": "relu", "affine": "relu"}


def normalise_act(name: str) -> str:
    """'hardswish+affine' -> 'hardswish'; 'hardsigmoid' -> 'sigmoid'; unknown -> 'relu'."""
    base = name.split("+")[0]
    if base in KNOWN_ACTIVATIONS:
        return base
    return _ACT_ALIASES.get(base, "relu") if base else ""


def _absorb(model: Model, tensor: gs.Tensor, used: set[str]) -> tuple[list[gs.Node], str]:
    """The BN and activation fused after a producing op (an activation already in another
    kernel stays there)."""
    chain = follow_bn_act(model, tensor)
    bn = chain.nodes[:1] if chain.batchnorm else []
    if not chain.activation or any(n.name in used for n in chain.nodes[len(bn):]):
        return bn, ""
    return chain.nodes, chain.activation


def decompose(model: Model) -> list[Kernel]:
    shapes = model.shapes
    used: set[str] = set()
    kernels: list[Kernel] = []
    for node in model.graph.nodes:
        if node.name in used or node.op in FREE:
            continue
        spec = _spec(model, node, shapes)
        extra: list[gs.Node] = []
        if spec is not None and spec.kind in MAC_KINDS:
            extra, act = _absorb(model, node.outputs[0], used)
            if act:
                spec = replace(spec, act=normalise_act(act))
        if spec is None:
            continue
        members = (node.name, *(n.name for n in extra))
        used.update(members)
        kernels.append(Kernel(node.name, node.op, members, spec))
    return kernels


def _spec(model: Model, node: gs.Node, shapes: dict[str, tuple[int, ...]]) -> OpSpec | None:
    out = node.outputs[0] if node.outputs else None
    if out is None or out.name not in shapes:
        return None
    n, cout, h_out, w_out = nchw(shapes[out.name])
    data = [t for t in node.inputs if isinstance(t, gs.Variable) and t.name in shapes]
    first = shapes[data[0].name] if data else shapes[out.name]
    _, cin, h_in, w_in = nchw(first)
    base = dict(n=n, cin=cin, cout=cout, h_in=h_in, w_in=w_in, h_out=h_out, w_out=w_out,
                kh=1, kw=1, stride=1, groups=1, act="", n_inputs=max(1, len(data)))
    if node.op == "Conv":
        info = conv_info(node)
        if info is None:
            return OpSpec(kind="conv", **base)
        kh, kw = info.kernel
        # the larger of an anisotropic stride (PP-OCR rec's (2, 1)); the sizes say which axis
        base.update(kh=kh, kw=kw, stride=max(info.strides), groups=info.groups)
        return OpSpec(kind=conv_kind(info.cin, info.cout, max(kh, kw), info.groups), **base)
    if node.op == "ConvTranspose":
        # a conv over the zero-inserted input (weights [cin, cout/groups, kh, kw])
        weight = const_value(node.inputs[1])
        groups = int(node.attrs.get("group", 1))
        if weight is None or cin % groups or cout % groups:
            return OpSpec(kind="conv", **base)
        kh, kw = int(weight.shape[2]), int(weight.shape[3])
        base.update(kh=kh, kw=kw, groups=groups)
        return OpSpec(kind=conv_kind(cin, cout, max(kh, kw), groups), **base)
    if node.op in ("Gemm", "MatMul"):
        out_shape = shapes[out.name]
        if len(out_shape) > 2 and len(first) >= 2:
            # A batched or sequence MatMul [..., D, C] x [C, K]: every leading index is one
            # more row of the product (as ZigZag maps it), not a channel or pixel dim.
            base.update(n=prod(out_shape[:-1]), cin=first[-1], cout=out_shape[-1],
                        h_in=1, w_in=1, h_out=1, w_out=1)
        return OpSpec(kind="gemm", **base)
    if node.op in POOLS:
        kernel = node.attrs.get("kernel_shape", [1, 1])
        strides = node.attrs.get("strides", [1, 1])
        base.update(kh=int(kernel[0]), kw=int(kernel[-1]), stride=int(strides[0]))
        return OpSpec(kind="pool", **base)
    if node.op in GLOBAL_POOLS:
        return OpSpec(kind="gap", **base)
    if node.op in ("Resize", "Upsample"):
        mode = str(node.attrs.get("mode", "nearest"))  # graphsurgeon decodes strings
        taps = RESIZE_TAPS.get("linear" if mode == "bilinear" else mode, 1)  # old Upsample
        base.update(kh=taps, kw=taps)
        return OpSpec(kind="resize", **base)
    if node.op == "Concat":
        return OpSpec(kind="concat", **base)
    return OpSpec(kind="elementwise", **base)  # every other op moves each element once
