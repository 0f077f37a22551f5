"""Search over rewrite sites: the space, the strategies, the optimize driver."""

from rewriter.search.driver import Budget, Decision, Result, optimize
from rewriter.search.strategies import STRATEGIES

__all__ = ["Budget", "Decision", "Result", "STRATEGIES", "optimize"]
