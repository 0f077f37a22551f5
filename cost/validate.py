"""How good is a target's estimate? Whole models measured end to end against their estimates.

For the measured CPU target the per-kernel estimator is fitted on single-op measurements
only, so every whole model here is held out. Each model is timed in onnxruntime (one
intra-op thread, as the cpu-ort measurements are; warm-up, then the median of `repeats` runs) and
compared with the estimate: mean absolute percentage error (MAPE), the share of models
within +-10%, Spearman's rank correlation, and the worst cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from rewriter.cost.estimate import Target
from rewriter.cost.regression import spearman
from rewriter.graph_io import Model, model_from_proto
from rewriter.verify import make_inputs


@dataclass(frozen=True)
class Case:
    name: str
    model: Model
    feeds: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class Row:
    name: str
    measured_ms: float
    estimated_ms: float

    @property
    def error(self) -> float:
        return (self.estimated_ms - self.measured_ms) / self.measured_ms


@dataclass
class ValidationReport:
    target: str
    rows: list[Row]

    @property
    def mape(self) -> float:
        return float(np.mean([abs(r.error) for r in self.rows])) if self.rows else 0.0

    @property
    def within_10pct(self) -> float:
        return float(np.mean([abs(r.error) <= 0.10 for r in self.rows])) if self.rows else 0.0

    @property
    def spearman(self) -> float:
        if len(self.rows) < 2:
            return float("nan")
        return spearman([r.measured_ms for r in self.rows], [r.estimated_ms for r in self.rows])

    def worst(self, n: int = 5) -> list[Row]:
        return sorted(self.rows, key=lambda r: -abs(r.error))[:n]

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "models": len(self.rows), "mape": self.mape,
                "within_10pct": self.within_10pct, "spearman": self.spearman,
                "rows": [{**asdict(r), "error": r.error} for r in self.rows]}


def zoo_cases(quick: bool = False) -> list[Case]:
    """Zoo models at several widths and resolutions (BN folded, as a deployed export)."""
    from rewriter import zoo

    widths = (0.5, 1.0) if quick else (0.35, 0.5, 0.75, 1.0)
    resolutions = (128,) if quick else (96, 160, 224)
    cases = []
    for name in zoo.NAMES:
        for width in widths:
            for res in resolutions:
                proto = zoo.build(name, width=width, resolution=res, fold_bn=True)
                cases.append(Case(f"{name}-w{width:g}-r{res}", model_from_proto(proto)))
    return cases


def validate(
    target: Target,
    cases: Iterable[Case],
    *,
    repeats: int = 30,
    rounds: int = 3,
    threads: int = 1,
    progress: bool = True,
    measure: Callable[..., float] | None = None,
) -> ValidationReport:
    """Each model is timed in `rounds` interleaved rounds (all models, then all again) and
    the lowest round median is kept, so a burst of load on a shared machine spoils one
    round of one model rather than its only measurement."""
    from rewriter.cost.measure import wall_time

    timer = measure or wall_time
    cases = list(cases)
    protos = [c.model.to_onnx() for c in cases]
    feeds = [c.feeds or {k: v[:1] for k, v in make_inputs(c.model, batch=1).items()}
             for c in cases]
    best = [float("inf")] * len(cases)
    steps = tqdm(total=rounds * len(cases), desc=f"validating {target.name}", unit="run",
                 disable=not progress)
    for _ in range(rounds):
        for i, proto in enumerate(protos):
            best[i] = min(best[i], timer(proto, feeds[i], repeats=repeats, threads=threads))
            steps.update(1)
    steps.close()
    rows = [Row(c.name, best[i], target.estimate(c.model).latency_ms)
            for i, c in enumerate(cases)]
    return ValidationReport(target.name, rows)
