"""align-channels-down: prune a channel group down to a multiple of P (NOT exact).

Rule: a coupled channel group (rewriter.analysis.channels) that is not frozen, has at
least one producer, and whose channel count C is above P and not a multiple of P. It keeps
C' = floor(C/P)*P channels: a P-wide accelerator spends as long on P+1 channels as on 2P,
so the C - C' channels past the last full tile cost a whole tile of latency.

Importance of channel c: the sum over the group's producers of the L1 norm of the filter
writing c, plus |gamma_c| of any BatchNormalization follower. The C' most important
channels are kept; the others are removed from every member of the group at once
(rewriter.passes.prune): producers' filters and biases, followers' per-channel parameters
(depthwise filters and group count, BN, per-channel constants), consumers' input weights,
at the group's offset where a consumer reads it through a Concat.

Math: every tensor of the group equals the original's restricted to the kept channels, so
the model keeps its graph outputs' shapes; each consumer y = W x + b loses the term
sum_{c removed} W[:, c] x_c, which changes the function. The consumers are listed in
`model.changes.refit`: rewriter.reconstruct.refit then fits their weights on the kept
channels to the original's output by ridge least squares from calibration data.
"""

from __future__ import annotations

from rewriter.graph_io import Model
from rewriter.passes.align_channels_up import AlignChannels
from rewriter.passes.base import Effect, SearchView, SetTo, Site, group_claim
from rewriter.passes.prune import prune_groups


class AlignChannelsDown(AlignChannels):
    name = "align-channels-down"
    exact = False
    summary = "prune a coupled channel group down to a multiple of P (weights refitted)"
    verb = "prune"
    consumers_note = "consumers refitted"
    order = 2
    precedence = 20

    def effect(self, site: Site, view: SearchView) -> Effect:
        """The group goes from C to C' = floor(C/P)*P, unless an earlier effect (a depth
        multiplier) already set its count: both claim the group."""
        to = int(site.detail["to"])  # type: ignore[call-overload]
        return Effect(channels={site.id: SetTo(to)}, claims=frozenset({group_claim(site.id)}))

    def target(self, channels: int) -> int:
        """floor(C/P)*P, or C itself where that would leave less than one tile of P."""
        aligned = channels // self.multiple * self.multiple
        return aligned if aligned > 0 else channels

    def apply(self, model: Model, site: Site) -> Model:
        new = prune_groups(model, {site.id: self.target(int(site.detail["channels"]))})
        new.changes.passes.append(f"{self.name}@{site.id}")
        return new
