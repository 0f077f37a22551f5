"""depth-multiplier: scale every prunable channel group by a factor m (NOT exact).

Rule: one site per model, when some group changes. Every channel group that is not frozen
and has a producer goes from C to C' = min(C, max(P, round(C*m/P)*P)) channels (rounding
half up): a multiple of P near C*m, never below one tile of P, never above C. Groups whose
count does not change are left alone. This is the width multiplier of MobileNet, applied
to a trained network and rounded to what a P-wide accelerator runs without waste.

Importance of channel c of a group: the sum over its producers of the L1 norm of the filter
writing c, plus |gamma_c| of any BatchNormalization follower; each group keeps its C' most
important channels and loses the others in every member (rewriter.passes.prune, as in
align-channels-down): producers' filters, followers' per-channel parameters, consumers'
input weights (at the group's offset inside a Concat).

Math: each pruned tensor equals the original's restricted to its kept channels as long as
its producers' inputs are unchanged; every consumer y = W x + b loses the terms of its
removed inputs (and its own inputs differ once upstream groups are pruned), so the function
changes. All consumers are listed in `model.changes.refit`, and rewriter.reconstruct.refit
fits them layer by layer, in topological order, to the original's outputs restricted to
the kept channels, by ridge least squares from calibration data.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import floor

from rewriter.analysis.channels import channel_groups
from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.passes.base import Effect, Pass, SearchView, SetTo, Site, group_claim
from rewriter.passes.prune import prunable, prune_groups


class DepthMultiplier(Pass):
    name = "depth-multiplier"
    exact = False
    summary = "scale every prunable channel group by m, rounded to multiples of P (refitted)"
    options = ("multiple", "multiplier")
    order = 1
    precedence = 10

    @classmethod
    def variants(cls, multiple: int, multipliers: Sequence[float]) -> list[DepthMultiplier]:
        """One instance, so one gene, per multiplier the search offers."""
        return [cls(multiple, multiplier) for multiplier in multipliers]

    def effect(self, site: Site, view: SearchView) -> Effect:
        """Each changed group gets C'. One multiplier is effective per genome, the smallest
        (rank m), and it claims its groups, so align-down on them is inert."""
        groups = dict(site.detail["groups"])  # type: ignore[call-overload]
        return Effect(channels={gid: SetTo(int(pair[1])) for gid, pair in groups.items()},
                      claims=frozenset({(self.name,), *map(group_claim, groups)}),
                      rank=self.multiplier)

    def __init__(self, multiple: int = 32, multiplier: float = 0.5) -> None:
        if multiple < 1:
            raise BadInputError(f"--multiple must be at least 1, not {multiple}")
        if not 0 < multiplier <= 1:
            raise BadInputError(f"--multiplier must be in (0, 1], not {multiplier:g}")
        self.multiple = multiple
        self.multiplier = multiplier

    def target(self, channels: int) -> int:
        p = self.multiple
        return min(channels, max(p, floor(channels * self.multiplier / p + 0.5) * p))

    def sites(self, model: Model) -> list[Site]:
        changed = {g.id: g for g in channel_groups(model)
                   if prunable(g) and self.target(g.channels) != g.channels}
        if not changed:
            return []
        groups = {gid: [g.channels, self.target(g.channels)] for gid, g in changed.items()}
        before = sum(g.channels for g in changed.values())
        after = sum(new for _, new in groups.values())
        nodes = tuple(dict.fromkeys(m.node for g in changed.values() for m in g.members))
        return [Site(
            self.name, f"x{self.multiplier:g}", nodes,
            f"scale {len(groups)} channel groups by {self.multiplier:g} at P={self.multiple}: "
            f"{before} -> {after} channels",
            {"multiplier": self.multiplier, "groups": groups},
        )]

    def apply(self, model: Model, site: Site) -> Model:
        groups = dict(site.detail["groups"])  # type: ignore[call-overload]
        new = prune_groups(model, {gid: int(pair[1]) for gid, pair in groups.items()})
        new.changes.passes.append(f"{self.name}@{site.id}")
        return new
