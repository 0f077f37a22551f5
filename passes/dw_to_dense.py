"""dw-to-dense: replace a depthwise or grouped conv by a dense conv (exact).

Rule: Conv with group > 1. Math: a grouped conv with weights W [Cout, Cin/g, K, K] equals
the dense conv with block-diagonal weights W' [Cout, Cin, K, K], W'[o, g(o)*Cin/g + j] =
W[o, j] and zero elsewhere, g(o) = o // (Cout/g). A depthwise conv (g = Cin) with channel
multiplier m (Cout = m*Cin) is the case Cin/g = 1: W'[o, i] = W[o, 0] if i == o // m.
On accelerators a dense conv keeps the whole MAC array busy, so for narrow layers the
dense form can be faster despite doing Cin/g times the MACs.
"""

from __future__ import annotations

from rewriter.conv_math import merge_groups
from rewriter.graph_io import Model
from rewriter.graph_query import ConvInfo, conv_info
from rewriter.passes.base import (
    Effect,
    MergeGroups,
    Pass,
    SearchView,
    Site,
    conv_to_edit,
    finish,
    kernel_claim,
    set_weight,
)


class DepthwiseToDense(Pass):
    """Also the mechanism of dw-to-grouped, which merges groups only up to a width:
    `regroup` says how many groups a conv gets, the rest is shared."""

    name = "dw-to-dense"
    exact = True
    summary = "replace a depthwise/grouped conv by a dense conv with block-diagonal weights"
    order = 5
    precedence = 60  # after the fusions: a fusion wins over it on a shared conv
    regroup = MergeGroups()  # (groups, input channels) -> the groups the conv gets

    def effect(self, site: Site, view: SearchView) -> Effect | None:
        """The conv's kernel gets the groups `regroup` gives it from the groups and
        channels it has once the channel effects are settled (inert where that changes
        nothing); dense: weights Cout*Cin*K*K instead of Cout*(Cin/g)*K*K. No tensor
        changes. It claims the kernel: a fusion of the same conv excludes it."""
        kernel = view.kernel_of(site.nodes[0])
        if kernel is None:
            return None
        return Effect(regroup={kernel: self.regroup}, claims=frozenset({kernel_claim(kernel)}))

    def describe(self, info: ConvInfo, groups: int) -> str:
        """What the conv becomes, for the site's description."""
        return "dense"

    def sites(self, model: Model) -> list[Site]:
        found = []
        for node in model.graph.nodes:
            info = conv_info(node)
            if info is None or info.groups == 1:
                continue
            groups = self.regroup(info.groups, info.cin)
            if groups == info.groups:
                continue
            kind = "depthwise" if info.is_depthwise else "grouped"
            found.append(Site(
                self.name, node.name, (node.name,),
                f"{kind} {info.kernel[0]}x{info.kernel[1]} conv {info.cin}->{info.cout} "
                f"(group {info.groups}) -> {self.describe(info, groups)}",
                {"groups": info.groups, "merged": groups, "cin": info.cin,
                 "cout": info.cout},
            ))
        return found

    def apply(self, model: Model, site: Site) -> Model:
        new, node, info = conv_to_edit(model, site)
        groups = int(site.detail["merged"])  # type: ignore[arg-type]
        set_weight(new, node, f"weight_{'dense' if groups == 1 else 'grouped'}",
                   merge_groups(info.weight, info.groups, info.groups // groups))
        node.attrs["group"] = groups
        return finish(new)
