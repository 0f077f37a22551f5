"""Recovering what an architecture change lost, and judging it on data it never saw.

An architecture change (fuse-ibn, align-channels-down, depth-multiplier) starts from
initial weights and a layer-wise ridge refit (`rewriter.reconstruct`). With little data a
refit does not generalise, and errors compound over depth; so the rewritten model is then
trained to reproduce the original's outputs (knowledge distillation, `rewriter.distill`,
the optional extra `[train]`).

The data are cut by source (an image file, or an .npz row) so that no source feeds two of:
- fit: the ridge refit and the distillation's training batches (augmented);
- val: the distillation's early stopping and the search's cheap screening;
- eval: the figure reported to the user and the acceptance test against the floor. It is
  never used for fitting, training or early stopping. `--eval-data` replaces it.

A candidate is accepted when its fidelity on eval, one standard error below the measured
value, is at least the floor: with 6 held-out photos a measured top-1 agreement of 1.0
bounds the truth only to 0.86, so such data cannot support a floor of 0.98, and the tool
says so instead of trusting a lucky figure.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from rewriter.changes import METADATA_KEY
from rewriter.data import Preprocess, Samples, load_samples, random_samples
from rewriter.errors import BadInputError
from rewriter.fidelity import FIDELITY_METRICS, Fidelity, measure_fidelity
from rewriter.graph_io import Model, load_model

RECOVERY_METHODS = ("distill", "refit")
DEFAULT_RECOVER_SECONDS = 300.0
STANDARD_ERRORS = 1.0  # how far below the measured fidelity the acceptance test looks
BATCH = 8  # inputs per onnxruntime batch when measuring


@dataclass(frozen=True)
class RecoveryBudget:
    """How long distillation may train: wall seconds or optimiser steps."""

    seconds: float | None = DEFAULT_RECOVER_SECONDS
    steps: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> "RecoveryBudget":
        """'90s', '15m', '1h' (wall time) or '500steps'; None: the default."""
        if text is None:
            return cls()
        raw = text.strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|h|steps?)", raw)
        if match:
            value, unit = float(match.group(1)), match.group(2)
            if unit.startswith("step"):
                if value >= 1 and value == int(value):
                    return cls(seconds=None, steps=int(value))
            elif 0 < value < 1e7 and math.isfinite(value):
                return cls(seconds=value * {"s": 1, "m": 60, "h": 3600}[unit])
        raise BadInputError(f"bad --recover-budget {text!r}: wall time (90s, 15m, 1h) or "
                            "optimiser steps (500steps)")

    def split(self, parts: int) -> "RecoveryBudget":
        parts = max(1, parts)
        return RecoveryBudget(None if self.seconds is None else self.seconds / parts,
                              None if self.steps is None else max(1, self.steps // parts))

    def describe(self) -> str:
        return f"{self.seconds:.0f} s" if self.seconds is not None else f"{self.steps} steps"


@dataclass
class FidelityData:
    """Calibration data cut by source into fit / val / eval (see the module docstring)."""

    fit: Samples
    val: Samples | None
    eval: Samples
    warnings: list[str] = field(default_factory=list)

    def describe_eval(self) -> str:
        sources = len(set(self.eval.sources))
        return (f"{len(self.eval)} held-out samples from {sources} sources never used for "
                f"fitting ({self.eval.origin})")


def _as_samples(model: Model, data: object, preprocess: Preprocess | None, seed: int,
                what: str) -> Samples:
    if isinstance(data, Samples):
        return data
    if isinstance(data, (str, Path)):
        return load_samples(data, model, preprocess, seed=seed)
    if isinstance(data, Mapping):
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in data.items()}
        count = len(next(iter(arrays.values())))
        return Samples(arrays, [f"sample-{i}" for i in range(count)], f"{what} arrays")
    if isinstance(data, Sequence):  # batches: one source per sample, in order
        batches = list(data)
        if not batches:
            raise BadInputError(f"{what}: no batches")
        names = list(batches[0])
        arrays = {n: np.concatenate([np.asarray(b[n], np.float32) for b in batches])
                  for n in names}
        count = len(arrays[names[0]])
        return Samples(arrays, [f"sample-{i}" for i in range(count)], f"{what} batches")
    raise BadInputError(f"{what}: expected a path, samples or batches, not "
                        f"{type(data).__name__}")


def prepare_data(model: Model, calibration: object = None, eval_data: object = None,
                 preprocess: Preprocess | None = None, seed: int = 0,
                 random_count: int = 48) -> FidelityData:
    """Calibration (and evaluation) data cut by source. No calibration: seeded random
    inputs, with a warning that fidelity on them says little about real data."""
    warnings: list[str] = []
    if calibration is None:
        samples = random_samples(model, random_count, seed)
        warnings.append("no --calibration data: fitted and scored on random inputs, so "
                        "fidelity is only a proxy for fidelity on real data")
    else:
        samples = _as_samples(model, calibration, preprocess, seed, "--calibration")
    if eval_data is not None:
        held = _as_samples(model, eval_data, preprocess, seed, "--eval-data")
        overlap = set(held.sources) & set(samples.sources)
        if overlap and isinstance(eval_data, (str, Path)):
            warnings.append(f"--eval-data shares {len(overlap)} source names with "
                            "--calibration; fidelity is only honest on data never fitted")
        fit, val = _split(samples, 0.2, seed)
        return FidelityData(fit, val, held, warnings)
    if len(set(samples.sources)) < 2:
        raise BadInputError(
            f"{samples.origin}: {len(samples)} samples from one source; fidelity must be "
            "measured on sources never used for fitting: give several images (or .npz "
            "rows), or --eval-data")
    rest, held = samples.split_by_source(0.25, seed)
    fit, val = _split(rest, 0.2, seed + 1)
    return FidelityData(fit, val, held, warnings)


def _split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples | None]:
    """fit and val parts by source; no val when there are fewer than 3 sources."""
    if len(set(samples.sources)) < 3:
        return samples, None
    return samples.split_by_source(fraction, seed)


# -- judging -----------------------------------------------------------------------------
def lower_bound(fidelity: Fidelity, metric: str | None = None) -> float:
    """The fidelity `STANDARD_ERRORS` standard errors below the measured value: a Wilson
    bound for an agreement of classifiers (a share of samples, which stays informative
    at 0 and 1), the standard error of the worst output otherwise."""
    value = fidelity.value(metric)
    chosen = metric or fidelity.default_metric()
    z = STANDARD_ERRORS
    if chosen in ("top1", "top5") and fidelity.classifier:
        n = max(fidelity.samples, 1)
        centre = (value + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(value * (1 - value) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half)
    return value - z * fidelity.stderr(metric)


def supportable_floor(samples: int, metric: str) -> float:
    """The highest floor `samples` held-out samples can support at all (a perfect score,
    one standard error down)."""
    if metric in ("top1", "top5"):
        z = STANDARD_ERRORS
        return 1.0 / (1.0 + z * z / max(samples, 1))
    return 1.0


def meets(fidelity: Fidelity, floor: float, metric: str | None = None) -> bool:
    return lower_bound(fidelity, metric) >= floor


# -- recovery ------------------------------------------------------------------------------
@dataclass
class Recovery:
    model: Model
    method: str  # what was run: "distill", "refit" or "none"
    fidelity: Fidelity  # on the eval data, with before_recovery set
    seconds: float
    steps: int = 0
    warnings: list[str] = field(default_factory=list)
    history: list[tuple[int, float, float]] = field(default_factory=list)
    metric: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "seconds": self.seconds, "steps": self.steps,
                "fidelity": self.fidelity.to_dict(self.metric), "warnings": self.warnings}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_method(method: str | None, warnings: list[str]) -> str:
    """'distill' unless PyTorch is missing (then 'refit', with a warning saying so)."""
    method = method or "distill"
    if method not in RECOVERY_METHODS:
        raise BadInputError(f"unknown --recover {method!r}; choose distill or refit")
    if method == "distill" and not torch_available():
        warnings.append("distillation needs PyTorch (pip install 'rewriter[train]'): "
                        "weights refitted only, which rarely keeps a pretrained model's "
                        "predictions")
        return "refit"
    return method


def check_augmentation(augment: str) -> None:
    """BadInputError unless distillation knows `augment`, before minutes of work are
    spent (the distill module imports PyTorch only when it trains)."""
    from rewriter.distill import PLENTIFUL, resolve_augmentation

    resolve_augmentation(augment, PLENTIFUL)


class Trained(NamedTuple):
    """A recovered student: its weights, the optimiser steps run, the held-out history
    (step, loss, fidelity), and whether it was still improving when the budget ended
    (the last held-out evaluation was the best: more training may help)."""

    model: Model
    steps: int
    history: list[tuple[int, float, float]]
    improving: bool = False


def train(original: Model, student: Model, data: FidelityData, method: str,
          budget: RecoveryBudget, seed: int = 0, progress: bool = False,
          changed: Sequence[str] | None = None, augment: str = "auto") -> Trained:
    """The student refitted (if the pass recorded what to refit) and, with 'distill',
    trained against the original: the changed nodes (`changed`, default: what the pass
    recorded to refit) first alone with the teacher's inputs forced
    (`rewriter.forced_reconstruction`), then every weight end to end, on inputs augmented
    as `augment` says (`rewriter.distill.resolve_augmentation`)."""
    from rewriter.reconstruct import refit

    changed = list(student.changes.refit if changed is None else changed)
    fit_batches = data.fit.batches(BATCH)
    if student.changes.refit:
        student = refit(original, student, fit_batches, progress=progress)
    if method != "distill":
        return Trained(student, 0, [])
    from rewriter.distill import distill

    result = distill(original, student, data.fit.inputs,
                     None if data.val is None else data.val.inputs,
                     seconds=budget.seconds, steps=budget.steps, seed=seed,
                     reconstruct=changed, augment=augment, progress=progress)
    history = [tuple(h) if not hasattr(h, "step") else (h.step, h.loss, h.fidelity)
               for h in result.history]
    steps = max((int(h[0]) for h in history), default=0)
    improving = (result.stopped in ("time", "steps") and result.steps > 0
                 and result.best_step == result.steps)
    return Trained(result.model, steps, history, improving)


def changed_nodes(original: Model, rewritten: Model) -> list[str]:
    """The rewritten model's Conv/Gemm/MatMul nodes whose weights are not the original's:
    a name the original lacks, or a weight of another shape or other values. What a
    change changed, for a rewritten model read from a file (`Model.changes` is not
    written to ONNX)."""
    def weights(model: Model) -> dict[str, np.ndarray | None]:
        found: dict[str, np.ndarray | None] = {}
        for node in model.graph.nodes:
            if node.op in ("Conv", "Gemm", "MatMul"):
                weight = node.inputs[1] if len(node.inputs) > 1 else None
                found[node.name] = (np.asarray(weight.values) if hasattr(weight, "values")
                                    else None)
        return found

    before = weights(original)
    changed = []
    for name, weight in weights(rewritten).items():
        old = before.get(name)
        if weight is not None and (old is None or old.shape != weight.shape
                                   or not np.array_equal(old, weight)):
            changed.append(name)
    return changed


def evaluate(original: Model, candidate: Model, data: FidelityData,
             reference: Mapping[str, np.ndarray] | None = None) -> Fidelity:
    return measure_fidelity(original, candidate, data.eval.batches(BATCH), reference,
                            measured_on=data.describe_eval())


def refit_and_train(original: Model, student: Model, data: FidelityData, method: str,
                    budget: RecoveryBudget, seed: int = 0, progress: bool = False,
                    reference: Mapping[str, np.ndarray] | None = None,
                    changed: Sequence[str] | None = None, augment: str = "auto"
                    ) -> tuple[Trained, Fidelity]:
    """Refit what the change recorded, train (`train`; `changed`: the nodes to fit first,
    default what the change recorded), and measure on eval: (what training gave, the
    fidelity after with `before_recovery` set to the refitted student's). Refit only: the
    model is the refitted student, measured once."""
    changed = list(student.changes.refit if changed is None else changed)
    if student.changes.refit:  # the initial weights are not the figure a user compares with
        from rewriter.reconstruct import refit

        student = refit(original, student, data.fit.batches(BATCH), progress=progress)
    before = evaluate(original, student, data, reference)
    trained = train(original, student, data, method, budget, seed, progress, changed,
                    augment)
    after = (dataclasses.replace(before) if method == "refit"
             else evaluate(original, trained.model, data, reference))
    after.before_recovery = before
    return trained, after


def recover(original: Model | str | Path, rewritten: Model | str | Path,
            calibration: object = None, *, eval_data: object = None,
            preprocess: Preprocess | str | None = None, method: str | None = "distill",
            budget: RecoveryBudget | str | None = None, metric: str | None = None,
            seed: int = 0, input_shapes: Mapping[str, Sequence[int]] | None = None,
            progress: bool = False, augment: str = "auto") -> Recovery:
    """Recover `rewritten` (an architecture change of `original`) from unlabeled data.

    calibration / eval_data: an .npz (input name -> array), a folder of images or one
    image, `Samples`, or batches; without eval_data, the calibration data are cut by
    source and a quarter of the sources is kept for evaluation only. method: 'distill'
    (PyTorch) or 'refit'. augment: how distillation augments the fitting inputs: 'auto'
    (light crops from 500 inputs on, heavier below), 'light', 'heavy', 'robust' (for
    deployment inputs broader than the calibration data) or 'none'. The returned model is
    labelled as architecture-changed in its metadata; `fidelity` is measured on the
    evaluation data, with the figure before recovery in `fidelity.before_recovery`.
    """
    start = time.perf_counter()
    if metric is not None and metric not in FIDELITY_METRICS:
        raise BadInputError(f"unknown --fidelity-metric {metric!r}; choose "
                            f"{', '.join(FIDELITY_METRICS)}")
    if isinstance(preprocess, str):
        preprocess = Preprocess.parse(preprocess)
    if not isinstance(budget, RecoveryBudget):
        budget = RecoveryBudget.parse(budget)
    check_augmentation(augment)
    teacher = original if isinstance(original, Model) else load_model(original, input_shapes)
    student = rewritten if isinstance(rewritten, Model) else load_model(rewritten,
                                                                         input_shapes)
    _check_interfaces(teacher, student)
    data = prepare_data(teacher, calibration, eval_data, preprocess, seed)
    warnings = list(data.warnings)
    method = resolve_method(method, warnings)
    reference = _reference(teacher, data)
    # a rewritten model read from a file has no record of what changed: its weights tell
    changed = student.changes.refit or changed_nodes(teacher, student)
    (model, steps, history, _), after = refit_and_train(teacher, student, data, method,
                                                         budget, seed, progress, reference,
                                                         changed, augment)
    label = (student.changes.label() if student.changes.passes
             else student.metadata.get(METADATA_KEY) or "architecture changed")
    model.metadata[METADATA_KEY] = label_recovered(label, method, after, metric)
    note = uncertainty(after, metric)
    if note:
        warnings.append(note)
    return Recovery(model, method, after, time.perf_counter() - start, steps, warnings,
                    history, metric)


def _reference(teacher: Model, data: FidelityData) -> dict[str, np.ndarray]:
    from rewriter.staged import collect

    return collect(teacher, data.eval.batches(BATCH))


def _check_interfaces(original: Model, rewritten: Model) -> None:
    a = {t.name for t in original.graph.inputs}, {t.name for t in original.graph.outputs}
    b = {t.name for t in rewritten.graph.inputs}, {t.name for t in rewritten.graph.outputs}
    if a != b:
        raise BadInputError("the rewritten model's inputs/outputs are not the original's "
                            f"(inputs {sorted(b[0])} vs {sorted(a[0])}, outputs "
                            f"{sorted(b[1])} vs {sorted(a[1])})")


def label_recovered(label: str, method: str, fidelity: Fidelity, metric: str | None) -> str:
    """The metadata entry of a recovered model: what changed, how it was recovered, and
    what fidelity it keeps, on what."""
    base = label.replace("; fine-tune before use", "")
    chosen = metric or fidelity.default_metric()
    how = {"distill": "recovered by distillation", "refit": "weights refitted only",
           "none": "not recovered"}[method]
    return (f"{base}; {how}; {chosen} fidelity {fidelity.value(metric):.4f} on "
            f"{fidelity.samples} held-out samples")


def uncertainty(fidelity: Fidelity, metric: str | None) -> str | None:
    from rewriter.fidelity import uncertainty_warning

    return uncertainty_warning(fidelity, metric)
