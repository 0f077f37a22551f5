"""How far a rewritten model is from the original, on held-out calibration inputs.

Per output: relative L2 error ||y - y0|| / ||y0||, the mean over samples of the cosine
similarity of y and y0 (each flattened), and for a classifier output ([N, classes > 1])
the share of samples whose top-1 class agrees (top-1 agreement) and the share whose
original top-1 class is within the new model's top 5 (top-5 agreement; 1.0 by definition
with 5 classes or fewer). A classifier's top-1 agreement is also given on the samples the
original is confident about (its top-1 probability, the softmax of a logits output or a
probability output itself, at least CONFIDENT), with their share: where the original is
unsure, any change to the function flips its answer easily, so inputs unlike the
calibration data, on which it is more often unsure, lower the overall figure most.

A fidelity is one number (`Fidelity.value`) by a metric of FIDELITY_METRICS: top1 by
default when every output is a classifier output, else cosine; the minimum over outputs
(an output without a top-1 / top-5 figure counts by its cosine). It is only as good as
the data it was measured on: `measured_on` says what they were, and `uncertainty_warning`
flags figures from fewer than MIN_SAMPLES samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from rewriter.data import Preprocess, Samples, load_samples
from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.staged import Batches, collect

FIDELITY_METRICS = ("top1", "top5", "cosine")
MIN_SAMPLES = 50  # fewer held-out samples than this: the figure is flagged as uncertain
CONFIDENT = 0.9  # the original's top-1 probability from which a sample counts as confident
SPLIT_BATCH = 4  # samples per batch in what `calibration_split` returns


@dataclass(frozen=True)
class OutputFidelity:
    """One output's fidelity. classifier: a 2-D [N, classes > 1] output, which has top-1
    and top-5 agreements (None: inferred from whether top1_agreement is given).
    cosine_std: the standard deviation over samples of the cosine similarity.
    confident_top1: top-1 agreement on the samples whose original top-1 probability is at
    least CONFIDENT (None: not a classifier, or no such sample); confident_share: their
    share of the samples."""

    name: str
    relative_l2: float
    cosine: float
    top1_agreement: float | None
    top5_agreement: float | None = None
    classifier: bool | None = None
    cosine_std: float = 0.0
    confident_top1: float | None = None
    confident_share: float | None = None

    def __post_init__(self) -> None:
        if self.classifier is None:
            object.__setattr__(self, "classifier", self.top1_agreement is not None)

    def metric_value(self, metric: str) -> float:
        """This output's figure by `metric`; its cosine where it has no top-k figure."""
        if metric == "top1" and self.top1_agreement is not None:
            return self.top1_agreement
        if metric == "top5" and self.top5_agreement is not None:
            return self.top5_agreement
        return self.cosine


@dataclass
class Fidelity:
    """Fidelity of every output on `samples` samples (`measured_on` says which).
    `before_recovery`: the same measurement before recovery, set by callers that recover."""

    outputs: tuple[OutputFidelity, ...]
    samples: int = 0
    measured_on: str = ""
    before_recovery: Fidelity | None = None

    @property
    def min_cosine(self) -> float:
        return min(o.cosine for o in self.outputs)

    @property
    def classifier(self) -> bool:
        """Every output is a classifier output."""
        return bool(self.outputs) and all(o.classifier for o in self.outputs)

    def default_metric(self) -> str:
        return "top1" if self.classifier else "cosine"

    def _metric(self, metric: str | None) -> str:
        if metric is None:
            return self.default_metric()
        if metric not in FIDELITY_METRICS:
            raise BadInputError(f"unknown fidelity metric {metric!r}; choose "
                                f"{', '.join(FIDELITY_METRICS)}")
        return metric

    def value(self, metric: str | None = None) -> float:
        """The fidelity by `metric` (None: `default_metric()`): the minimum over outputs,
        an output without a top-1 / top-5 figure counting by its cosine."""
        chosen = self._metric(metric)
        return min(o.metric_value(chosen) for o in self.outputs)

    def _worst(self, metric: str) -> OutputFidelity:
        return min(self.outputs, key=lambda o: o.metric_value(metric))

    def cosine_stderr(self) -> float:
        """Standard error of the mean cosine of the output with the lowest cosine."""
        worst = self._worst("cosine")
        return worst.cosine_std / math.sqrt(max(self.samples, 1))

    def stderr(self, metric: str | None = None) -> float:
        """Standard error of `value(metric)`: binomial sqrt(p (1 - p) / n) for an agreement,
        the mean's standard error for a cosine (of the output that sets the value)."""
        chosen = self._metric(metric)
        worst = self._worst(chosen)
        n = max(self.samples, 1)
        p = {"top1": worst.top1_agreement, "top5": worst.top5_agreement}.get(chosen)
        if p is not None:
            return math.sqrt(max(p * (1.0 - p), 0.0) / n)
        return worst.cosine_std / math.sqrt(n)

    def to_dict(self, metric: str | None = None) -> dict[str, object]:
        """JSON-ready: the chosen `metric` and its `value`; the worst figure over outputs
        for top1_agreement, top5_agreement (None without classifier outputs), cosine
        (also as min_cosine) and relative_l2; samples, measured_on, before_recovery (a
        nested dict or None) and per-output entries under "outputs"; for classifiers,
        top1_agreement_confident and confident_share of the output with the lowest
        top-1 agreement."""
        return self._to_dict(metric, {id(self)})

    def _to_dict(self, metric: str | None, seen: set[int]) -> dict[str, object]:
        chosen = self._metric(metric)
        top1 = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        top5 = [o.top5_agreement for o in self.outputs if o.top5_agreement is not None]
        worst = min((o for o in self.outputs if o.top1_agreement is not None),
                    key=lambda o: o.top1_agreement or 0.0, default=None)
        before = self.before_recovery
        nested = None
        if before is not None and id(before) not in seen:  # never recurse into a cycle
            nested = before._to_dict(metric, seen | {id(before)})
        return {
            "metric": chosen,
            "value": self.value(chosen),
            "standard_error": self.stderr(chosen),
            "top1_agreement": min(top1) if top1 else None,
            "top5_agreement": min(top5) if top5 else None,
            "top1_agreement_confident": worst.confident_top1 if worst else None,
            "confident_share": worst.confident_share if worst else None,
            "cosine": self.min_cosine,
            "min_cosine": self.min_cosine,
            "relative_l2": max(o.relative_l2 for o in self.outputs),
            "samples": self.samples,
            "measured_on": self.measured_on,
            "before_recovery": nested,
            "outputs": [asdict(o) for o in self.outputs],
        }

    def summary(self) -> str:
        parts = []
        for o in self.outputs:
            top = ""
            if o.top1_agreement is not None:
                top += f", top-1 agreement {100 * o.top1_agreement:.1f}%"
            if o.top5_agreement is not None:
                top += f", top-5 agreement {100 * o.top5_agreement:.1f}%"
            if o.confident_top1 is not None and o.confident_share is not None:
                top += (f" (top-1 {100 * o.confident_top1:.1f}% on the "
                        f"{100 * o.confident_share:.0f}% of samples the original is sure of)")
            parts.append(f"'{o.name}': cosine {o.cosine:.4f}, relative L2 "
                         f"{o.relative_l2:.3f}{top}")
        where = f"{self.samples} samples" + (f": {self.measured_on}" if self.measured_on
                                             else "")
        return "; ".join(parts) + f" (on {where})"


def uncertainty_warning(fidelity: Fidelity, metric: str | None = None) -> str | None:
    """A warning when `fidelity` rests on fewer than MIN_SAMPLES samples, with the
    standard error of its figure (binomial sqrt(p (1 - p) / n) for a top-1 agreement)."""
    n = fidelity.samples
    if n >= MIN_SAMPLES:
        return None
    chosen = fidelity._metric(metric)
    value = fidelity.value(chosen)
    worst = fidelity._worst(chosen)
    agreement = {"top1": worst.top1_agreement, "top5": worst.top5_agreement}.get(chosen)
    if agreement is None:  # the value is a cosine (of a non-classifier output)
        chosen = "cosine"
    name = {"top1": "top-1 agreement", "top5": "top-5 agreement", "cosine": "cosine"}[chosen]
    extreme = ""
    if chosen != "cosine" and value in (0.0, 1.0) and n > 0:
        # sqrt(p (1 - p) / n) is 0 at p = 0 or 1, which overstates the certainty
        bound = min(1.0, 3.0 / n)
        extreme = (f" (zero at a share of {value:g}; with {n} samples the true share may "
                   f"still be {'below' if value else 'above'} {abs(value - bound):.3f}, "
                   "95% by the rule of three)")
    kind = "standard error" if chosen == "cosine" else "binomial standard error"
    return (f"fidelity measured on only {n} samples (fewer than {MIN_SAMPLES}) is uncertain: "
            f"{name} {value:.4f} with a {kind} of "
            f"{fidelity.stderr(metric):.4f}{extreme}; give more calibration data (or "
            "--eval-data) for a firmer figure")


def measure_fidelity(original: Model, candidate: Model,
                     batches: Batches | Samples,
                     reference: Mapping[str, np.ndarray] | None = None,
                     measured_on: str = "") -> Fidelity:
    """`candidate`'s outputs against `original`'s on `batches` (or `Samples`, then
    `measured_on` defaults to their description). `reference`: the original's outputs on
    them (`staged.collect(original, batches)`), when the caller compares many candidates
    with one original."""
    if isinstance(batches, Samples):
        measured_on = measured_on or batches.describe()
        batches = batches.batches(8)
    refs = collect(original, batches) if reference is None else reference
    news = collect(candidate, batches, list(refs))  # one session for all the batches
    outputs = []
    samples = 0
    for name in refs:
        y0, y = refs[name].astype(np.float64), news[name].astype(np.float64)
        samples = max(samples, len(y0))
        outputs.append(output_fidelity(name, y0, y))
    return Fidelity(tuple(outputs), samples, measured_on)


def output_fidelity(name: str, y0: np.ndarray, y: np.ndarray) -> OutputFidelity:
    """One output's fidelity: `y` (the candidate's) against `y0` (the original's), both
    [N, ...] with the batch first."""
    y0, y = np.asarray(y0, np.float64), np.asarray(y, np.float64)
    flat0, flat = y0.reshape(len(y0), -1), y.reshape(len(y), -1)
    norms = np.linalg.norm(flat0, axis=1) * np.linalg.norm(flat, axis=1)
    cosines = np.sum(flat0 * flat, axis=1) / np.maximum(norms, 1e-30)
    cosine = float(np.mean(cosines))
    std = float(np.std(cosines, ddof=1)) if len(cosines) > 1 else 0.0
    rel = float(np.linalg.norm(y - y0) / max(np.linalg.norm(y0), 1e-30))
    classifier = y0.ndim == 2 and y0.shape[1] > 1
    top1 = top5 = confident_top1 = confident_share = None
    if classifier:
        truth = np.argmax(y0, 1)
        agree = truth == np.argmax(y, 1)
        top1 = float(np.mean(agree))
        k = min(5, y.shape[1])
        best = np.argpartition(-y, k - 1, axis=1)[:, :k]
        top5 = float(np.mean(np.any(best == truth[:, None], axis=1)))
        confident = top_probability(y0) >= CONFIDENT
        confident_share = float(np.mean(confident))
        confident_top1 = float(np.mean(agree[confident])) if confident.any() else None
    return OutputFidelity(name, rel, cosine, top1, top5, classifier, std, confident_top1,
                          confident_share)


def is_probabilities(values: np.ndarray) -> bool:
    """Whether an output already is probabilities over its last axis (a model ending in
    Softmax): more than one entry, non-negative (up to rounding), each row summing to 1."""
    values = np.asarray(values, np.float64)
    return (values.ndim >= 2 and values.shape[-1] > 1 and values.min() >= -1e-6
            and bool(np.allclose(values.sum(axis=-1), 1.0, atol=1e-3)))


def top_probability(y: np.ndarray) -> np.ndarray:
    """Per sample, the top-1 probability of a classifier output [N, classes]: the output
    itself where it is already probabilities (`is_probabilities`), else its softmax
    (logits)."""
    y = np.asarray(y, np.float64)
    if is_probabilities(y):
        return y.max(1)
    shifted = np.exp(y - y.max(1, keepdims=True))
    return 1.0 / shifted.sum(1)  # the top class's exp(0) over the sum


def calibration_batches(model: Model, path: str | None, count: int = 16, batch: int = 4,
                        seed: int = 0) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Calibration inputs in batches: a user's .npz, or seeded random inputs (with a warning:
    fidelity on random inputs is only a proxy for fidelity on real data)."""
    from rewriter.verify import load_inputs

    warnings = []
    if path:
        data = load_inputs(path, model)
        total = len(next(iter(data.values())))
        return ([{k: v[i:i + batch] for k, v in data.items()} for i in range(0, total, batch)],
                warnings)
    warnings.append("no --calibration data: fitted and scored on random inputs, so fidelity is "
                    "only a proxy for fidelity on real data")
    rng = np.random.default_rng(seed)
    shapes = model.concrete_input_shapes()
    batches = [{name: rng.standard_normal((batch, *shape[1:])).astype(np.float32)
                for name, shape in shapes.items()} for _ in range(count // batch)]
    return batches, warnings


def split_samples(samples: Samples, seed: int = 0, held_fraction: float = 0.25
                  ) -> tuple[Samples, Samples, list[str]]:
    """(fit, held, warnings): `samples` split by source, `held_fraction` of the sources held
    out (no source on both sides), with a warning when the held-out part has fewer than
    MIN_SAMPLES samples. Needs at least two sources (BadInputError otherwise)."""
    fit, held = samples.split_by_source(held_fraction, seed)
    warnings = []
    if len(held) < MIN_SAMPLES:
        warnings.append(f"only {len(held)} held-out samples from {held.source_count} sources "
                        f"({samples.origin}): fidelity measured on fewer than {MIN_SAMPLES} "
                        "samples is uncertain; give more calibration data")
    return fit, held, warnings


def calibration_split(model: Model, calibration: str | Path | Batches | Samples | None,
                      seed: int = 0, preprocess: Preprocess | None = None
                      ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]],
                                 list[str]]:
    """(fitting batches, held-out batches, warnings).

    `Samples` or a path (an .npz, a folder of images or an image, read by
    `data.load_samples` with `preprocess`) are split by source (`split_samples`: a quarter of
    the sources
    held out, never a source on both sides; an .npz row without a `__source__` is its own
    source) into batches of SPLIT_BATCH. Batches or None (seeded random inputs) keep the
    old behaviour: the batches cut 3:1 in order.
    """
    if isinstance(calibration, (str, Path)):
        calibration = load_samples(calibration, model, preprocess, seed=seed)
    if isinstance(calibration, Samples):
        fit, held, warnings = split_samples(calibration, seed)
        return fit.batches(SPLIT_BATCH), held.batches(SPLIT_BATCH), warnings
    if calibration is None:
        batches, warnings = calibration_batches(model, None, seed=seed)
    else:
        batches, warnings = [dict(b) for b in calibration], []
    if len(batches) < 2:
        raise BadInputError("calibration needs at least 2 batches of 4 inputs (8 samples)")
    cut = max(1, len(batches) * 3 // 4)
    return batches[:cut], batches[cut:], warnings
