"""dw-to-grouped: merge a depthwise or grouped conv's groups into groups of up to P input
channels, with block-diagonal weights (exact).

Rule: Conv with g > 1 groups of c = Cin/g input channels each, where c < P (the target's
input-channel parallelism). With k the largest divisor of g such that k*c <= P
(`merged_groups`), the conv gets g/k groups of k*c input channels; a site needs 1 < k < g
(k = g, one group, is dw-to-dense's rewrite). Math: output channel o
belongs to old group q = o // (Cout/g) and reads inputs q*c .. q*c + c - 1; those are the
inputs of new group q // k at offset (q mod k)*c. So the new weights are
W'[o, (q mod k)*c + j] = W[o, j] and zero elsewhere (`rewriter.conv_math.merge_groups`):
every output sums the same products plus zeros. dw-to-dense is the extreme k = g.

Why: an accelerator that unrolls P input channels per cycle runs a depthwise conv (c = 1)
at 1/P of that parallelism. Merged groups of P channels do k times the MACs but fill it,
and on a target whose array also unrolls output channels the depthwise conv used one
output channel per group as well. Simulated in ZigZag on edge_tpu_like (8x8 array over
output and input channels): a 200-channel 3x5 depthwise conv on a 2x96 map of PP-OCR's
text classifier takes 0.077 ms, in 25 groups of 8 channels 0.014 ms, dense 0.232 ms. On a
CPU the merged form only adds MACs; the search keeps it where the target prices it lower.
"""

from __future__ import annotations

from rewriter.conv_math import merge_groups
from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.graph_query import conv_info
from rewriter.passes.base import (
    Effect,
    MergeGroups,
    Pass,
    SearchView,
    Site,
    conv_to_edit,
    finish,
    kernel_claim,
    merged_groups,
    set_weight,
)


class DepthwiseToGrouped(Pass):
    name = "dw-to-grouped"
    exact = True
    summary = "merge a depthwise/grouped conv's groups into groups of up to P channels"
    options = ("multiple",)
    order = 7
    precedence = 55  # after the channel effects (its groups follow them), before dw-to-dense

    def __init__(self, multiple: int = 32) -> None:
        if multiple < 2:
            raise BadInputError(f"--multiple must be at least 2, not {multiple}")
        self.multiple = multiple

    def effect(self, site: Site, view: SearchView) -> Effect | None:
        """The conv's kernel gets the merged group count of the groups and channels it
        has once the channel effects are settled (inert where none merge). It claims the
        kernel: a fusion or dw-to-dense of the same conv excludes it."""
        kernel = view.kernel_of(site.nodes[0])
        if kernel is None:
            return None
        return Effect(regroup={kernel: MergeGroups(self.multiple)},
                      claims=frozenset({kernel_claim(kernel)}))

    def sites(self, model: Model) -> list[Site]:
        found = []
        for node in model.graph.nodes:
            info = conv_info(node)
            if info is None or info.groups == 1:
                continue
            groups = merged_groups(info.groups, info.cin, self.multiple)
            if groups == info.groups:
                continue
            kind = "depthwise" if info.is_depthwise else "grouped"
            found.append(Site(
                self.name, node.name, (node.name,),
                f"{kind} {info.kernel[0]}x{info.kernel[1]} conv {info.cin}->{info.cout} "
                f"(group {info.groups}) -> group {groups} of {info.cin // groups} channels",
                {"groups": info.groups, "merged": groups, "cin": info.cin,
                 "cout": info.cout},
            ))
        return found

    def apply(self, model: Model, site: Site) -> Model:
        new, node, info = conv_to_edit(model, site)
        groups = int(site.detail["merged"])  # type: ignore[arg-type]
        set_weight(new, node, "weight_grouped",
                   merge_groups(info.weight, info.groups, info.groups // groups))
        node.attrs["group"] = groups
        return finish(new)
