"""dw-to-dense: replace a depthwise or grouped conv by a dense conv (exact).

Rule: Conv with group > 1. Math: a grouped conv with weights W [Cout, Cin/g, K, K] equals
the dense conv with block-diagonal weights W' [Cout, Cin, K, K], W'[o, g(o)*Cin/g + j] =
W[o, j] and zero elsewhere, g(o) = o // (Cout/g). A depthwise conv (g = Cin) with channel
multiplier m (Cout = m*Cin) is the case Cin/g = 1: W'[o, i] = W[o, 0] if i == o // m.
On accelerators a dense conv keeps the whole MAC array busy, so for narrow layers the
dense form can be faster despite doing Cin/g times the MACs.
"""

from __future__ import annotations

from rewriter.conv_math import grouped_to_dense
from rewriter.graph_io import Model
from rewriter.graph_query import conv_info
from rewriter.passes.base import (
    Effect,
    Pass,
    SearchView,
    Site,
    conv_to_edit,
    finish,
    kernel_claim,
    set_weight,
)


class DepthwiseToDense(Pass):
    name = "dw-to-dense"
    exact = True
    summary = "replace a depthwise/grouped conv by a dense conv with block-diagonal weights"
    order = 5
    precedence = 60  # after the fusions: a fusion wins over it on a shared conv

    def effect(self, site: Site, view: SearchView) -> Effect | None:
        """The conv's kernel gets groups 1 (kind conv): weights Cout*Cin*K*K instead of
        Cout*(Cin/g)*K*K. No tensor changes."""
        kernel = view.kernel_of(site.nodes[0])
        if kernel is None:
            return None
        return Effect(dense=(kernel,), claims=frozenset({kernel_claim(kernel)}))

    def sites(self, model: Model) -> list[Site]:
        found = []
        for node in model.graph.nodes:
            info = conv_info(node)
            if info is None or info.groups == 1:
                continue
            kind = "depthwise" if info.is_depthwise else "grouped"
            found.append(Site(
                self.name, node.name, (node.name,),
                f"{kind} {info.kernel[0]}x{info.kernel[1]} conv {info.cin}->{info.cout} "
                f"(group {info.groups}) -> dense",
                {"groups": info.groups, "cin": info.cin, "cout": info.cout},
            ))
        return found

    def apply(self, model: Model, site: Site) -> Model:
        new, node, info = conv_to_edit(model, site)
        set_weight(new, node, "weight_dense", grouped_to_dense(info.weight, info.groups))
        node.attrs["group"] = 1
        return finish(new)
