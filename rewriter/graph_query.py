"""Read-only questions about an onnx-graphsurgeon graph that passes and analysis share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def is_empty_input(tensor: gs.Tensor | None) -> bool:
    """An optional input left out ('' in ONNX)."""
    return tensor is None or (isinstance(tensor, gs.Variable) and tensor.name == "")


def only_consumer(tensor: gs.Tensor, graph_outputs: list[gs.Tensor]) -> gs.Node | None:
    """The one node reading `tensor`, or None when it has several readers or is an output."""
    if any(t is tensor for t in graph_outputs) or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


@dataclass(frozen=True)
class ConvInfo:
    """A Conv node's parameters, normalised (explicit pads, strides, dilations)."""

    weight: np.ndarray  # [Cout, Cin/groups, Kh, Kw]
    bias: np.ndarray | None
    groups: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]

    @property
    def cout(self) -> int:
        return int(self.weight.shape[0])

    @property
    def cin(self) -> int:
        return int(self.weight.shape[1]) * self.groups

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    @property
    def is_depthwise(self) -> bool:
        """groups == Cin and each group has one input channel (any channel multiplier)."""
        return self.groups > 1 and self.groups == self.cin and self.weight.shape[1] == 1

    @property
    def is_pointwise(self) -> bool:
        return self.kernel == (1, 1) and self.strides == (1, 1) and not any(self.pads)


def conv_info(node: gs.Node) -> ConvInfo | None:
    """Parameters of a 2-D Conv with constant weights and explicit padding, else None."""
    if node.op != "Conv" or len(node.inputs) < 2:
        return None
    weight = const_value(node.inputs[1])
    if weight is None or weight.ndim != 4:
        return None
    bias = const_value(node.inputs[2]) if len(node.inputs) > 2 and not is_empty_input(
        node.inputs[2]) else None
    if len(node.inputs) > 2 and not is_empty_input(node.inputs[2]) and bias is None:
        return None
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    pads = tuple(int(p) for p in node.attrs.get("pads", [0, 0, 0, 0]))
    strides = tuple(int(s) for s in node.attrs.get("strides", [1, 1]))
    dilations = tuple(int(d) for d in node.attrs.get("dilations", [1, 1]))
    return ConvInfo(
        weight=weight,
        bias=bias,
        groups=int(node.attrs.get("group", 1)),
        strides=strides,  # type: ignore[arg-type]
        pads=pads,  # type: ignore[arg-type]
        dilations=dilations,  # type: ignore[arg-type]
    )


def conv_attrs(info: ConvInfo, groups: int | None = None) -> dict[str, object]:
    """Attributes for a new Conv node with `info`'s geometry."""
    return {
        "group": info.groups if groups is None else groups,
        "strides": list(info.strides),
        "pads": list(info.pads),
        "dilations": list(info.dilations),
        "kernel_shape": list(info.kernel),
    }


class Namer:
    """Fresh tensor names in a graph (constants added by a rewrite need unique names)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.used = set(graph.tensors().keys())

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def fills_zeros(node: gs.Node) -> bool:
    """A ConstantOfShape that fills its tensor with 0 (the default when it has no value)."""
    if node.op != "ConstantOfShape":
        return False
    value = node.attrs.get("value")
    if value is None:
        return True
    fill = np.asarray(value.values if isinstance(value, gs.Constant) else value)
    return fill.size == 1 and float(fill.reshape(-1)[0]) == 0.0
