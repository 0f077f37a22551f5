"""Pairs of models whose measured latency gain checks a target's estimated gain.

The rewrites to check are the search's own choices, so this lives above the cost model
(`rewriter.cost.validate.validate_gains` measures the pairs; the cost package never
imports the search).
"""

from __future__ import annotations

from rewriter.cost.estimate import Target
from rewriter.cost.validate import Case, Pair
from rewriter.passes import get_pass
from rewriter.rewrite import apply_pass
from rewriter.search.driver import optimize


def rewrite_pairs(case: Case, target: Target) -> list[Pair]:
    """(canonical BN-folded model, rewritten) pairs of `case`: the exact rewrites
    `rewriter.optimize` keeps for `target`, and every fuse-ibn site applied. A rewrite that
    changes nothing (no site, or none kept) gives no pair."""
    folded = apply_pass(case.model, get_pass("fold-bn")).model
    pairs = []
    result = optimize(folded, target, exact=True, inputs=case.feeds)  # verified on feeds
    if result.decisions:
        pairs.append(Pair(case.name, "optimize", folded, result.model))
    fused = apply_pass(folded, get_pass("fuse-ibn"))
    if fused.applied:
        pairs.append(Pair(case.name, "fuse-ibn", folded, fused.model))
    return pairs
