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

from rewriter.errors import BadInputError
from rewriter.graph_query import ConvInfo
from rewriter.passes.base import MergeGroups
from rewriter.passes.dw_to_dense import DepthwiseToDense


class DepthwiseToGrouped(DepthwiseToDense):
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
        self.regroup = MergeGroups(multiple)

    def describe(self, info: ConvInfo, groups: int) -> str:
        return f"group {groups} of {info.cin // groups} channels"
