"""align-channels-up: zero-pad a channel group to a multiple of P (exact).

Rule: a coupled channel group (rewriter.analysis.channels) that is not frozen, has at
least one producer, and whose channel count C is not a multiple of P. Let C' = ceil(C/P)*P
and k = C' - C. Math: every producer gets k zero filters and zero bias, so the new channels
carry 0 (after an activation, act(0), which may be non-zero: 0.5 for Sigmoid); every
consumer (dense conv, Gemm, MatMul) gets zero input weights on them, so they contribute
nothing whatever they carry. Followers in between get harmless parameters: BN scale 1,
shift 0, mean 0, var 1; a depthwise conv k zero filters and group + k; a per-channel
constant in Mul/Div 1, in Add/Sub 0. Inside a Concat the new channels sit at the end of
the group's slice, and consumers of the concatenation get their zero weights there.
Groups reaching a model output are frozen, so the model's outputs keep their shapes.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.analysis.channels import FOLLOWER_INPUTS, NEUTRAL, channel_groups, weight_axis
from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.graph_query import const_value, is_empty_input
from rewriter.passes.base import Namer, Pass, Site, constant, finish


def _insert(values: np.ndarray, axis: int, at: int, count: int, fill: float) -> np.ndarray:
    shape = list(values.shape)
    shape[axis] = count
    return np.concatenate(
        [np.take(values, range(at), axis=axis), np.full(shape, fill, dtype=values.dtype),
         np.take(values, range(at, values.shape[axis]), axis=axis)], axis=axis)


class AlignChannels(Pass):
    """What align-channels-up and -down share: P, and one site per free group (not frozen,
    with a producer) whose count the pass would change, its id the group's id."""

    verb: ClassVar[str]  # how the site's description names the change
    consumers_note: ClassVar[str] = "consumers"

    def __init__(self, multiple: int = 32) -> None:
        if multiple < 2:
            raise BadInputError(f"--multiple must be at least 2, not {multiple}")
        self.multiple = multiple

    @abstractmethod
    def target(self, channels: int) -> int:
        """The channel count a group of `channels` is aligned to."""

    def sites(self, model: Model) -> list[Site]:
        found = []
        for group in channel_groups(model):
            if group.is_frozen or not group.by_role("producer"):
                continue
            if self.target(group.channels) == group.channels:
                continue
            found.append(Site(
                self.name, group.id, tuple(m.node for m in group.members),
                f"{self.verb} group {group.id} from {group.channels} to "
                f"{self.target(group.channels)} channels ({len(group.by_role('producer'))} "
                f"producers, {len(group.by_role('consumer'))} {self.consumers_note})",
                {"channels": group.channels, "to": self.target(group.channels)},
            ))
        return found


class AlignChannelsUp(AlignChannels):
    name = "align-channels-up"
    exact = True
    summary = "zero-pad a coupled channel group up to a multiple of P"
    verb = "pad"

    def target(self, channels: int) -> int:
        return -(-channels // self.multiple) * self.multiple

    def apply(self, model: Model, site: Site) -> Model:
        new = model.copy()
        groups = {g.id: g for g in channel_groups(new)}
        group = groups.get(site.id)
        if group is None or group.is_frozen:
            raise BadInputError(f"channel group {site.id} is gone or frozen")
        pad = self.target(group.channels) - group.channels
        namer = Namer(new.graph)
        # Edit each node once, inserting at the highest offset first so offsets stay valid.
        for member in sorted(group.members, key=lambda m: -m.offset):
            node = new.node(member.node)
            at = member.offset + group.channels
            if member.role == "producer":
                _pad_producer(node, pad, namer)
            elif member.role == "consumer":
                _pad_consumer(node, at, pad, namer)
            else:
                rank = len(new.shapes.get(node.outputs[0].name, (0, 0, 0, 0)))
                _pad_follower(node, member.input_index, at, pad, namer, rank)
        return finish(new)


def _replace(node: gs.Node, index: int, values: np.ndarray, namer: Namer, tag: str) -> None:
    node.inputs[index] = constant(namer, f"{node.name}.{tag}_aligned", values)


def _pad_producer(node: gs.Node, pad: int, namer: Namer) -> None:
    weight = const_value(node.inputs[1])
    axis = weight_axis(node, "producer")
    _replace(node, 1, _insert(weight, axis, weight.shape[axis], pad, 0.0), namer, "weight")
    if len(node.inputs) > 2 and not is_empty_input(node.inputs[2]):
        bias = const_value(node.inputs[2])
        if bias.size > 1:
            flat = bias.reshape(-1)
            grown = _insert(flat, 0, flat.size, pad, 0.0)
            _replace(node, 2, grown.reshape(bias.shape[:-1] + (grown.size,)) if bias.ndim > 1
                     else grown, namer, "bias")


def _pad_consumer(node: gs.Node, at: int, pad: int, namer: Namer) -> None:
    weight = const_value(node.inputs[1])
    _replace(node, 1, _insert(weight, weight_axis(node, "consumer"), at, pad, 0.0), namer,
             "weight")


def _pad_follower(node: gs.Node, index: int, at: int, pad: int, namer: Namer, rank: int) -> None:
    if node.op == "Conv":  # depthwise: its filters are the channels
        _replace(node, 1, _insert(const_value(node.inputs[1]), 0, at, pad, 0.0), namer, "weight")
        if len(node.inputs) > 2 and not is_empty_input(node.inputs[2]):
            _replace(node, 2, _insert(const_value(node.inputs[2]), 0, at, pad, 0.0), namer, "bias")
        node.attrs["group"] = int(node.attrs.get("group", 1)) + pad
        return
    if node.op in FOLLOWER_INPUTS:
        for i, fill in FOLLOWER_INPUTS[node.op].items():
            if i < len(node.inputs) and const_value(node.inputs[i]) is not None:
                values = const_value(node.inputs[i])
                axis = 0 if values.ndim == 1 else 1
                _replace(node, i, _insert(values, axis, at, pad, fill), namer, f"param{i}")
        return
    values = const_value(node.inputs[index])
    axis = 1 - (rank - values.ndim)  # channel axis of the constant once broadcast
    _replace(node, index, _insert(values, axis, at, pad, NEUTRAL[node.op]), namer, f"const{index}")
