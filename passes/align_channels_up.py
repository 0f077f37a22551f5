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
Groups reaching a model output are frozen, so the model's outputs keep their shapes; a
group something divides by, or raises to a power that is not positive, is left as it is
(an added 0 would be infinite there), though it may still be pruned.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np

from rewriter.analysis.channels import ChannelGroup, channel_groups, channel_params, output_rank
from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.graph_query import const_value
from rewriter.passes.base import Effect, Namer, Pass, RoundUp, SearchView, Site, constant, finish
from rewriter.passes.prune import paddable, prunable


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
    options = ("multiple",)

    @staticmethod
    def changeable(group: ChannelGroup) -> bool:
        """Whether the pass may change `group`'s channel count (shrinking: `prunable`)."""
        return prunable(group)

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
            if not self.changeable(group):
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
    order = 4
    precedence = 30  # after the multiplier and align-down: it pads what they leave

    def effect(self, site: Site, view: SearchView) -> Effect:
        """The group's count C (as earlier effects left it) becomes ceil(C/P)*P; inert
        where C is already a multiple of P. It claims nothing: it composes with them."""
        return Effect(channels={site.id: RoundUp(self.multiple)})

    @staticmethod
    def changeable(group: ChannelGroup) -> bool:
        return paddable(group)

    def target(self, channels: int) -> int:
        return -(-channels // self.multiple) * self.multiple

    def apply(self, model: Model, site: Site) -> Model:
        # Analysed on `model`, whose shapes `sites` has usually inferred already; edited on
        # a copy, found by name.
        groups = {g.id: g for g in channel_groups(model)}
        group = groups.get(site.id)
        if group is None or not paddable(group):
            raise BadInputError(f"channel group {site.id} is gone, frozen or has no producer")
        pad = self.target(group.channels) - group.channels
        new = model.copy()
        nodes = {node.name: node for node in new.graph.nodes}
        namer = Namer(new.graph)
        # Edit each node once, inserting at the highest offset first so offsets stay valid.
        # New channels go after the group's slice (a producer's slice is all its channels).
        for member in sorted(group.members, key=lambda m: -m.offset):
            node = nodes[member.node]
            for index, axis, fill in channel_params(node, member.role, member.input_index,
                                                    output_rank(model, node)):
                values = const_value(node.inputs[index])
                node.inputs[index] = constant(
                    namer, f"{node.name}.in{index}_aligned",
                    _insert(values, axis, member.offset + group.channels, pad, fill))
            if member.role == "follower" and node.op == "Conv":  # depthwise
                node.attrs["group"] = int(node.attrs.get("group", 1)) + pad
        return finish(new)
