"""How good is a target's estimate? Whole models measured end to end against their estimates.

For the measured CPU target the per-kernel estimator is fitted on single-op measurements
only, so every whole model here is held out. Each model is timed in onnxruntime (one
intra-op thread, as the cpu-ort measurements are; warm-up, then the median of `repeats` runs) and
compared with the estimate: mean absolute percentage error (MAPE), the share of models
within +-10%, Spearman's rank correlation, and the worst cases. `validate_by` takes any
other "device" (the ZigZag simulator, `cost.zigzag_models`).

`time_kernels` times every distinct kernel a target prices (`Target.parts`) as a one-op
model now; with those times in place of the regressor's (`Target.set_kernel_times`) the estimate
keeps only what one-op timings miss of a kernel inside a model
(benchmarks/cost_kernels.py). Nothing is fitted on them.

What the search needs most is the sign of a rewrite's gain: `rewrite_pairs` makes
(before, after) pairs of a model and its rewrites, and `validate_gains` compares measured
and estimated gains (`GainReport.sign_agreement`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from rewriter.cost.estimate import Target
from rewriter.cost.kernels import Part
from rewriter.cost.measure import measure_specs, session_wall_time
from rewriter.cost.measurements import Measurement, MeasurementError
from rewriter.cost.one_op import one_op_model
from rewriter.cost.opspec import OpSpec
from rewriter.cost.regression import spearman
from rewriter.cost.retime import SpeedCheck, machine_speed, retimable
from rewriter.graph_io import Model, model_from_proto
from rewriter.runtime import session
from rewriter.tables import table
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
    speed: SpeedCheck | None = None  # set when the target's ops were re-timed (cost.retime)

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

    def summary(self) -> str:
        return (f"{len(self.rows)} models on {self.target}: MAPE {100 * self.mape:.1f}%, "
                f"within +-10% {100 * self.within_10pct:.0f}%, Spearman {self.spearman:.3f}")

    def text(self, measured: str = "measured ms", worst: int = 3) -> str:
        """A table of the models, the summary line and the `worst` cases."""
        rows = [[r.name, f"{r.measured_ms:.3f}", f"{r.estimated_ms:.3f}",
                 f"{100 * r.error:+.1f}%"] for r in self.rows]
        worst_cases = ", ".join(f"{r.name} {100 * r.error:+.0f}%" for r in self.worst(worst))
        retimed = f"\nestimates scaled by the machine's speed now: {self.speed.summary()}" \
            if self.speed else ""
        return (f"{table(['model', measured, 'estimated ms', 'error'], rows)}\n\n"
                f"{self.summary()}\nworst: {worst_cases}{retimed}")

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "models": len(self.rows), "mape": self.mape,
                "within_10pct": self.within_10pct, "spearman": self.spearman,
                "speed_ratio": self.speed.ratio if self.speed else None,
                "rows": [{**asdict(r), "error": r.error} for r in self.rows]}


def zoo_cases(quick: bool = False, widths: Sequence[float] | None = None,
              resolutions: Sequence[int] | None = None) -> list[Case]:
    """Zoo models at several widths and resolutions (BN folded, as a deployed export)."""
    from rewriter import zoo

    widths = widths or ((0.5, 1.0) if quick else (0.35, 0.5, 0.75, 1.0))
    resolutions = resolutions or ((128,) if quick else (96, 160, 224))
    cases = []
    for name in zoo.NAMES:
        for width in widths:
            for res in resolutions:
                proto = zoo.build(name, width=width, resolution=res, fold_bn=True)
                cases.append(Case(f"{name}-w{width:g}-r{res}", model_from_proto(proto)))
    return cases


def paddleocr_cases(keys: Sequence[str] = ("cls", "det")) -> list[Case]:
    """PaddleOCR's models from the rapidocr wheel (`rewriter.samples`) at their analysis
    shapes; the detector gets a synthetic text image, its output being saturated on noise,
    too flat to verify a rewrite on."""
    from rewriter.graph_io import load_model
    from rewriter.samples import SHAPES, rapidocr_models, text_image

    return [Case(f"paddleocr-{key}", load_model(path, SHAPES[key]),
                 {"x": text_image(*SHAPES[key]["x"][2:], seed=0)} if key == "det" else None)
            for key, path in rapidocr_models(keys).items()]


def measure_cases(cases: Sequence[Case], *, repeats: int = 30, rounds: int = 3,
                  threads: int = 1, progress: bool = True) -> list[float]:
    """Median wall time of each case in ms. Each model is timed in `rounds` interleaved
    rounds (all models, then all again) and the lowest round median is kept, so a burst of
    load on a shared machine spoils one round of one model rather than its only
    measurement."""
    # one session per model for all rounds; onnxruntime infers the shapes it needs
    sessions = [session(c.model.to_onnx(infer_shapes=False), threads) for c in cases]
    feeds = [c.feeds or make_inputs(c.model, batch=1) for c in cases]
    best = [float("inf")] * len(cases)
    steps = tqdm(total=rounds * len(cases), desc="timing models", unit="run",
                 disable=not progress)
    for _ in range(rounds):
        for i, timed in enumerate(sessions):
            best[i] = min(best[i], session_wall_time(timed, feeds[i], repeats=repeats))
            steps.update(1)
    steps.close()
    return best


def validate(
    target: Target,
    cases: Iterable[Case],
    *,
    repeats: int = 30,
    rounds: int = 3,
    threads: int = 1,
    progress: bool = True,
    retime_ops: int = 0,
) -> ValidationReport:
    """Every case measured on this machine (`measure_cases`) against its estimate.

    retime_ops > 0: right after the models, that many of the target's own ops are timed
    again (`cost.retime`) and its measured kernel times scaled by how fast they run now,
    so that the models and the ops they are estimated from are compared in one machine
    state; the report keeps the ratio (`speed`)."""
    cases = list(cases)
    # one clear error before minutes of timing, not after
    rows = retimable(target) if retime_ops else None
    measured = measure_cases(cases, repeats=repeats, rounds=rounds, threads=threads,
                             progress=progress)
    if retime_ops:
        return validate_retimed(target, cases, measured, retime_ops, threads=threads,
                                rows=rows)
    return validate_by(target, cases, lambda _: measured)


def validate_retimed(target: Target, cases: Sequence[Case], measured: Sequence[float],
                     ops: int, *, threads: int = 1, rows: list[Measurement] | None = None,
                     parts: Sequence[Sequence[Part]] | None = None) -> ValidationReport:
    """Cases already `measured` (ms) against estimates with `ops` of the target's own ops
    timed again now and its measured kernel times scaled by how fast they run
    (`cost.retime`; `rows`: `retimable(target)`, when the caller has it; `parts`: as for
    `validate_by`); the report keeps the ratio (`speed`). The target's own speed is
    restored afterwards."""
    speed = machine_speed(target, ops, threads=threads, rows=rows)
    before = target.speed
    target.set_speed(speed.ratio)
    try:
        report = validate_by(target, cases, lambda _: list(measured), parts)
    finally:
        target.set_speed(before)
    report.speed = speed
    return report


def validate_by(target: Target, cases: Iterable[Case],
                measure: Callable[[list[Model]], list[float]],
                parts: Sequence[Sequence[Part]] | None = None) -> ValidationReport:
    """Whole models "measured" by `measure` (all at once, so it can batch its work).
    `parts`: each case's `target.parts`, when the caller prices the cases more than once
    (on a `blocked_layout` target each costs an onnxruntime session)."""
    cases = list(cases)
    measured = measure([c.model for c in cases])
    estimated = ([target.estimate(c.model).latency_ms for c in cases] if parts is None
                 else [target.total_ms(spec for *_, spec in p) for p in parts])
    return ValidationReport(target.name, [Row(c.name, ms, est) for c, ms, est
                                          in zip(cases, measured, estimated)])


def time_kernels(target: Target, specs: Iterable[OpSpec], *, threads: int = 1,
                 progress: bool = True) -> tuple[dict[tuple, float], list[OpSpec]]:
    """Every distinct kernel of `specs` (those `Target.parts` gives a target to price; not
    those its profile makes free), timed now as a one-op model by `measure_specs`'
    protocol: (signature -> ms, the specs no one-op model can be built for). A
    ProfileError (one line) for a target whose ops were not measured on this machine."""
    retimable(target)
    distinct = {spec.signature(): spec for spec in specs
                if spec.kind not in target.profile.free_kinds}
    buildable, unbuildable = [], []
    for spec in distinct.values():
        try:
            one_op_model(spec)
            buildable.append(spec)
        except MeasurementError:
            unbuildable.append(spec)
    rows = measure_specs(buildable, threads=threads, progress=progress)
    return {row.spec.signature(): row.latency_ms for row in rows}, unbuildable


@dataclass(frozen=True)
class Pair:
    name: str  # the model's
    rewrite: str  # what turned `before` into `after`
    before: Model
    after: Model


def _gain(before: float, after: float) -> float:
    return (before - after) / before if before else 0.0


@dataclass(frozen=True)
class GainRow:
    """One rewrite: latency before and after it, measured and estimated."""

    name: str
    rewrite: str
    measured_before_ms: float
    measured_after_ms: float
    estimated_before_ms: float
    estimated_after_ms: float

    @property
    def measured_gain(self) -> float:
        """Fraction of the latency the rewrite saves (negative: it slows the model)."""
        return _gain(self.measured_before_ms, self.measured_after_ms)

    @property
    def estimated_gain(self) -> float:
        return _gain(self.estimated_before_ms, self.estimated_after_ms)

    @property
    def sign_agrees(self) -> bool:
        return bool(np.sign(self.measured_gain) == np.sign(self.estimated_gain))


@dataclass
class GainReport:
    target: str
    rows: list[GainRow]

    @property
    def sign_agreement(self) -> float:
        return float(np.mean([r.sign_agrees for r in self.rows])) if self.rows else 0.0

    @property
    def gain_mae(self) -> float:
        """Mean absolute difference of estimated and measured gain (fractions)."""
        return (float(np.mean([abs(r.estimated_gain - r.measured_gain) for r in self.rows]))
                if self.rows else 0.0)

    def summary(self) -> str:
        return (f"{len(self.rows)} rewrites on {self.target}: sign of the gain right for "
                f"{100 * self.sign_agreement:.0f}%, mean |estimated - measured gain| "
                f"{100 * self.gain_mae:.1f} points")

    def text(self, measured: str = "measured") -> str:
        rows = [[r.name, r.rewrite, f"{r.measured_before_ms:.3f}", f"{r.measured_after_ms:.3f}",
                 f"{100 * r.measured_gain:+.1f}%", f"{100 * r.estimated_gain:+.1f}%",
                 "yes" if r.sign_agrees else "NO"] for r in self.rows]
        headers = ["model", "rewrite", f"{measured} before ms", "after ms", f"{measured} gain",
                   "estimated gain", "sign"]
        return f"{table(headers, rows)}\n\n{self.summary()}"

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "pairs": len(self.rows),
                "sign_agreement": self.sign_agreement, "gain_mae": self.gain_mae,
                "rows": [{**asdict(r), "measured_gain": r.measured_gain,
                          "estimated_gain": r.estimated_gain, "sign_agrees": r.sign_agrees}
                         for r in self.rows]}


def validate_gains(target: Target, pairs: Iterable[Pair],
                   measure: Callable[[list[Model]], list[float]]) -> GainReport:
    """Measured against estimated gain of every pair (all models measured at once)."""
    pairs = list(pairs)
    measured = measure([m for p in pairs for m in (p.before, p.after)])
    rows = [GainRow(p.name, p.rewrite, measured[2 * i], measured[2 * i + 1],
                    target.estimate(p.before).latency_ms, target.estimate(p.after).latency_ms)
            for i, p in enumerate(pairs)]
    return GainReport(target.name, rows)
