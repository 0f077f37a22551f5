"""How far a rewritten model is from the original, on held-out calibration inputs.

Per output: relative L2 error ||y - y0|| / ||y0||, the mean over samples of the cosine
similarity of y and y0 (each flattened), and for a classifier output ([N, classes]) the
share of samples whose top-1 class agrees. The fidelity floor of the search is the lowest
mean cosine similarity of any output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.staged import Batches, collect


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    relative_l2: float
    cosine: float
    top1_agreement: float | None


@dataclass(frozen=True)
class Fidelity:
    outputs: tuple[OutputFidelity, ...]

    @property
    def min_cosine(self) -> float:
        return min(o.cosine for o in self.outputs)

    def to_dict(self) -> dict[str, object]:
        return {"min_cosine": self.min_cosine, "outputs": [asdict(o) for o in self.outputs]}

    def summary(self) -> str:
        parts = []
        for o in self.outputs:
            top1 = f", top-1 agreement {100 * o.top1_agreement:.1f}%" if o.top1_agreement is not None else ""
            parts.append(f"'{o.name}': cosine {o.cosine:.4f}, relative L2 {o.relative_l2:.3f}{top1}")
        return "; ".join(parts)


def measure_fidelity(original: Model, candidate: Model,
                     batches: Batches,
                     reference: Mapping[str, np.ndarray] | None = None) -> Fidelity:
    """`candidate`'s outputs against `original`'s on `batches`. `reference`: the original's
    outputs on them (`staged.collect(original, batches)`), when the caller compares many
    candidates with one original."""
    refs = collect(original, batches) if reference is None else reference
    news = collect(candidate, batches, list(refs))  # one session for all the batches
    outputs = []
    for name in refs:
        y0, y = refs[name].astype(np.float64), news[name].astype(np.float64)
        flat0, flat = y0.reshape(len(y0), -1), y.reshape(len(y), -1)
        norms = np.linalg.norm(flat0, axis=1) * np.linalg.norm(flat, axis=1)
        cosine = float(np.mean(np.sum(flat0 * flat, axis=1) / np.maximum(norms, 1e-30)))
        rel = float(np.linalg.norm(y - y0) / max(np.linalg.norm(y0), 1e-30))
        top1 = (float(np.mean(np.argmax(y0, 1) == np.argmax(y, 1)))
                if y0.ndim == 2 and y0.shape[1] > 1 else None)
        outputs.append(OutputFidelity(name, rel, cosine, top1))
    return Fidelity(tuple(outputs))


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


def calibration_split(model: Model, calibration: str | Path | Batches | None, seed: int = 0
                      ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]],
                                 list[str]]:
    """Calibration batches (a .npz path, batches, or None: seeded random inputs) split 3:1
    into a fitting and a held-out part, plus warnings."""
    if calibration is None or isinstance(calibration, (str, Path)):
        batches, warnings = calibration_batches(
            model, None if calibration is None else str(calibration), seed=seed)
    else:
        batches, warnings = [dict(b) for b in calibration], []
    if len(batches) < 2:
        raise BadInputError("calibration needs at least 2 batches of 4 inputs (8 samples)")
    cut = max(1, len(batches) * 3 // 4)
    return batches[:cut], batches[cut:], warnings
