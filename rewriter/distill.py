"""Recovery by knowledge distillation: train a rewritten model to reproduce the original.

An architecture change (fuse-ibn, align-channels-down, depth-multiplier) starts the
student from composed or pruned weights, and `rewriter.reconstruct.refit` fits them layer
by layer with ridge least squares. A layer-wise linear fit cannot see what the layers after
it do with its errors, and with little calibration data it fits those data rather than the
function; so the student is then trained end to end, against the teacher (the original
model), on unlabeled inputs. Both run as `rewriter.torch_graph.TorchGraph`s (the ONNX graph
interpreted by torch); the trained values are written back into the student's own
initializers, so the ONNX graph never changes, only its numbers.

Loss, per graph output (the mean over outputs, each made scale-free so none dominates):
- classifier logits ([N, classes > 1]): KL divergence between the teacher's and the
  student's softmax at temperature T (TEMPERATURE), times T^2 (Hinton et al.): the soft
  targets carry the teacher's ranking of all classes, not only its top-1, which is the
  information a student needs from few inputs; T^2 keeps gradient size independent of T.
- probabilities (non-negative, summing to 1 over the last axis: a model ending in Softmax):
  the same tempered KL on their logarithms, which are the logits up to a constant per
  sample that softmax ignores. Matching the probabilities at T = 1 instead gives a
  confident sample (p = 0.99999) about a hundred-thousandth of a boundary sample's weight,
  so the student learns almost nothing from the bulk of the data.
- anything else (boxes, feature maps, segmentation logits): mean squared error divided by
  the variance of the teacher's output over the fitting inputs, so an output with values
  in the hundreds weighs the same as one in [0, 1].

Augmentation (fitting inputs only; NCHW inputs at least 8x8): random resized crop (area
0.35..1 of the image, aspect 3/4..4/3 of the input's, resized back with bilinear sampling),
horizontal flip, light brightness/contrast jitter, and mixup of two inputs (HEAVY); from
PLENTIFUL fitting inputs on, crops of 0.8..1 of the area with no flip and no mixup
(LIGHT). The teacher labels every augmented input itself, so the augmented inputs need no
labels; what they buy is more distinct points of the input distribution than the few
calibration images give, so the student matches the teacher's function near the data and
not only at the samples. Many inputs cover the data's distribution themselves: then
far-fetched inputs (mirrored text, half a line, two lines blended) only spend the
student's capacity where the model is never used. When the deployment's inputs are
broader than the calibration data (another scanner, lighting or layout), ROBUST adds
small turns and shears (one affine resampling with the crop), a brightness ramp across
the width, blur, noise and some mixup: the student then matches the teacher around the
data too, at a small cost on data like the calibration data.

Schedule: AdamW (weight decay on weight tensors only) at DEFAULT_LR = 1e-4, with a short
linear warm-up and a cosine decay of the learning rate to 0 over the budget. The student
starts pretrained and refitted, close to the teacher: Adam moves every weight by about
the learning rate per step whatever its gradient, and at 1e-3 the first few dozen steps
undid what the refit found (PP-OCR's text classifier with one IBN fused: held-out top-1
0.98 -> 0.95, recovered only after minutes). The budget is steps, or wall
seconds: then the step count is estimated from the speed of the first steps (and the
cost of one held-out evaluation), so that the cosine ends when the time does. Gradient
norms are clipped (CLIP_NORM): the refit student can be far from the teacher, and one bad
batch early on should not throw away what the refit found.

First phase (`reconstruct`: the nodes a change recorded): FORCED_SHARE of the budget
trains only those nodes, every block boundary forced to the teacher's value, to reproduce
the teacher's next boundaries through their activations (`rewriter.forced_reconstruction`);
then every weight trains end to end as above.

Early stopping: every few steps the student is evaluated on the held-out inputs (never
augmented, never trained on): the output part of the training loss on them (KL or
normalised MSE, which is smooth, where top-1 agreement on a few hundred inputs moves by
chance in steps of 1/n and stopped training while the student still improved), and, for
the progress bar and the history, fidelity as `rewriter.fidelity` measures it. The state
with the lowest held-out loss is kept, and training stops when that has not improved for
PATIENCE evaluations. The best state, which may be the refit student itself (step 0), is
restored at the end: distillation never returns a student further from the teacher on the
held-out data than the one it was given. Without held-out inputs it trains to the end of
the budget.

Determinism: a seed fixes torch's and numpy's generators (all randomness of batches and
augmentation comes from one numpy Generator) and torch runs deterministic algorithms where
it has them; the same seed, data and thread count give the same weights. CUDA is used when
available. After training the weights are written back and the ONNX model is run in
onnxruntime against the trained module; a mismatch raises VerificationError.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from rewriter.errors import BadInputError, MissingExtraError, VerificationError
from rewriter.fidelity import is_probabilities
from rewriter.forced_reconstruction import FORCED_SHARE, NOTHING_RAN, reconstruct_forced
from rewriter.graph_io import Model

__all__ = ["DistillResult", "HistoryEntry", "distill"]

DEFAULT_LR = 1e-4
TEMPERATURE = 3.0
FEATURE_WEIGHT = 1.0  # weight of the intermediate-tensor loss against the output loss
CLIP_NORM = 2.0
PROB_FLOOR = 1e-30  # probabilities are clamped here before their logarithm
WEIGHT_DECAY = 1e-4
WARMUP_STEPS = 10
TIMING_STEPS = 3  # steps timed (after the first, which pays for allocations) to plan a
EVALUATIONS = 20  # held-out evaluations per run (about; at least every MIN_EVAL_EVERY)
MIN_EVAL_EVERY = 5
PATIENCE = 6  # evaluations without improvement before stopping
EVAL_BATCH = 32
CHECK_TOLERANCE = 1e-4  # ONNX vs module, relative to the output's largest magnitude
UNCROPPED = 0.2  # share of samples left at full view (the deployment distribution)
CONTRAST = 0.2  # contrast factor in 1 +- this
BRIGHTNESS = 0.1  # brightness shift in +- this times the inputs' standard deviation
MIXUP_ALPHA = 0.4  # Beta(alpha, alpha) mixing weights: mostly light mixes
MISSING_TORCH = "distillation needs PyTorch: pip install 'rewriter[train]'"


@dataclass(frozen=True)
class Augmentation:
    """How far augmented inputs stray from the data: crop area and aspect ranges (of the
    input's), and the shares of samples flipped left-right and mixed with another."""

    crop_area: tuple[float, float]
    crop_aspect: tuple[float, float]
    flip: float
    mixup: float
    rotate: float = 0.0  # degrees, uniform in +- this
    shear: float = 0.0  # horizontal shear: x shift in pixels per pixel of y, +- this
    gradient: float = 0.0  # brightness ramp across the width, +- this times the std
    blur: float = 0.0  # share of samples blurred (by a random amount up to sigma 1 px)
    noise: float = 0.0  # Gaussian noise up to this times the inputs' std


# Few inputs: stray far, so the student meets the teacher's function between them.
HEAVY = Augmentation((0.35, 1.0), (3 / 4, 4 / 3), 0.5, 0.5)
# Many inputs: they cover the distribution themselves; mirrored text, halves of a line or
# two lines blended are inputs the model never sees, and fitting the teacher there costs
# the student capacity it needs on real inputs.
LIGHT = Augmentation((0.8, 1.0), (0.9, 1.1), 0.0, 0.0)
PLENTIFUL = 500  # fitting inputs from which LIGHT is the default
# Inputs the deployment will see that the calibration data lack (another scanner, lighting,
# layout): LIGHT's crops plus small turns and shears, a brightness ramp, blur, noise and
# some mixup. It gives up a little fidelity on data like the calibration data for more on
# data unlike them (benchmarks/README.md, recovery).
ROBUST = Augmentation((0.8, 1.0), (0.9, 1.1), 0.0, 0.2, rotate=2.0, shear=0.15,
                      gradient=0.3, blur=0.3, noise=0.05)
AUGMENTATIONS = {"light": LIGHT, "heavy": HEAVY, "robust": ROBUST}
AUGMENT_CHOICES = ("auto", *AUGMENTATIONS, "none")


def default_augmentation(count: int) -> Augmentation:
    return LIGHT if count >= PLENTIFUL else HEAVY


def resolve_augmentation(augment: bool | str | Augmentation, count: int
                         ) -> Augmentation | None:
    """The augmentation `augment` names for `count` fitting inputs: 'auto' (or True) is
    LIGHT from PLENTIFUL inputs on and HEAVY below; 'none' (or False) is None."""
    if isinstance(augment, Augmentation):
        return augment
    if augment is True or augment == "auto":
        return default_augmentation(count)
    if augment is False or augment == "none":
        return None
    if augment not in AUGMENTATIONS:
        raise BadInputError(f"unknown --augment {augment!r}; choose "
                            f"{', '.join(AUGMENT_CHOICES)}")
    return AUGMENTATIONS[augment]


class HistoryEntry(NamedTuple):
    """One held-out evaluation: optimiser steps done, mean training loss since the last
    evaluation (nan at step 0), held-out fidelity (on the fitting inputs when there are
    no held-out inputs)."""

    step: int
    loss: float
    fidelity: float
    held_loss: float = float("nan")  # the output loss on the held-out inputs


@dataclass
class DistillResult:
    """The student with its trained weights, and how training went.

    stopped: why training ended: "steps" (the step budget ran out), "time" (the wall
    budget), "patience" (no held-out improvement for PATIENCE evaluations), "diverged"
    (a non-finite loss), or "no-steps" (a budget of zero steps)."""

    model: Model
    history: list[HistoryEntry]
    best_step: int
    stopped: str
    steps: int  # optimiser steps run
    seconds: float
    metric: str  # "top1" or "cosine": how fidelity in `history` is measured
    initial_fidelity: float
    best_fidelity: float
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)
    forced_steps: int = 0  # steps of teacher-forced reconstruction before (not in `steps`)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingExtraError(MISSING_TORCH) from None
    return torch


# -- losses and metrics ---------------------------------------------------------------
@dataclass(frozen=True)
class _OutputKind:
    kind: str  # "logits", "probs" or "dense"
    variance: float  # of the teacher's output over the fitting inputs (dense outputs)
    classifier: bool  # [N, classes > 1]: scored by top-1 agreement


def _output_kind(values: np.ndarray) -> _OutputKind:
    values = np.asarray(values, np.float64)
    variance = max(float(values.var()), 1e-12)
    classifier = values.ndim == 2 and values.shape[1] > 1
    if is_probabilities(values):
        return _OutputKind("probs", variance, classifier)
    if classifier:
        return _OutputKind("logits", variance, classifier)
    return _OutputKind("dense", variance, classifier)


def feature_taps(teacher: Model, student: Model) -> list[str]:
    """Intermediate tensors to match: the inputs of the student's convs and gemms that the
    teacher computes too, under the same name and shape (block boundaries: passes keep
    tensor names, and a tensor whose channels a rewrite pruned has another shape). Graph
    inputs and outputs are left out (the outputs have their own loss)."""
    graph_io = ({t.name for t in student.graph.inputs}
                | {t.name for t in student.graph.outputs})
    teacher_names = {t.name for node in teacher.graph.nodes for t in node.outputs}
    taps: dict[str, None] = {}
    for node in student.graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul") or not node.inputs:
            continue
        name = node.inputs[0].name
        if name in graph_io or name not in teacher_names:
            continue
        try:
            same = teacher.shape(name) == student.shape(name)
        except Exception:  # a shape analysis cannot give: not a tap
            same = False
        if same:
            taps[name] = None
    return list(taps)


def boundary_variances(torch: Any, teacher_net: Any, names: list[str],
                       inputs: Mapping[str, np.ndarray], device: Any = "cpu"
                       ) -> dict[str, float]:
    """Tap -> the teacher's variance of it over the first inputs (what makes each
    boundary's squared error scale-free)."""
    teacher_net.taps = names
    try:
        tapped = _run(torch, teacher_net, {k: v[:EVAL_BATCH] for k, v in inputs.items()},
                      device)
    finally:
        teacher_net.taps = []
    return {n: max(float(tapped[n].var()), 1e-12) for n in names}


def _loss(torch: Any, kinds: Mapping[str, _OutputKind], student: Mapping[str, Any],
          teacher: Mapping[str, Any], temperature: float,
          taps: Mapping[str, float] | None = None, tap_weight: float = 0.0) -> Any:
    F = torch.nn.functional
    total = 0.0
    if taps and tap_weight > 0:
        # block-wise reconstruction (BRECQ-like): dense supervision at every block
        # boundary, each tensor made scale-free by the teacher's variance of it
        features = sum(((student[n] - teacher[n]) ** 2).mean() / v for n, v in taps.items())
        total = tap_weight * features / len(taps) * max(len(kinds), 1)
    for name, kind in kinds.items():
        s, t = student[name], teacher[name]
        if kind.kind in ("logits", "probs"):
            if kind.kind == "probs":  # back to logits (a probability that underflowed
                # to 0 in float32 stays far below the others)
                s, t = torch.log(s.clamp_min(PROB_FLOOR)), torch.log(t.clamp_min(PROB_FLOOR))
            log_s = F.log_softmax(s / temperature, dim=-1)
            log_t = F.log_softmax(t / temperature, dim=-1)
            term = (log_t.exp() * (log_t - log_s)).sum(-1).mean() * temperature ** 2
        else:
            term = ((s - t) ** 2).mean() / kind.variance
        total = total + term
    return total / max(len(kinds), 1)


def _fidelity(kinds: Mapping[str, _OutputKind], student: Mapping[str, np.ndarray],
              teacher: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(fidelity, min cosine) of the student's outputs against the teacher's: top-1
    agreement when every output is a classifier's, else cosine, minimum over outputs (as
    rewriter.fidelity's default metric)."""
    top1s, cosines = [], []
    for name, kind in kinds.items():
        s = np.asarray(student[name], np.float64)
        t = np.asarray(teacher[name], np.float64)
        fs, ft = s.reshape(len(s), -1), t.reshape(len(t), -1)
        norms = np.linalg.norm(fs, axis=1) * np.linalg.norm(ft, axis=1)
        cosines.append(float(np.mean(np.sum(fs * ft, axis=1) / np.maximum(norms, 1e-30))))
        if kind.classifier:
            top1s.append(float(np.mean(np.argmax(s, 1) == np.argmax(t, 1))))
    cosine = min(cosines)
    if top1s and len(top1s) == len(kinds):
        return min(top1s), cosine
    return cosine, cosine


def _held_loss(torch: Any, kinds: Mapping[str, _OutputKind],
               student: Mapping[str, np.ndarray], teacher: Mapping[str, np.ndarray],
               temperature: float) -> float:
    """The output part of the training loss (`_loss`) on held-out outputs: what early
    stopping follows. Top-1 agreement on a few hundred inputs moves in steps of 1/n and
    by chance; this loss is smooth, and falls as long as the student comes closer to the
    teacher everywhere, near the decision boundaries included."""
    with torch.no_grad():
        return float(_loss(torch, kinds, {k: torch.as_tensor(v) for k, v in student.items()},
                           {k: torch.as_tensor(v) for k, v in teacher.items()}, temperature))


# -- augmentation ---------------------------------------------------------------------
def _augment(torch: Any, batch: dict[str, Any], rng: np.random.Generator,
             stds: Mapping[str, float], how: Augmentation = HEAVY) -> dict[str, Any]:
    F = torch.nn.functional
    n = len(next(iter(batch.values())))
    out: dict[str, Any] = {}
    for name, x in batch.items():
        if not x.is_floating_point() or x.dim() != 4 or min(x.shape[2:]) < 8:
            out[name] = x
            continue
        # random resized crop + flip as one affine resampling per sample
        area = rng.uniform(*how.crop_area, size=n)
        aspect = np.exp(rng.uniform(np.log(how.crop_aspect[0]), np.log(how.crop_aspect[1]),
                                    size=n))
        width = np.minimum(np.sqrt(area * aspect), 1.0)
        height = np.minimum(np.sqrt(area / aspect), 1.0)
        keep = rng.random(n) < UNCROPPED
        width[keep], height[keep] = 1.0, 1.0
        cx = rng.uniform(-1, 1, size=n) * (1 - width)
        cy = rng.uniform(-1, 1, size=n) * (1 - height)
        flip = np.where(rng.random(n) < how.flip, -1.0, 1.0)
        theta = np.zeros((n, 2, 3))
        theta[:, 0, 0], theta[:, 0, 2] = width * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = height, cy
        if how.rotate or how.shear:
            # a turn and a shear in pixels, in the [-1, 1] grid coordinates of a
            # non-square image: A_grid = D^-1 A_px D with D = diag(W/2, H/2)
            angle = np.deg2rad(rng.uniform(-how.rotate, how.rotate, size=n))
            shear = rng.uniform(-how.shear, how.shear, size=n)
            aspect_hw = x.shape[2] / x.shape[3]
            geometric = np.zeros((n, 2, 2))
            geometric[:, 0, 0] = np.cos(angle)
            geometric[:, 0, 1] = (shear * np.cos(angle) - np.sin(angle)) * aspect_hw
            geometric[:, 1, 0] = np.sin(angle) / aspect_hw
            geometric[:, 1, 1] = np.cos(angle) + shear * np.sin(angle)
            theta[:, :, :2] = theta[:, :, :2] @ geometric
        theta_t = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta_t, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)
        # contrast around each image's mean, brightness in units of the data's spread
        contrast = _per_sample(torch, 1 + rng.uniform(-CONTRAST, CONTRAST, size=n), x)
        shift = _per_sample(torch, rng.uniform(-BRIGHTNESS, BRIGHTNESS, size=n) * stds[name],
                            x)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + shift
        if how.gradient:
            ramp = torch.linspace(-1.0, 1.0, x.shape[3], dtype=x.dtype, device=x.device)
            slope = rng.uniform(-how.gradient, how.gradient, size=n) * stds[name]
            x = x + _per_sample(torch, slope, x) * ramp
        if how.blur:
            amount = np.where(rng.random(n) < how.blur, rng.random(n), 0.0)
            x = x + _per_sample(torch, amount, x) * (_blurred(torch, x) - x)
        if how.noise:
            scale = rng.uniform(0, how.noise, size=n) * stds[name]
            x = x + _per_sample(torch, scale, x) * torch.as_tensor(
                rng.standard_normal(tuple(x.shape)), dtype=x.dtype, device=x.device)
        out[name] = x
    # mixup: the same partner and weight for every input of a sample
    mixed = rng.random(n) < how.mixup
    if n > 1 and mixed.any():
        partner = rng.permutation(n)
        lam = np.where(mixed, rng.beta(MIXUP_ALPHA, MIXUP_ALPHA, size=n), 1.0)
        lam = np.maximum(lam, 1 - lam)  # the sample itself stays the larger part
        for name, x in out.items():
            if not x.is_floating_point():
                continue
            w = _per_sample(torch, lam, x)
            out[name] = w * x + (1 - w) * x[torch.as_tensor(partner, device=x.device)]
    return out


def _per_sample(torch: Any, values: np.ndarray, like: Any) -> Any:
    """One value per sample as a tensor that broadcasts over `like`'s other axes."""
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(
        len(values), *([1] * (like.dim() - 1)))


def _blurred(torch: Any, x: Any) -> Any:
    """x blurred by a 3x3 Gaussian of sigma 1 px, channel by channel."""
    taps = torch.tensor([0.2741, 0.4519, 0.2741], dtype=x.dtype, device=x.device)
    kernel = (taps[:, None] * taps[None, :]).expand(x.shape[1], 1, 3, 3)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.conv2d(padded, kernel, groups=x.shape[1])


# -- the run --------------------------------------------------------------------------
@contextmanager
def _torch_settings(torch: Any, seed: int, threads: int | None) -> Iterator[None]:
    """Seeded, deterministic torch for the duration; the caller's settings restored."""
    # cuBLAS needs this set before its first use to be deterministic
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    old_threads = torch.get_num_threads()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        if threads:
            torch.set_num_threads(old_threads)


def _run(torch: Any, module: Any, inputs: Mapping[str, np.ndarray], device: Any,
         batch: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    count = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, count, batch):
            feeds = {k: torch.as_tensor(v[start:start + batch], device=device)
                     for k, v in inputs.items()}
            for name, value in module(feeds).items():
                parts.setdefault(name, []).append(value.float().cpu().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _check_inputs(model: Model, data: Mapping[str, np.ndarray], what: str
                  ) -> dict[str, np.ndarray]:
    names = [t.name for t in model.graph.inputs]
    missing = [n for n in names if n not in data]
    if missing:
        raise BadInputError(f"{what}: no values for input(s) {missing}")
    arrays = {n: np.ascontiguousarray(np.asarray(data[n], np.float32)) for n in names}
    counts = {len(v) for v in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise BadInputError(f"{what}: inputs disagree on the sample count or are empty")
    return arrays


def distill(teacher: Model, student: Model, fit_inputs: Mapping[str, np.ndarray],
            held_inputs: Mapping[str, np.ndarray] | None = None, *,
            seconds: float | None = None, steps: int | None = None, seed: int = 0,
            batch: int = 16, lr: float = DEFAULT_LR, temperature: float = TEMPERATURE,
            feature_weight: float = FEATURE_WEIGHT,
            patience: int = PATIENCE, eval_every: int | None = None,
            augment: bool | str | Augmentation = "auto", threads: int | None = None,
            reconstruct: Sequence[str] = (), forced_share: float = FORCED_SHARE,
            progress: bool = False) -> DistillResult:
    """Train `student`'s weights to reproduce `teacher`'s outputs; see the module docstring.

    fit_inputs / held_inputs: graph input name -> float32 array, samples on axis 0; held
    inputs drive early stopping and are never trained on (None: train to the end of the
    budget). seconds / steps: the budget (at least one; both: whichever ends first).
    batch: samples per optimiser step. eval_every: steps between held-out evaluations
    (default: about EVALUATIONS per run). threads: torch's CPU threads during the run
    (default: as set). augment: 'auto', 'light', 'heavy', 'robust', 'none' or an
    Augmentation (`resolve_augmentation`). reconstruct: student nodes (the changed ones)
    to fit first, each with its inputs forced to the teacher's
    (`rewriter.forced_reconstruction`), for `forced_share` of the budget. Returns the
    student with the best state's weights written back.
    """
    torch = _torch()
    from rewriter.torch_graph import TorchGraph

    if seconds is None and steps is None:
        raise BadInputError("distill needs a budget: seconds or steps")
    if steps is not None and steps < 0 or seconds is not None and seconds < 0:
        raise BadInputError("distill: the budget must not be negative")
    if not 0 <= forced_share < 1:
        raise BadInputError("distill: forced_share must be in [0, 1)")
    if batch < 1 or lr < 0:
        raise BadInputError("distill: batch must be positive and lr non-negative")
    started = time.perf_counter()
    fit = _check_inputs(student, fit_inputs, "fitting inputs")
    held = _check_inputs(student, held_inputs, "held-out inputs") if held_inputs else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(seed)
    warnings: list[str] = []

    with _torch_settings(torch, seed, threads):
        teacher_net = TorchGraph(teacher, trainable=False).to(device).eval()
        for buffer in teacher_net.buffers():
            buffer.requires_grad_(False)
        student_net = TorchGraph(student, trainable=True).to(device)
        params = list(student_net.params.values())
        if not params:
            raise BadInputError("distill: the student has no trainable weights")
        optimizer = torch.optim.AdamW(
            [{"params": [p for p in params if p.dim() > 1], "weight_decay": WEIGHT_DECAY},
             {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}],
            lr=lr)

        fit_reference = _run(torch, teacher_net, fit, device)
        kinds = {name: _output_kind(value) for name, value in fit_reference.items()}
        boundaries = (boundary_variances(torch, teacher_net, feature_taps(teacher, student),
                                         fit, device)
                      if feature_weight > 0 or reconstruct else {})
        taps = boundaries if feature_weight > 0 else {}
        metric = "top1" if all(k.classifier for k in kinds.values()) else "cosine"
        score_inputs = held if held is not None else fit
        score_reference = (_run(torch, teacher_net, held, device) if held is not None
                           else fit_reference)
        stds = {k: float(v.std()) or 1.0 for k, v in fit.items()}
        fit_t = {k: torch.as_tensor(v) for k, v in fit.items()}
        count = len(next(iter(fit.values())))
        how = resolve_augmentation(augment, count)

        def evaluate() -> tuple[float, float, float]:
            """(fidelity, min cosine, held-out loss) of the student now."""
            student_net.eval()
            outputs = _run(torch, student_net, score_inputs, device)
            result = (*_fidelity(kinds, outputs, score_reference),
                      _held_loss(torch, kinds, outputs, score_reference, temperature))
            student_net.train()
            return result

        order: list[int] = []

        def next_batch() -> dict[str, Any]:
            """The next training batch, augmented; batches cycle through seeded
            permutations, so every input is used."""
            while len(order) < batch:
                order.extend(rng.permutation(count).tolist())
            index = torch.as_tensor(order[:batch])
            del order[:batch]
            feeds = {k: v[index].to(device) for k, v in fit_t.items()}
            return feeds if how is None else _augment(torch, feeds, rng, stds, how)

        t0 = time.perf_counter()
        initial = evaluate()
        eval_seconds = time.perf_counter() - t0
        best = initial
        best_state = [p.detach().clone() for p in params]
        best_step = 0
        history = [HistoryEntry(0, float("nan"), initial[0], initial[2])]
        total = steps if seconds is None else None
        every = eval_every
        if every is None and total is not None:
            every = max(MIN_EVAL_EVERY, total // EVALUATIONS)
        forced = NOTHING_RAN
        if reconstruct and forced_share > 0:
            forced = reconstruct_forced(
                torch, teacher_net, student_net, reconstruct, boundaries, next_batch,
                steps=None if steps is None else round(forced_share * steps),
                seconds=None if seconds is None else forced_share * seconds)
            if steps is not None:
                steps = max(0, steps - forced.steps)
                total = steps if seconds is None else None
                if eval_every is None and total is not None:
                    every = max(MIN_EVAL_EVERY, total // EVALUATIONS)
        stale = 0
        stopped = "steps"
        losses: list[float] = []
        step = 0
        timing_start = 0.0
        bar = None
        shown = initial[0]  # the last held-out fidelity, for the progress bar

        def checkpoint() -> bool:
            """Evaluate, record, keep the state if it is the best; True if it is."""
            nonlocal best, best_step, best_state, stale, losses, shown
            score = evaluate()
            mean_loss = float(np.mean(losses)) if losses else float("nan")
            history.append(HistoryEntry(step, mean_loss, score[0], score[2]))
            losses = []
            shown = score[0]
            better = score[2] < best[2] - 1e-9 * max(abs(best[2]), 1e-12)
            # without held-out inputs there is nothing to select by: the last state is kept
            if held is None or better:
                best, best_step, stale = score, step, 0
                best_state = [p.detach().clone() for p in params]
                return True
            stale += 1
            return False

        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="distill", unit="step", leave=False)
        try:
            while True:
                if total is not None and step >= total:
                    stopped = "steps" if seconds is None or (
                        steps is not None and total >= steps) else "time"
                    break
                if seconds is not None and time.perf_counter() - started >= seconds:
                    stopped = "time"
                    break
                if steps is not None and step >= steps:  # before a time plan exists
                    stopped = "steps"
                    break
                feeds = next_batch()
                warm = min(WARMUP_STEPS, max(1, (total or 10 * WARMUP_STEPS) // 10))
                factor = min(1.0, (step + 1) / warm)
                if total is not None:
                    factor *= 0.5 * (1 + math.cos(math.pi * step / total))
                for group in optimizer.param_groups:
                    group["lr"] = lr * factor
                teacher_net.taps = student_net.taps = list(taps)
                with torch.no_grad():
                    target = teacher_net(feeds)
                loss = _loss(torch, kinds, student_net(feeds), target, temperature, taps,
                             feature_weight)
                teacher_net.taps = student_net.taps = []
                value = float(loss.detach())
                if not math.isfinite(value):
                    stopped = "diverged"
                    warnings.append(f"distillation diverged at step {step + 1} "
                                    "(non-finite loss); kept the best state before it")
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
                optimizer.step()
                step += 1
                losses.append(value)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", fid=f"{shown:.4f}")
                # plan a time budget from the speed of steps 2..TIMING_STEPS+1
                if seconds is not None and total is None:
                    if step == 1:
                        timing_start = time.perf_counter()
                    elif step == TIMING_STEPS + 1:
                        per_step = (time.perf_counter() - timing_start) / TIMING_STEPS
                        left = seconds - (time.perf_counter() - started)
                        guess = step + max(0, int(left / per_step))
                        every = eval_every or max(MIN_EVAL_EVERY, guess // EVALUATIONS)
                        plan = step + max(0, int(left / (per_step + eval_seconds / every)))
                        total = plan if steps is None else min(plan, steps)
                        total = max(total, step)
                        if eval_every is None:
                            every = max(MIN_EVAL_EVERY, total // EVALUATIONS)
                        if bar is not None:
                            bar.total = total
                            bar.refresh()
                last = total is not None and step >= total
                if (every is not None and step % every == 0) or last:
                    # a noisy start is normal: patience counts from half-way through
                    halfway = total is None or step >= total // 2
                    if not checkpoint() and stale >= patience and not last and halfway:
                        stopped = "patience"
                        break
            # a budget can run out between evaluations: score what was trained since
            if stopped in ("time", "steps") and history[-1].step < step:
                checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if steps == 0:
            stopped = "no-steps"
        with torch.no_grad():
            for param, value in zip(params, best_state):
                param.copy_(value)
        trained = student_net.write_back(student)
        _check_written(torch, student_net, trained, score_inputs)

    return DistillResult(
        model=trained, history=history, best_step=best_step, stopped=stopped, steps=step,
        seconds=time.perf_counter() - started, metric=metric, initial_fidelity=initial[0],
        best_fidelity=best[0], device=str(device), warnings=warnings,
        forced_steps=forced.steps)


def _check_written(torch: Any, module: Any, model: Model,
                   inputs: Mapping[str, np.ndarray]) -> None:
    """The written ONNX model computes what the trained module does (in onnxruntime)."""
    from rewriter.runtime import run_model

    feeds = {k: v[:EVAL_BATCH] for k, v in inputs.items()}
    # On the CPU in float32: a GPU's convolutions may run in TF32 (PyTorch's default on
    # Ampere and later), 1e-3 off float32, which would fail a correct write.
    cpu = torch.device("cpu")
    module.to(cpu).eval()
    expected = _run(torch, module, feeds, cpu)
    got = run_model(model.to_onnx(infer_shapes=False), feeds)
    for name, want in expected.items():
        scale = max(float(np.abs(want).max()), 1e-12)
        error = float(np.abs(got[name] - want).max()) / scale
        if not error < CHECK_TOLERANCE:
            raise VerificationError(
                f"distill: the written ONNX model's output '{name}' differs from the "
                f"trained module by {error:.2e} of its scale (limit {CHECK_TOLERANCE:g})")
