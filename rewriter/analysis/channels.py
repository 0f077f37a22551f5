"""Coupled channel groups, found by propagating channel identity (DepGraph's idea).

A channel space is axis 1 of a tensor. Ops that keep channels in place (BN, activations,
pooling, Resize, depthwise convs, elementwise ops between tensors, Flatten of a 1x1 map)
put their input and output spaces in one group; a dense conv, Gemm or MatMul reads a group
(consumer) and starts a new one (producer). Concat along channels makes a composite space:
a group per slice, each consumer of the result reading the slice at an offset. A rewrite
that changes a channel count edits a whole group: its producers' filters, its followers'
per-channel parameters, its consumers' input weights.

A Pad of the spatial axes only (any mode, any value) keeps channels in place, like pooling;
a Pad of the batch or channel axis freezes.

A group is frozen (no channel rewrite may touch it) when it reaches a model input or
output, is read by an op whose channel semantics are unknown here (Reshape that mixes
channels into other axes, Shape, Softmax, Split, ...), runs through a grouped conv or a
depthwise conv with a channel multiplier, or meets a composite space in an elementwise op.
A group may lose channels but gain none (`pad_frozen`) when an added channel, which carries
0, would make something infinite: a Div by the group, a Pow of it by a power that is not
positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np
import onnx_graphsurgeon as gs
from networkx.utils import UnionFind

from rewriter.analysis.activations import BINARY, UNARY
from rewriter.graph_io import Model
from rewriter.graph_query import const_value, conv_info

PASS_THROUGH = UNARY | {
    "BatchNormalization", "Dropout", "Identity", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample", "LpNormalization",
    "InstanceNormalization", "PRelu",
}
# Per-channel parameter inputs of pass-through ops, and the value that is harmless on a
# padded channel (a padded channel carries zeros, or act(0), and is read with zero weight).
FOLLOWER_INPUTS: dict[str, dict[int, float]] = {
    "BatchNormalization": {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0},
    "InstanceNormalization": {1: 1.0, 2: 0.0},
    "PRelu": {1: 0.0},
}
NEUTRAL = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0, "Pow": 1.0, "Max": 0.0, "Min": 0.0,
           "Sum": 0.0}


def weight_axis(node: gs.Node, role: str) -> int:
    """The axis of a producer's or consumer's weight (input 1) that holds the group's
    channels: output channels for a producer, input channels for a consumer."""
    if node.op == "Conv":
        out_axis, in_axis = 0, 1
    elif node.op == "ConvTranspose":
        out_axis, in_axis = 1, 0
    elif node.op == "Gemm" and node.attrs.get("transB", 0):
        out_axis, in_axis = 0, 1
    else:  # Gemm without transB, MatMul: B is [K, N]
        out_axis, in_axis = 1, 0
    return out_axis if role == "producer" else in_axis


def output_rank(model: Model, node: gs.Node) -> int:
    """The rank of `node`'s first output in `model` (4 when unknown), which
    `channel_params` needs to place a broadcasting constant's channel axis."""
    return len(model.shapes.get(node.outputs[0].name, ())) or 4


def channel_params(node: gs.Node, role: str, input_index: int, rank: int
                   ) -> list[tuple[int, int, float]]:
    """The constant inputs of a group member that hold the group's channels, as (input
    index, channel axis, value harmless on an added channel), for the passes that change a
    group's width: a producer's weight and per-channel bias, a consumer's weight, a
    depthwise follower's filters and bias, a BN-style follower's parameter vectors, and the
    per-channel constant of any other follower (PRelu slopes, elementwise constants), which
    broadcasts from the right against its data of rank `rank` (size 1: no channels)."""
    def present(index: int) -> bool:
        return index < len(node.inputs) and const_value(node.inputs[index]) is not None

    if role in ("producer", "consumer"):
        params = [(1, weight_axis(node, role), 0.0)]
        if role == "producer" and present(2) and const_value(node.inputs[2]).size > 1:
            params.append((2, -1, 0.0))  # Conv bias [C]; Gemm C [N] or [1, N]
        return params
    if node.op == "Conv":  # depthwise, multiplier 1: its filters are the channels
        return [(1, 0, 0.0)] + ([(2, 0, 0.0)] if present(2) else [])
    if node.op in ("BatchNormalization", "InstanceNormalization"):
        return [(i, 0, fill) for i, fill in FOLLOWER_INPUTS[node.op].items() if present(i)]
    fills = (FOLLOWER_INPUTS[node.op] if node.op in FOLLOWER_INPUTS
             else {input_index: NEUTRAL[node.op]})
    return [(i, 1 - (rank - const_value(node.inputs[i]).ndim), fill)
            for i, fill in fills.items()
            if present(i) and const_value(node.inputs[i]).size > 1]


@dataclass(frozen=True)
class Member:
    """A node touching a group: `role` is producer, consumer or follower.

    For consumers and followers, `input_index` is the input holding channels and `offset`
    the position of the group's first channel along that input's channel axis.
    """

    node: str
    role: str
    input_index: int = 0
    offset: int = 0


@dataclass
class ChannelGroup:
    id: str
    channels: int
    tensors: list[str]
    members: list[Member] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    # why no channel may be added (removing some is still fine): see the module docstring
    pad_frozen: list[str] = field(default_factory=list)

    @property
    def is_frozen(self) -> bool:
        return bool(self.frozen)

    @property
    def can_pad(self) -> bool:
        return not self.frozen and not self.pad_frozen

    def by_role(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "channels": self.channels,
            "frozen": self.frozen,
            "pad_frozen": self.pad_frozen,
            "producers": [m.node for m in self.by_role("producer")],
            "consumers": [m.node for m in self.by_role("consumer")],
            "followers": [m.node for m in self.by_role("follower")],
            "tensors": len(self.tensors),
        }


Segment = tuple[str, int]  # (a tensor of the group, channels)


class _Analysis:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.shapes = model.shapes
        self.uf = UnionFind()
        self.layout: dict[str, list[Segment]] = {}
        self.members: list[tuple[str, Member]] = []  # (tensor of the group, member)
        self.frozen: list[tuple[str, str]] = []  # (tensor, reason)
        self.pad_frozen: list[tuple[str, str]] = []  # (tensor, reason): no channel added

    # -- helpers -----------------------------------------------------------------------
    def channels(self, tensor: gs.Tensor) -> int | None:
        shape = self.shapes.get(tensor.name)
        return int(shape[1]) if shape is not None and len(shape) >= 2 else None

    def space(self, tensor: gs.Tensor) -> list[Segment]:
        if tensor.name not in self.layout:
            self.new_space(tensor)  # registered as a group too: it may be frozen later
        return self.layout[tensor.name]

    def new_space(self, tensor: gs.Tensor) -> None:
        self.layout[tensor.name] = [(tensor.name, self.channels(tensor) or 0)]
        self.uf[tensor.name]  # a group of its own until joined

    def same(self, src: gs.Tensor, dst: gs.Tensor) -> None:
        """dst carries src's channels unchanged."""
        self.layout[dst.name] = self.space(src)
        if len(self.layout[dst.name]) == 1:
            self.uf.union(self.layout[dst.name][0][0], dst.name)

    def freeze(self, tensor: gs.Tensor, reason: str, padding_only: bool = False) -> None:
        for name, _ in self.space(tensor):
            (self.pad_frozen if padding_only else self.frozen).append((name, reason))

    def add(self, tensor: gs.Tensor, node: gs.Node, role: str, index: int = 0) -> None:
        offset = 0
        for name, width in self.space(tensor):
            self.members.append((name, Member(node.name, role, index, offset)))
            offset += width

    # -- rules -------------------------------------------------------------------------
    def visit(self, node: gs.Node) -> None:
        op = node.op
        data = [t for t in node.inputs if isinstance(t, gs.Variable) and t.name]
        outs = [t for t in node.outputs if t.name]
        if op == "Conv":
            self._conv(node)
        elif op == "ConvTranspose":
            info_ok = (int(node.attrs.get("group", 1)) == 1
                       and const_value(node.inputs[1]) is not None)
            self.add(node.inputs[0], node, "consumer")
            self.new_space(outs[0])
            self.add(outs[0], node, "producer")
            if not info_ok:
                self.freeze(node.inputs[0], f"grouped ConvTranspose {node.name}")
                self.freeze(outs[0], f"grouped ConvTranspose {node.name}")
        elif op in ("Gemm", "MatMul"):
            self._matmul(node)
        elif op == "Concat":
            self._concat(node)
        elif op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            self._reshape(node)
        elif op == "Pad" and data and outs and _pads_only_spatial(
                node, len(self.shapes.get(node.inputs[0].name, ()))):
            # Padding H/W (in any mode, with any value) keeps every channel in place; a
            # channel added to the group is read with zero weight wherever it goes.
            self.same(node.inputs[0], outs[0])
        elif op in PASS_THROUGH and len(data) == 1 and outs:
            if self.channels(outs[0]) != self.channels(data[0]):
                self.freeze(data[0], f"{op} {node.name} changes the channel count")
                self.new_space(outs[0])
                self.freeze(outs[0], f"{op} {node.name} changes the channel count")
                return
            self.same(data[0], outs[0])
            if op in FOLLOWER_INPUTS:
                self.add(outs[0], node, "follower")
        elif op in BINARY or op == "Sum":
            self._elementwise(node, data, outs)
        else:
            for tensor in data:
                self.freeze(tensor, f"read by {op} {node.name}")
            for tensor in outs:
                self.new_space(tensor)
                self.freeze(tensor, f"produced by {op} {node.name}")

    def _conv(self, node: gs.Node) -> None:
        info = conv_info(node)
        x, y = node.inputs[0], node.outputs[0]
        if info is None:
            self.freeze(x, f"conv {node.name} with non-constant weights or auto_pad")
            self.new_space(y)
            self.freeze(y, f"conv {node.name} with non-constant weights or auto_pad")
            return
        if info.is_depthwise and info.cout == info.cin:
            self.same(x, y)
            self.add(y, node, "follower")
            return
        self.add(x, node, "consumer")
        self.new_space(y)
        self.add(y, node, "producer")
        if info.groups > 1:
            kind = ("depthwise conv with channel multiplier" if info.is_depthwise
                    else "grouped conv")
            reason = f"{kind} {node.name}"
            self.freeze(x, reason)
            self.freeze(y, reason)

    def _matmul(self, node: gs.Node) -> None:
        a, y = node.inputs[0], node.outputs[0]
        weight = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        a_shape = self.shapes.get(a.name, ())
        ok = (
            weight is not None and weight.ndim == 2 and len(a_shape) == 2
            and not node.attrs.get("transA", 0)
        )
        if node.op == "Gemm" and len(node.inputs) > 2:
            bias = const_value(node.inputs[2])
            ok = ok and bias is not None
        self.add(a, node, "consumer")
        self.new_space(y)
        self.add(y, node, "producer")
        if not ok:
            self.freeze(a, f"{node.op} {node.name} is not a 2-D product with constant weights")
            self.freeze(y, f"{node.op} {node.name} is not a 2-D product with constant weights")

    def _concat(self, node: gs.Node) -> None:
        y = node.outputs[0]
        rank = len(self.shapes.get(y.name, ()))
        axis = int(node.attrs.get("axis", 1))
        if axis < 0:
            axis += rank
        inputs = [t for t in node.inputs]
        if any(not isinstance(t, gs.Variable) for t in inputs):
            for t in inputs:
                if isinstance(t, gs.Variable):
                    self.freeze(t, f"Concat {node.name} with a constant input")
            self.new_space(y)
            self.freeze(y, f"Concat {node.name} with a constant input")
            return
        if axis == 1:
            self.layout[y.name] = [seg for t in inputs for seg in self.space(t)]
            return
        for t in inputs:  # concatenating along another axis keeps channels aligned
            self.same(inputs[0], t)
        self.same(inputs[0], y)

    def _reshape(self, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        xs, ys = self.shapes.get(x.name), self.shapes.get(y.name)
        keeps = (
            xs is not None and ys is not None and len(xs) >= 2 and len(ys) >= 2
            and xs[0] == ys[0] and xs[1] == ys[1] and prod(xs[2:]) == 1 and prod(ys[2:]) == 1
        )
        if keeps:
            self.same(x, y)
            return
        reason = f"{node.op} {node.name} mixes channels with other axes"
        self.freeze(x, reason)
        self.new_space(y)
        self.freeze(y, reason)

    def _elementwise(self, node: gs.Node, data: list[gs.Tensor], outs: list[gs.Tensor]) -> None:
        y = outs[0]
        channels = self.channels(y)
        coupled = [t for t in data if self.channels(t) == channels and
                   len(self.shapes.get(t.name, ())) == len(self.shapes.get(y.name, ()))]
        if not coupled:
            self.new_space(y)
            self.freeze(y, f"{node.op} {node.name} broadcasts over channels")
            for t in data:
                self.freeze(t, f"{node.op} {node.name} broadcasts over channels")
            return
        layouts = [self.space(t) for t in coupled]
        if all(len(lay) == 1 for lay in layouts):
            for t in coupled:
                self.uf.union(coupled[0].name, t.name)
            self.same(coupled[0], y)
        else:
            # A composite space meeting anything in an elementwise op: keep it simple.
            self.layout[y.name] = layouts[0]
            for t in coupled:
                self.freeze(t, f"{node.op} {node.name} combines a concatenated tensor")
        for index, tensor in enumerate(node.inputs):
            value = const_value(tensor)
            if value is None or value.size == 1:
                continue
            rank = len(self.shapes.get(y.name, ()))
            padded = (1,) * (rank - value.ndim) + tuple(value.shape)
            if len(padded) >= 2 and padded[1] == channels and channels != 1:
                self.add(y, node, "follower", index)
            elif len(padded) >= 2 and padded[1] != 1:
                self.freeze(y, f"{node.op} {node.name} has a constant of shape {value.shape}")
        # An added channel carries 0 (or act(0)); dividing by it, or raising it to a power
        # that is not positive, is not finite, and a consumer's zero weight times inf is NaN.
        # Removing channels adds no such value.
        if node.op == "Div" and any(node.inputs[1] is t for t in coupled):
            self.freeze(y, f"Div {node.name} divides by the group's channels",
                        padding_only=True)
        elif (node.op == "Pow" and any(node.inputs[0] is t for t in coupled)
              and not _positive_constant(node.inputs[1])):
            self.freeze(y, f"Pow {node.name} raises the group's channels to a power that is "
                           "not finite at 0", padding_only=True)


def _pads_only_spatial(node: gs.Node, rank: int) -> bool:
    """A Pad whose constant pads leave the batch and channel axes (0 and 1) alone (`rank`:
    of its input, 0 when unknown)."""
    if not isinstance(node.inputs[0], gs.Variable) or len(node.inputs) < 2:
        return False
    pads = const_value(node.inputs[1])
    if pads is None:
        return False
    pads = pads.reshape(-1)
    if len(node.inputs) > 3 and isinstance(node.inputs[3], gs.Constant):
        axes = [int(a) for a in const_value(node.inputs[3]).reshape(-1)]
    elif len(node.inputs) > 3 and node.inputs[3].name:
        return False  # axes computed at run time
    else:
        axes = list(range(len(pads) // 2))
    if len(pads) != 2 * len(axes):
        return False
    for i, axis in enumerate(axes):
        if axis < 0:
            if not rank:
                return False
            axis += rank
        if axis in (0, 1) and (pads[i] or pads[i + len(axes)]):
            return False
    return True


def _positive_constant(tensor) -> bool:
    value = const_value(tensor)
    return value is not None and bool(np.all(value > 0))


@dataclass
class ChannelAnalysis:
    groups: list[ChannelGroup]
    # tensor name -> its channel axis as (group id, channels) segments (several after Concat)
    layout: dict[str, list[tuple[str, int]]]


def channel_groups(model: Model) -> list[ChannelGroup]:
    """The coupled channel groups of a model, in the order their first tensor appears."""
    return analyse_channels(model).groups


def analyse_channels(model: Model) -> ChannelAnalysis:
    """Channel groups plus, for every tensor, which groups its channels belong to."""
    state = _Analysis(model)
    for tensor in model.graph.inputs:
        state.new_space(tensor)
        state.freeze(tensor, f"model input '{tensor.name}'")
    for node in model.graph.nodes:
        state.visit(node)
    for tensor in model.graph.outputs:
        state.freeze(tensor, f"reaches model output '{tensor.name}'")

    uf = state.uf
    groups: dict[str, ChannelGroup] = {}
    for name in list(uf.parents):
        root = uf[name]
        shape = state.shapes.get(name)
        if root not in groups:
            channels = int(shape[1]) if shape and len(shape) > 1 else 0
            groups[root] = ChannelGroup(id="", channels=channels, tensors=[])
        groups[root].tensors.append(name)
    for name, member in state.members:
        group = groups[uf[name]]
        if member not in group.members:
            group.members.append(member)
    for frozen, attribute in ((state.frozen, "frozen"), (state.pad_frozen, "pad_frozen")):
        for name, reason in frozen:
            reasons = getattr(groups[uf[name]], attribute)
            if reason not in reasons:
                reasons.append(reason)
    result = []
    used: set[str] = set()
    for group in groups.values():
        if group.channels <= 0:
            continue  # shape vectors and scalars carry no channels
        producers = group.by_role("producer")
        base = producers[0].node if producers else group.tensors[0]
        gid = base
        while gid in used:
            gid = f"{base}#{len(used)}"
        used.add(gid)
        group.id = gid
        result.append(group)
    ids = {uf[t]: g.id for g in result for t in g.tensors}
    layout = {
        name: [(ids[uf[seg]], width) for seg, width in segments]
        for name, segments in state.layout.items()
        if all(uf[seg] in ids for seg, _ in segments)
    }
    return ChannelAnalysis(result, layout)
