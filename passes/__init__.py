"""Graph rewrites, one rule per module; each says whether it preserves the function.

`PASSES` maps a pass name to its class; `get_pass(name, **options)` builds one.
"""

from __future__ import annotations

from rewriter.errors import BadInputError
from rewriter.passes.align_channels_up import AlignChannelsUp
from rewriter.passes.base import Pass, Site
from rewriter.passes.dw_to_dense import DepthwiseToDense
from rewriter.passes.fold_bn import FoldBatchNorm
from rewriter.passes.fuse_ibn import FuseIBN
from rewriter.passes.fuse_linear_conv import FuseLinearConv

PASSES: dict[str, type[Pass]] = {
    cls.name: cls
    for cls in (FoldBatchNorm, DepthwiseToDense, FuseLinearConv, AlignChannelsUp, FuseIBN)
}
EXACT_PASSES = [name for name, cls in PASSES.items() if cls.exact]


def get_pass(name: str, multiple: int | None = None) -> Pass:
    """Build the pass called `name`; `multiple` is P for the channel-alignment passes."""
    cls = PASSES.get(name)
    if cls is None:
        raise BadInputError(f"unknown pass {name!r}; passes are: {', '.join(PASSES)}")
    if cls is AlignChannelsUp:
        return cls(multiple) if multiple is not None else cls()
    return cls()


__all__ = ["EXACT_PASSES", "PASSES", "Pass", "Site", "get_pass"]
