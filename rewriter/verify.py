"""Check a rewritten model against the original in onnxruntime.

Both models run on the same inputs: seeded standard-normal tensors at the analysis shapes
(batch 2 where the batch is symbolic, so a rewrite that baked in batch 1 is caught), or a
user's .npz keyed by input name. Per output: max |rewritten - original| and that error
relative to the output's scale (max |original|). The check passes when every relative error
is within `tolerance` (1e-4 for float32).

Some comparisons prove nothing, and the verifier refuses them rather than call them a pass
or a failure: an output that is (near) zero everywhere, and an output so ill-conditioned on
these inputs (a saturated sigmoid, say) that the original model's own float32 noise (its
onnxruntime run with graph optimisations against one without) already exceeds the
tolerance. Inputs that give a meaningful output (a user's .npz) fix both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.runtime import run_model

TOLERANCE = 1e-4
NEAR_ZERO = 1e-6


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs_error: float
    scale: float
    relative_error: float
    passed: bool


@dataclass
class VerificationReport:
    outputs: list[OutputCheck]
    tolerance: float
    refused: str = ""  # why no verdict could be given
    inputs: dict[str, list[int]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.refused and all(o.passed for o in self.outputs)

    @property
    def max_relative_error(self) -> float:
        return max((o.relative_error for o in self.outputs), default=0.0)

    def summary(self) -> str:
        if self.refused:
            return f"verification refused: {self.refused}"
        worst = max(self.outputs, key=lambda o: o.relative_error)
        verdict = "passed" if self.passed else "FAILED"
        return (f"verification {verdict}: max relative error {worst.relative_error:.2e} "
                f"(output '{worst.name}', max abs {worst.max_abs_error:.2e}, tolerance "
                f"{self.tolerance:.0e})")

    def to_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "tolerance": self.tolerance, "refused": self.refused,
                "outputs": [asdict(o) for o in self.outputs], "inputs": self.inputs}


def make_inputs(model: Model, seed: int = 0, batch: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = model.concrete_input_shapes()
    if batch is None:
        batch = 2 if model.batch_is_symbolic() else None
    feeds = {}
    for name, shape in shapes.items():
        if batch is not None and shape:
            shape = (batch, *shape[1:])
        feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def load_inputs(path: str | Path, model: Model) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"no such inputs file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
    except Exception as exc:
        raise BadInputError(f"cannot read inputs {path}: {exc}") from None
    names = [t.name for t in model.graph.inputs]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise BadInputError(f"inputs file {path} lacks {', '.join(missing)} (has "
                            f"{', '.join(feeds) or 'nothing'})")
    return {n: feeds[n] for n in names}


def verify(
    original: Model,
    rewritten: Model,
    inputs: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> VerificationReport:
    feeds = dict(inputs) if inputs is not None else make_inputs(original, seed)
    original_proto = original.to_onnx()
    reference = run_model(original_proto, feeds)
    unoptimised = run_model(original_proto, feeds, optimize=False)
    candidate = run_model(rewritten.to_onnx(), feeds)
    checks = []
    refused = ""
    for name, ref in reference.items():
        got = candidate.get(name)
        if got is None or got.shape != ref.shape:
            shape = None if got is None else got.shape
            checks.append(OutputCheck(name, float("inf"), 0.0, float("inf"), False))
            refused = refused or f"output '{name}' has shape {shape}, expected {ref.shape}"
            continue
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
        err = float(np.max(np.abs(got64 - ref64))) if ref64.size else 0.0
        if not np.all(np.isfinite(ref64)):
            refused = refused or f"the original's output '{name}' is not finite on these inputs"
        if scale < NEAR_ZERO:
            refused = refused or (f"the original's output '{name}' is (near) zero everywhere "
                                  f"(max |y| = {scale:.1e}); such a comparison proves nothing; pass inputs that give a meaningful output (--inputs FILE.npz)")
        rel = err / scale if scale >= NEAR_ZERO else float("inf")
        noise = float(np.max(np.abs(unoptimised[name].astype(np.float64) - ref64))) / max(
            scale, NEAR_ZERO) if ref64.size else 0.0
        if noise > tolerance:
            refused = refused or (
                f"the original's output '{name}' is ill-conditioned on these inputs: "
                f"onnxruntime's optimised and unoptimised runs of the original already differ "
                f"by {noise:.1e} of its scale ({scale:.1e}), above the tolerance; pass inputs "
                "that give a meaningful output (--inputs FILE.npz)")
        checks.append(OutputCheck(name, err, scale, rel, bool(rel <= tolerance)))
    return VerificationReport(checks, tolerance, refused,
                              {k: list(v.shape) for k, v in feeds.items()})
