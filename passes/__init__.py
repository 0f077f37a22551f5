"""Graph rewrites, one rule per module; each says whether it preserves the function.

`PASSES` maps a pass name to its class; `get_pass(name, **options)` builds one.
"""

from __future__ import annotations

from rewriter.errors import BadInputError
from rewriter.passes.align_channels_down import AlignChannelsDown
from rewriter.passes.align_channels_up import AlignChannelsUp
from rewriter.passes.base import Pass, Site
from rewriter.passes.depth_multiplier import DepthMultiplier
from rewriter.passes.dw_to_dense import DepthwiseToDense
from rewriter.passes.dw_to_grouped import DepthwiseToGrouped
from rewriter.passes.fold_bn import FoldBatchNorm
from rewriter.passes.fuse_ibn import FuseIBN
from rewriter.passes.fuse_linear_conv import FuseLinearConv
from rewriter.passes.trim_kernel import TrimKernel

PASSES: dict[str, type[Pass]] = {
    cls.name: cls
    for cls in (FoldBatchNorm, TrimKernel, DepthwiseToDense, DepthwiseToGrouped, FuseLinearConv,
                AlignChannelsUp, FuseIBN, AlignChannelsDown, DepthMultiplier)
}
EXACT_PASSES = [name for name, cls in PASSES.items() if cls.exact]
# The passes giving the canonical form the search starts from, in registry order.
CANONICAL_PASSES: list[type[Pass]] = [cls for cls in PASSES.values() if cls.canonical]
# The passes the search makes genes from, in the order it builds them.
SEARCH_PASSES: list[type[Pass]] = sorted((cls for cls in PASSES.values() if cls.order is not None),
                                         key=lambda cls: cls.order or 0)


def get_pass(name: str, multiple: int | None = None, *,
             multiplier: float | None = None) -> Pass:
    """Build the pass called `name`; `multiple` is P for the channel passes (default 32),
    `multiplier` the factor of depth-multiplier (default 0.5)."""
    cls = PASSES.get(name)
    if cls is None:
        raise BadInputError(f"unknown pass {name!r}; passes are: {', '.join(PASSES)}")
    if multiplier is not None and "multiplier" not in cls.options:
        takers = ", ".join(n for n, c in PASSES.items() if "multiplier" in c.options)
        raise BadInputError(f"--multiplier applies to {takers} only, not {name}")
    given = {"multiple": multiple, "multiplier": multiplier}
    options = {key: value for key, value in given.items()
               if value is not None and key in cls.options}
    return cls(**options)  # type: ignore[call-arg]


__all__ = ["CANONICAL_PASSES", "EXACT_PASSES", "PASSES", "SEARCH_PASSES", "Pass", "Site",
           "get_pass"]
