"""Check a rewritten model against the original in onnxruntime.

Both models run on the same inputs: seeded standard-normal tensors at the analysis shapes
(batch 2 where the batch is symbolic, so a rewrite that baked in batch 1 is caught), or a
user's .npz keyed by input name. Per output: max |rewritten - original| and that error
relative to the output's scale (max |original|). Which comparison decides is the report's
`mode`, and the relative error it allows its `bound`:

float32 (the usual case): both models run in onnxruntime in float32; an output passes when
    its relative error is within `tolerance` (1e-4). Used whenever the original's own
    float32 noise -- its onnxruntime run with graph optimisations against one without, which
    differ only in rounding -- is within the tolerance, so that the tolerance can tell a
    rounding difference from a wrong rewrite.
float64 (the original is noisier than the tolerance): BatchNorm statistics with a tiny
    variance or a large mean (EfficientNet, SSDLite with trained or random statistics) make
    the float32 output depend on rounding by more than the tolerance, and a float32
    comparison can no longer tell an exact rewrite from a wrong one. Both models are then
    converted to float64 (rewriter.float64) and run on the same inputs (in onnxruntime where
    it has double kernels for every op, else in onnx's reference evaluator: onnxruntime has
    no double Conv, so CNNs normally go there; about 2 s for MobileNetV2 at 224 px, batch
    2), which removes the arithmetic noise, and an output passes when the float64 outputs
    agree within `tolerance` of the float64 original's scale. A rewrite that recomputes
    parameters (fold-bn) stores them rounded to float32 again, and on a model this sensitive
    that rounding alone can move the output by more than the tolerance; so where some output
    misses the tolerance, the original is also run in float64 with every parameter perturbed
    by one float32 rounding (relative 2**-24, seeded) and that output's bound becomes
    max(tolerance, ROUNDING_FACTOR (3) x the change this causes): the most an exact rewrite,
    which rounds its parameters a few times at most, can move it. A wrong weight moves the
    output by orders of magnitude more than a rounding of every weight, and still fails.
noise-bound (fallback, when either float64 model cannot run: an op that neither
    onnxruntime in double nor the reference evaluator implements): the float32 comparison,
    each output's bound being max(tolerance, NOISE_FACTOR (3) x the original's own float32
    noise on it): an exact rewrite differs from the original by rounding, as the original's
    two runs do; 3x leaves room for a few rewrites each rounding once.

The verifier refuses, rather than call a pass or a failure, only what no arithmetic fixes:
an output that is not finite, or (near) zero everywhere, on these inputs (a wrong rewrite of
a zero output would also "match"), an output missing or of the wrong shape, and a tolerance
below float32's resolution (2**-24 of the scale) on an original whose float32 noise exceeds
it (no float32 model can be held to that; a quiet original is still compared as before). The
near-zero check stays in float32: it is about the inputs, not rounding (a float64 run gives
the same scale to within rounding, so it could not rescue the comparison), and inputs that
give a meaningful output (a user's .npz) fix it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from rewriter.errors import BadInputError
from rewriter.float64 import (
    Float64Unavailable,
    perturb_parameters,
    run_float64,
    to_float64,
    unchanged_parameters,
)
from rewriter.graph_io import Model
from rewriter.runtime import run_model

TOLERANCE = 1e-4
NEAR_ZERO = 1e-6
NOISE_FACTOR = 3.0  # noise-bound mode: allowed multiple of the original's own float32 noise
ROUNDING_FACTOR = 3.0  # float64 mode: allowed multiple of one rounding of the parameters
FLOAT32_ROUNDING = 2.0 ** -24  # relative rounding error of float32 (half an ulp at most)
MAX_BOUND = 1e-2  # no widened bound exceeds this: beyond it no comparison means anything

MODES = ("float32", "float64", "noise-bound")


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs_error: float
    scale: float
    relative_error: float
    passed: bool
    noise: float = 0.0  # the original's own float32 optimised-vs-unoptimised difference / scale
    bound: float = 0.0  # the relative error allowed for this output


@dataclass
class VerificationReport:
    outputs: list[OutputCheck]
    tolerance: float
    refused: str = ""  # why no verdict could be given
    inputs: dict[str, list[int]] = field(default_factory=dict)
    mode: str = "float32"  # which comparison decided: one of MODES (see the module docstring)
    bound: float = math.nan  # the largest relative error allowed (tolerance unless widened)
    note: str = ""  # why the mode was chosen and what ran it

    def __post_init__(self) -> None:
        if math.isnan(self.bound):
            self.bound = self.tolerance

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
                f"{self.tolerance:.0e}; mode {self.mode}, bound {self.bound:.1e})"
                + (f": {self.note}" if self.note else ""))

    def to_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "tolerance": self.tolerance, "refused": self.refused,
                "mode": self.mode, "bound": self.bound, "note": self.note,
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


def _compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, scale, relative error) of `got` against `ref`."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    if not ref64.size:
        return 0.0, 0.0, 0.0
    scale = float(np.max(np.abs(ref64)))
    err = float(np.max(np.abs(got64 - ref64)))
    return err, scale, err / scale if scale >= NEAR_ZERO else float("inf")


def verify(
    original: Model,
    rewritten: Model,
    inputs: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> VerificationReport:
    feeds = dict(inputs) if inputs is not None else make_inputs(original, seed)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    original_proto = original.to_onnx()
    rewritten_proto = rewritten.to_onnx()
    reference = run_model(original_proto, feeds)
    unoptimised = run_model(original_proto, feeds, optimize=False)
    candidate = run_model(rewritten_proto, feeds)
    checks = []
    refused = ""
    for name, ref in reference.items():
        got = candidate.get(name)
        if got is None or got.shape != ref.shape:
            shape = None if got is None else got.shape
            checks.append(OutputCheck(name, float("inf"), 0.0, float("inf"), False,
                                      bound=tolerance))
            refused = refused or f"output '{name}' has shape {shape}, expected {ref.shape}"
            continue
        err, scale, rel = _compare(ref, got)
        if not np.all(np.isfinite(ref)):
            refused = refused or f"the original's output '{name}' is not finite on these inputs"
        if scale < NEAR_ZERO:
            refused = refused or (f"the original's output '{name}' is (near) zero everywhere "
                                  f"(max |y| = {scale:.1e}); such a comparison proves nothing; "
                                  "pass inputs that give a meaningful output "
                                  "(--inputs FILE.npz)")
        noise = _compare(ref, unoptimised[name])[0] / max(scale, NEAR_ZERO) if ref.size else 0.0
        checks.append(OutputCheck(name, err, scale, rel, bool(rel <= tolerance), noise,
                                  tolerance))
    noisy = [c for c in checks if c.noise > tolerance]
    if noisy and not refused and tolerance < FLOAT32_ROUNDING:
        worst = max(noisy, key=lambda c: c.noise)
        refused = (f"the tolerance {tolerance:.0e} is below float32's resolution "
                   f"({FLOAT32_ROUNDING:.0e} of the scale) and the original's own float32 "
                   f"noise on output '{worst.name}' ({worst.noise:.1e}) exceeds it: a float32 "
                   f"model cannot be checked that closely; use a tolerance of "
                   f"{FLOAT32_ROUNDING:.0e} or more")
    if refused or not noisy:
        return VerificationReport(checks, tolerance, refused, shapes, "float32", tolerance)
    worst = max(noisy, key=lambda c: c.noise)
    why = (f"the original's own float32 noise (onnxruntime optimised vs unoptimised) is "
           f"{worst.noise:.1e} of its scale on output '{worst.name}', above the tolerance")
    try:
        checks64, engines = _judge_float64(original_proto, rewritten_proto, feeds, tolerance,
                                           checks, seed)
    except Float64Unavailable as exc:
        bounded = [replace(c, bound=_widened(tolerance, NOISE_FACTOR * c.noise)) for c in checks]
        bounded = [replace(c, passed=bool(c.relative_error <= c.bound)) for c in bounded]
        return VerificationReport(
            bounded, tolerance, "", shapes, "noise-bound", max(c.bound for c in bounded),
            f"{why}; no float64 run ({exc}), so the float32 error is allowed "
            f"{NOISE_FACTOR:g}x that noise")
    bound = max(c.bound for c in checks64)
    widened = (f"; the bound is {ROUNDING_FACTOR:g}x how far one more float32 rounding of "
               "the parameters the rewrite recomputed moves the float64 output (at most "
               f"{MAX_BOUND:.0e})") if bound > tolerance else ""
    return VerificationReport(checks64, tolerance, "", shapes, "float64", bound,
                              f"{why}, so both models ran in float64, {engines}{widened}")


def _judge_float64(original: onnx.ModelProto, rewritten: onnx.ModelProto,
                   feeds: Mapping[str, np.ndarray], tolerance: float,
                   checks32: list[OutputCheck], seed: int) -> tuple[list[OutputCheck], str]:
    """Per-output checks of the float64 rewrite against the float64 original (see the
    module docstring); raises Float64Unavailable when either cannot run in float64."""
    original64 = to_float64(original)
    reference, engine_original = run_float64(original64, feeds)
    rewritten64 = to_float64(rewritten)
    candidate, engine_rewritten = run_float64(rewritten64, feeds)
    names = {"onnxruntime": "onnxruntime", "reference": "onnx's reference evaluator"}
    engines = (f"in {names[engine_original]}" if engine_original == engine_rewritten else
               f"the original in {names[engine_original]}, the rewrite in "
               f"{names[engine_rewritten]}")
    checks = []
    for check in checks32:
        err, scale, rel = _compare(reference[check.name], candidate[check.name])
        checks.append(replace(check, max_abs_error=err, scale=scale, relative_error=rel,
                              passed=bool(rel <= tolerance), bound=tolerance))
    if all(c.passed for c in checks):
        return checks, engines
    rounded = perturb_parameters(rewritten64, FLOAT32_ROUNDING, seed,
                                 keep=unchanged_parameters(original, rewritten))
    try:
        perturbed, _ = run_float64(rounded, feeds)
    except Float64Unavailable:  # it ran unperturbed; keep the plain tolerance if not
        return checks, engines
    judged = []
    for check in checks:
        moved = _compare(candidate[check.name], perturbed[check.name])[0] / max(
            check.scale, NEAR_ZERO)
        bound = _widened(tolerance, ROUNDING_FACTOR * moved)
        judged.append(replace(check, bound=bound, passed=bool(check.relative_error <= bound)))
    return judged, engines


def _widened(tolerance: float, allowance: float) -> float:
    """max(tolerance, allowance), but never above MAX_BOUND (nor below the tolerance)."""
    if not math.isfinite(allowance):
        return max(tolerance, MAX_BOUND)
    return max(tolerance, min(allowance, MAX_BOUND))
