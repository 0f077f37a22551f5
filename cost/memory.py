"""Memory against a budget: parameter bytes and peak activation bytes (liveness).

The numbers come from rewriter.analysis.memory; this module says whether a model fits a
user's budget and, when it does not, which constraint binds and by how much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rewriter.analysis.memory import MemoryStats, memory_stats
from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.tables import human_bytes

MAX_BYTES = 2**60  # a budget beyond any device: no byte count here reaches it

_SUFFIX = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20,
           "MIB": 2**20, "G": 2**30, "GB": 2**30, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    """'512K', '3.5M', '1G', '1048576' -> bytes (binary multiples)."""
    raw = text.strip().upper().replace(" ", "")
    number = raw.rstrip("KMGIB")
    suffix = raw[len(number):]
    try:
        value = float(number)
        factor = _SUFFIX[suffix]
    except (ValueError, KeyError):
        raise BadInputError(f"bad size {text!r}: expected bytes with an optional K, M or G "
                            "suffix, e.g. 4M") from None
    if not math.isfinite(value):
        raise BadInputError(f"bad size {text!r}: must be a finite number")
    if value <= 0:
        raise BadInputError(f"bad size {text!r}: must be positive")
    size = value * factor
    if not math.isfinite(size) or size > MAX_BYTES:
        raise BadInputError(f"bad size {text!r}: larger than {MAX_BYTES // 2**50} PiB")
    if size < 1:
        raise BadInputError(f"bad size {text!r}: less than one byte")
    return int(size)


@dataclass(frozen=True)
class Violation:
    constraint: str  # "params" or "activations"
    value: int
    limit: int

    @property
    def over_by(self) -> int:
        return self.value - self.limit

    def describe(self) -> str:
        what = "parameters" if self.constraint == "params" else "peak activations"
        return (f"{what} {human_bytes(self.value)} exceed the budget {human_bytes(self.limit)} "
                f"by {human_bytes(self.over_by)} ({100 * self.over_by / self.limit:.1f}%)")


@dataclass(frozen=True)
class BudgetCheck:
    stats: MemoryStats
    violations: tuple[Violation, ...]

    @property
    def fits(self) -> bool:
        return not self.violations

    @property
    def binding(self) -> Violation | None:
        """The constraint exceeded by the largest share of its limit."""
        return max(self.violations, key=lambda v: v.over_by / v.limit, default=None)


def check_budget(stats: MemoryStats, max_param_bytes: int | None = None,
                 max_activation_bytes: int | None = None) -> BudgetCheck:
    found = []
    if max_param_bytes is not None and stats.param_bytes > max_param_bytes:
        found.append(Violation("params", stats.param_bytes, max_param_bytes))
    if max_activation_bytes is not None and stats.peak_activation_bytes > max_activation_bytes:
        found.append(Violation("activations", stats.peak_activation_bytes, max_activation_bytes))
    return BudgetCheck(stats, tuple(found))


def check_model_budget(model: Model, max_param_bytes: int | None = None,
                       max_activation_bytes: int | None = None) -> BudgetCheck:
    return check_budget(memory_stats(model), max_param_bytes, max_activation_bytes)
