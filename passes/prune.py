"""Channel pruning of coupled groups, shared by align-channels-down and depth-multiplier.

Importance of channel c of a group G: the sum over G's producers p of ||W_p[c]||_1 (the L1
norm of the filter that writes c), plus |gamma_c| of every BatchNormalization follower
(normally folded away by then). The most important channels are kept, in their order.

Removing channel set D from G edits every member of G at once, so the graph stays valid:
producers lose the filters (weight rows, bias entries) that write D; followers lose their
per-channel parameters on D (a depthwise conv its filters, bias and as many groups; BN its
four vectors; PRelu and Mul/Add/... their per-channel constants); consumers lose the input
weights that read D, at the group's offset in what they read (a consumer of a Concat reads
G's slice at its offset). On the kept channels producers and followers compute exactly
what they did, so each of G's tensors equals the original's restricted to the kept
channels (recorded as `changes.kept_channels`, composed with earlier prunings). Consumers
lose the contribution sum_{c in D} W[:, c] * x_c, so the function changes: every consumer
is listed in `changes.refit`, and `rewriter.reconstruct.refit` fits its weights on the kept
inputs to the original's output (channel pruning with least-squares reconstruction).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.analysis.channels import (
    ChannelAnalysis,
    ChannelGroup,
    analyse_channels,
    channel_params,
    output_rank,
    weight_axis,
)
from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.graph_query import const_value
from rewriter.passes.base import Namer, constant, finish

# (node name, role, input index) -> mask over that input's (or the output's) channel axis
_MaskKey = tuple[str, str, int]


def prunable(group: ChannelGroup) -> bool:
    """A group a channel rewrite may change: not frozen, written by at least one producer."""
    return not group.is_frozen and bool(group.by_role("producer"))


def paddable(group: ChannelGroup) -> bool:
    """A group that may gain channels: prunable, and nothing is infinite at 0 on them."""
    return prunable(group) and group.can_pad


def importance(model: Model, group: ChannelGroup) -> np.ndarray:
    """Per-channel importance of `group`: producers' filter L1 norms plus BN |gamma|."""
    score = np.zeros(group.channels)
    for member in group.members:
        node = model.node(member.node)
        if member.role == "producer":
            weight = np.abs(const_value(node.inputs[1]).astype(np.float64))
            axis = weight_axis(node, "producer")
            score += weight.sum(axis=tuple(a for a in range(weight.ndim) if a != axis))
        elif member.role == "follower" and node.op == "BatchNormalization":
            gamma = np.abs(const_value(node.inputs[1]).astype(np.float64))
            score += gamma[member.offset:member.offset + group.channels]
    return score


def most_important(model: Model, group: ChannelGroup, count: int) -> np.ndarray:
    """Sorted indices of the `count` most important channels (ties: the lower index)."""
    order = np.argsort(-importance(model, group), kind="stable")
    return np.sort(order[:count])


def prune_groups(model: Model, counts: Mapping[str, int]) -> Model:
    """A copy of `model` with each group `counts` names pruned to that many channels."""
    analysis = analyse_channels(model)
    groups = {g.id: g for g in analysis.groups}
    kept: dict[str, np.ndarray] = {}
    for gid, count in counts.items():
        group = groups.get(gid)
        if group is None or not prunable(group):
            raise BadInputError(f"channel group {gid} is gone, frozen or has no producer")
        if not 0 < count <= group.channels:
            raise BadInputError(f"cannot prune group {gid} from {group.channels} to {count}")
        kept[gid] = most_important(model, group, count)

    masks = _masks(model, [groups[g] for g in kept], kept)
    new = model.copy()
    nodes = {node.name: node for node in new.graph.nodes}
    namer = Namer(new.graph)
    for (name, role, index), mask in masks.items():
        node = nodes[name]
        for i, axis, _ in channel_params(node, role, index, output_rank(model, node)):
            _cut(node, i, axis, mask, namer)
        if role == "follower" and node.op == "Conv":  # depthwise: one group per channel
            node.attrs["group"] = int(mask.sum())
    _record(new, analysis, kept)
    for gid in kept:
        for member in groups[gid].by_role("consumer"):
            new.changes.needs_refit(member.node)
    return finish(new)


def _masks(model: Model, groups: list[ChannelGroup], kept: Mapping[str, np.ndarray]
           ) -> dict[_MaskKey, np.ndarray]:
    """One keep-mask per edited weight axis, over that axis's full current width: a node
    reading a Concat of several pruned groups gets all their cuts in one mask, so offsets
    need no bookkeeping."""
    masks: dict[_MaskKey, np.ndarray] = {}
    for group in groups:
        drop = np.setdiff1d(np.arange(group.channels), kept[group.id])
        for member in group.members:
            node = model.node(member.node)
            if member.role == "producer":
                width = group.channels
            else:
                tensor = node.inputs[0] if member.role == "consumer" else node.outputs[0]
                width = model.shape(tensor)[1]
            key = (member.node, member.role, member.input_index)
            mask = masks.setdefault(key, np.ones(width, dtype=bool))
            mask[member.offset + drop] = False
    return masks


def _cut(node: gs.Node, index: int, axis: int, mask: np.ndarray, namer: Namer) -> None:
    """Keep only the `mask` entries along `axis` of constant input `index`."""
    values = const_value(node.inputs[index])
    node.inputs[index] = constant(namer, f"{node.name}.in{index}_pruned",
                                  np.compress(mask, values, axis=axis))


def _record(new: Model, analysis: ChannelAnalysis, kept: Mapping[str, np.ndarray]) -> None:
    """kept_channels for every tensor carrying a pruned group, Concat results included."""
    for tensor, segments in analysis.layout.items():
        if not any(gid in kept for gid, _ in segments):
            continue
        parts, offset = [], 0
        for gid, width in segments:
            parts.append(offset + (kept[gid] if gid in kept else np.arange(width)))
            offset += width
        new.changes.prune(tensor, np.concatenate(parts))
