"""Distillation recovers what an architecture change and its ridge refit lost, on inputs
it never trained on; it is deterministic per seed; its written ONNX model is checked."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rewriter import zoo  # noqa: E402
from rewriter.distill import _output_kind, distill  # noqa: E402
from rewriter.errors import BadInputError, MissingExtraError, VerificationError  # noqa: E402
from rewriter.fidelity import measure_fidelity  # noqa: E402
from rewriter.graph_io import Model, model_from_proto  # noqa: E402
from rewriter.passes import get_pass  # noqa: E402
from rewriter.reconstruct import refit  # noqa: E402
from rewriter.rewrite import apply_pass  # noqa: E402
from rewriter.samples import natural_photos  # noqa: E402
from tests.helpers import record_calls  # noqa: E402

RESOLUTION = 64
THREADS = 1  # see the one_torch_thread fixture (conftest.py)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _crops(images: list[np.ndarray], per_image: int, seed: int) -> np.ndarray:
    """Random square crops (30-90% of the shorter side) of photos, resized to RESOLUTION
    and normalised: natural image statistics, not white noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        h, w = image.shape[:2]
        for _ in range(per_image):
            side = int(min(h, w) * rng.uniform(0.3, 0.9))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(image[top:top + side, left:left + side]).resize(
                (RESOLUTION, RESOLUTION), Image.BILINEAR)
            out.append(((np.asarray(crop, np.float32) / 255 - 0.45) / 0.25).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(fit, held): crops of DIFFERENT photos, so held-out fidelity is generalisation."""
    photos = natural_photos()
    names = sorted(photos)
    if len(names) < 5:
        pytest.skip("needs scikit-image's sample photos")
    fit_names, held_names = names[:-3], names[-3:]
    return ({"input": _crops([photos[n] for n in fit_names], 8, seed=0)},
            {"input": _crops([photos[n] for n in held_names], 12, seed=1)})


@pytest.fixture(scope="module")
def fused_model() -> Model:
    """MobileNetV2 0.5/64 with every IBN fused (fuse-ibn), before any refit:
    `changes.refit` names the fused convs."""
    teacher = model_from_proto(zoo.build("mobilenetv2", width=0.5, resolution=RESOLUTION,
                                         fold_bn=True))
    return apply_pass(teacher, get_pass("fuse-ibn")).model


@pytest.fixture(scope="module")
def pair(data, fused_model) -> tuple[Model, Model]:
    """(teacher, student): MobileNetV2 0.5/64 and `fused_model` ridge-refitted on the
    fitting inputs."""
    teacher = model_from_proto(zoo.build("mobilenetv2", width=0.5, resolution=RESOLUTION,
                                         fold_bn=True))
    fit = data[0]["input"]
    batches = [{"input": fit[i:i + 8]} for i in range(0, len(fit), 8)]
    return teacher, refit(teacher, fused_model, batches)


def _fidelity(teacher: Model, model: Model, held: dict[str, np.ndarray]):
    x = held["input"]
    return measure_fidelity(teacher, model, [{"input": x[i:i + 8]}
                                             for i in range(0, len(x), 8)]).outputs[0]


def _weights(model: Model) -> dict[str, np.ndarray]:
    return {k: np.array(v.values) for k, v in model.graph.tensors().items()
            if hasattr(v, "values")}


def test_distillation_beats_the_refit_on_held_out_photos(pair, data):
    teacher, student = pair
    fit, held = data
    result = distill(teacher, student, fit, held, steps=150, seed=0, threads=THREADS)
    before, after = _fidelity(teacher, student, held), _fidelity(teacher, result.model, held)
    # measured: cosine 0.71 -> 0.82, top-1 agreement 0.03 -> 0.44 on 36 held-out crops
    assert after.cosine > before.cosine + 0.05, (before, after)
    assert after.top1_agreement >= before.top1_agreement
    assert result.metric == "top1" and result.best_step > 0
    assert result.stopped in ("steps", "patience") and result.steps > result.best_step - 1
    assert result.best_fidelity >= result.initial_fidelity
    losses = [h.loss for h in result.history[1:]]
    assert losses[-1] < losses[0]
    # the training changed weights, and only weights: same graph, same names and shapes
    old, new = _weights(student), _weights(result.model)
    assert old.keys() == new.keys()
    assert all(old[k].shape == new[k].shape for k in old)
    assert any(not np.array_equal(old[k], new[k]) for k in old)
    assert [(n.op, n.name) for n in result.model.graph.nodes] == [
        (n.op, n.name) for n in student.graph.nodes]


def test_no_training_no_gain(pair, data):
    """The gain above comes from training: with lr 0 (or 0 steps) nothing changes."""
    teacher, student = pair
    fit, held = data
    before = _fidelity(teacher, student, held)
    for kwargs in ({"steps": 10, "lr": 0.0, "eval_every": 5}, {"steps": 0}):
        result = distill(teacher, student, fit, held, seed=0, threads=THREADS, **kwargs)
        after = _fidelity(teacher, result.model, held)
        assert abs(after.cosine - before.cosine) < 1e-6
        old, new = _weights(student), _weights(result.model)
        assert all(np.array_equal(old[k], new[k]) for k in old)
    assert result.stopped == "no-steps" and result.steps == 0


def test_same_seed_same_weights(pair, data):
    teacher, student = pair
    fit, held = data
    runs = [distill(teacher, student, fit, held, steps=6, seed=seed, eval_every=3,
                    threads=THREADS) for seed in (3, 3, 4)]
    a, b, c = (_weights(r.model) for r in runs)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    first, second = ([(h.step, h.fidelity) for h in r.history] for r in runs[:2])
    assert first == second
    assert np.array_equal([h.loss for h in runs[0].history], [h.loss for h in runs[1].history],
                          equal_nan=True)


def test_time_budget_is_kept(pair, data):
    teacher, student = pair
    fit, held = data
    result = distill(teacher, student, fit, held, seconds=3.0, steps=None, seed=0,
                     threads=THREADS)
    assert result.steps > 3 and result.stopped in ("time", "patience")
    assert result.seconds < 3.0 + 4.0  # the budget plus preparing and checking


def test_dense_outputs_are_distilled(data):
    """ssdlite: several dense outputs (boxes, scores), scored by cosine."""
    teacher = model_from_proto(zoo.build("ssdlite", width=0.5, resolution=RESOLUTION))
    from rewriter.torch_graph import TorchGraph

    net = TorchGraph(teacher)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in net.parameters():
            param.mul_(1 + 0.1 * torch.randn(param.shape, generator=generator))
    student = net.write_back(teacher)
    fit, held = data
    # random weights perturbed by 10%: a larger step than the default for a pretrained net
    result = distill(teacher, student, fit, held, steps=30, seed=0, eval_every=10,
                     threads=THREADS, lr=1e-3)
    assert result.metric == "cosine"
    # measured: min cosine over the outputs 0.47 -> 0.51
    assert result.best_fidelity > result.initial_fidelity + 0.02
    assert result.history[-1].loss < result.history[1].loss


def test_output_kinds():
    logits = np.random.default_rng(0).standard_normal((4, 10))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert _output_kind(logits).kind == "logits" and _output_kind(logits).classifier
    assert _output_kind(probs).kind == "probs"
    assert _output_kind(logits.reshape(4, 10, 1, 1)).kind == "dense"
    assert _output_kind(np.ones((4, 1))).kind == "dense"


def test_a_wrong_write_back_is_caught(pair, data, monkeypatch):
    from rewriter.torch_graph import TorchGraph

    teacher, student = pair
    fit, held = data
    monkeypatch.setattr(TorchGraph, "write_back", lambda self, model: model.copy())
    with pytest.raises(VerificationError, match="differs from the trained module"):
        # no held-out inputs: the final state is kept, which differs from the student's
        distill(teacher, student, fit, None, steps=5, lr=1e-2, seed=0, threads=THREADS)


def test_missing_torch_says_how_to_install(pair, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    teacher, student = pair
    with pytest.raises(MissingExtraError, match=r"pip install 'rewriter\[train\]'"):
        distill(teacher, student, data[0], data[1], steps=1)


def _mirror_corr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Correlation of `b` with `a` and with `a` mirrored left-right."""
    def corr(x, y):
        x, y = x.ravel() - x.mean(), y.ravel() - y.mean()
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    return corr(a, b), corr(a[..., ::-1], b)


def test_light_augmentation_never_mirrors_and_heavy_does():
    """Text read mirrored is an input a text model never sees: plentiful data are
    augmented without flips or mixing; few inputs are."""
    from rewriter.distill import HEAVY, LIGHT, PLENTIFUL, _augment, default_augmentation

    assert default_augmentation(PLENTIFUL) == LIGHT
    assert default_augmentation(PLENTIFUL - 1) == HEAVY
    rng = np.random.default_rng(3)
    # left-right asymmetric images: a ramp along W plus noise
    x = (np.linspace(-1, 1, 64)[None, None, None, :]
         + 0.1 * rng.standard_normal((32, 3, 32, 64))).astype(np.float32)
    mirrored = {}
    for name, how in (("light", LIGHT), ("heavy", HEAVY)):
        out = _augment(torch, {"input": torch.as_tensor(x)}, np.random.default_rng(0),
                       {"input": float(x.std())}, how)["input"].numpy()
        mirrored[name] = sum(c_mirror > c_same for c_same, c_mirror in
                             (_mirror_corr(x[i], out[i]) for i in range(len(x))))
    assert mirrored["light"] == 0
    assert mirrored["heavy"] >= 5  # about half of 32, flipped (mixup may blur a few)


def test_early_stopping_loss_is_the_training_loss_on_held_out_outputs():
    """The held-out loss early stopping follows is the training loss (without feature
    taps) on the same outputs, for every output kind: KL at temperature T times T^2 for
    logits and for probabilities (through their logarithms: softmax outputs score as the
    logits they came from), MSE over the teacher's variance otherwise."""
    from rewriter.distill import _held_loss

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    t_ = 3.0
    rng = np.random.default_rng(0)
    logits_s, logits_t = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    probs = np.exp(logits_t) / np.exp(logits_t).sum(-1, keepdims=True)
    probs_s = np.exp(logits_s) / np.exp(logits_s).sum(-1, keepdims=True)
    dense_s, dense_t = rng.standard_normal((6, 3, 4)), 2 * rng.standard_normal((6, 3, 4))
    student = {"l": logits_s, "p": probs_s, "d": dense_s}
    teacher = {"l": logits_t, "p": probs, "d": dense_t}
    kinds = {k: _output_kind(v) for k, v in teacher.items()}
    assert [kinds[k].kind for k in "lpd"] == ["logits", "probs", "dense"]
    ls, lt = log_softmax(logits_s / t_), log_softmax(logits_t / t_)
    want = np.mean([
        (np.exp(lt) * (lt - ls)).sum(-1).mean() * t_ ** 2,
        (np.exp(lt) * (lt - ls)).sum(-1).mean() * t_ ** 2,
        ((dense_s - dense_t) ** 2).mean() / kinds["d"].variance])
    assert _held_loss(torch, kinds, student, teacher, t_) == pytest.approx(want, rel=1e-6)
    assert _held_loss(torch, kinds, teacher, teacher, t_) == pytest.approx(0.0, abs=1e-9)


def _boundary_error(teacher: Model, student: Model, held: dict[str, np.ndarray],
                    taps: list[str]) -> dict[str, float]:
    """Per boundary: the student's squared error with every boundary forced to the
    teacher's value, over the teacher's variance (what forced reconstruction fits)."""
    from rewriter.torch_graph import TorchGraph

    t_net, s_net = TorchGraph(teacher, trainable=False), TorchGraph(student)
    t_net.taps = s_net.taps = taps
    with torch.no_grad():
        want = t_net(held)
        s_net.forced = {n: want[n] for n in taps}
        got = s_net(held)
    return {n: float(((got[n] - want[n]) ** 2).mean() / want[n].var()) for n in taps}


def test_forced_reconstruction_fits_the_changed_layers_alone(pair, data, fused_model):
    """The fused convs, trained with their inputs forced to the teacher's, come closer to
    the teacher's next boundary on held-out photos; no other weight moves."""
    from rewriter.distill import boundary_variances, feature_taps
    from rewriter.forced_reconstruction import reconstruct_forced
    from rewriter.torch_graph import TorchGraph

    teacher, student = pair
    fit, held = data
    fused = fused_model.changes.refit
    assert len(fused) >= 5
    taps = feature_taps(teacher, student)
    t_net, s_net = TorchGraph(teacher, trainable=False), TorchGraph(student)
    variances = boundary_variances(torch, t_net, taps, fit)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(fit["input"])

    def batch() -> dict:
        return {"input": x[rng.integers(0, len(x), 8)]}

    torch.manual_seed(0)
    result = reconstruct_forced(torch, t_net, s_net, fused, variances, batch, steps=120)
    assert result.steps == 120 and result.last_loss < result.first_loss
    trained = s_net.write_back(student)
    before = _boundary_error(teacher, student, held, taps)
    after = _boundary_error(teacher, trained, held, taps)
    moved = [n for n in taps if after[n] != pytest.approx(before[n], rel=1e-6, abs=1e-9)]
    # measured: mean error over the 16 boundaries the fused convs reach 0.50 -> 0.38
    assert len(moved) >= len(fused)
    assert np.mean([after[n] for n in moved]) < 0.85 * np.mean([before[n] for n in moved])
    reads = {t.name for n in student.graph.nodes if n.name in fused for t in n.inputs}
    old, new = _weights(student), _weights(trained)
    assert {k for k in old if not np.array_equal(old[k], new[k])} <= reads
    assert any(not np.array_equal(old[k], new[k]) for k in reads if k in old)


def test_distill_spends_a_share_of_its_steps_on_forced_reconstruction(pair, data,
                                                                     fused_model):
    teacher, student = pair
    fit, held = data
    fused = fused_model.changes.refit
    result = distill(teacher, student, fit, held, steps=20, seed=0, eval_every=5,
                     threads=THREADS, reconstruct=fused, forced_share=0.25)
    assert result.forced_steps == 5 and result.steps <= 15
    plain = distill(teacher, student, fit, held, steps=20, seed=0, eval_every=5,
                    threads=THREADS)
    assert plain.forced_steps == 0
    with pytest.raises(BadInputError, match="forced_share"):
        distill(teacher, student, fit, held, steps=2, reconstruct=fused, forced_share=1.0)


def test_a_rewritten_model_from_a_file_names_its_changed_nodes(pair, fused_model, data,
                                                                tmp_path, monkeypatch):
    """`Model.changes` is not written to ONNX: `rewriter recover` on files finds the
    nodes to reconstruct first by their weights, and distills them first."""
    from rewriter.graph_io import load_model
    from rewriter.recovery import changed_nodes

    teacher, rewritten = pair[0], fused_model
    path = tmp_path / "fused.onnx"
    path.write_bytes(rewritten.to_onnx().SerializeToString())
    from_file = load_model(path)
    assert not from_file.changes.refit
    assert sorted(changed_nodes(teacher, from_file)) == sorted(rewritten.changes.refit)
    assert changed_nodes(teacher, teacher) == []
    # and `recover` hands them to distillation's first phase
    import rewriter.distill as distill_module
    from rewriter.recovery import recover

    calls = record_calls(monkeypatch, distill_module, "distill")
    x = data[0]["input"]
    recover(teacher, from_file, [{"input": x[i:i + 4]} for i in range(0, len(x), 4)],
            budget="4steps")
    assert [sorted(c.get("reconstruct", ())) for c in calls] == \
        [sorted(rewritten.changes.refit)]


def test_augmentation_by_name():
    """'auto' follows the amount of data; names map to presets; a bad name is one clear
    error, raised before any training."""
    from rewriter.distill import HEAVY, LIGHT, PLENTIFUL, ROBUST, resolve_augmentation
    from rewriter.recovery import check_augmentation

    assert resolve_augmentation("auto", PLENTIFUL) == LIGHT
    assert resolve_augmentation("auto", 10) == HEAVY
    assert resolve_augmentation("robust", 10) == ROBUST
    assert resolve_augmentation("none", 10) is None
    assert resolve_augmentation(False, 10) is None
    with pytest.raises(BadInputError, match="--augment"):
        resolve_augmentation("strong", 10)
    with pytest.raises(BadInputError, match="robust"):
        check_augmentation("strong")


def _line_slopes(images: np.ndarray, axis: int) -> np.ndarray:
    """Per image: the pixel slope of a thin dark line (horizontal for axis=3: its row
    against the column; vertical for axis=2: its column against the row), from the
    darkest pixel of each column (or row) away from the borders."""
    slopes = []
    for image in images[:, 0]:
        profile = image if axis == 3 else image.T  # rows x positions along the line
        positions = np.arange(profile.shape[1])[8:-8]
        where = profile[:, 8:-8].argmin(axis=0)
        slopes.append(np.polyfit(positions, where, 1)[0])
    return np.array(slopes)


def test_turns_and_shears_are_in_pixels_of_a_non_square_input():
    """A turn of at most `rotate` degrees tilts a horizontal line of a 4:1 input by at
    most tan(rotate) in pixels, and a shear moves a vertical line by at most `shear`
    pixels per row: the grid's [-1, 1] coordinates stretch x four times more than y,
    which a turn made in grid coordinates would get wrong by that factor."""
    from rewriter.distill import Augmentation, _augment

    h, w, n = 32, 128, 48
    horizontal = np.ones((n, 1, h, w), np.float32)
    horizontal[:, :, h // 2, :] = -1.0
    vertical = np.ones((n, 1, h, w), np.float32)
    vertical[:, :, :, w // 2] = -1.0
    fixed = dict(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), flip=0.0, mixup=0.0)
    turned = _augment(torch, {"x": torch.as_tensor(horizontal)}, np.random.default_rng(0),
                      {"x": 1.0}, Augmentation(**fixed, rotate=3.0))["x"].numpy()
    slopes = np.abs(_line_slopes(turned, axis=3))
    limit = np.tan(np.deg2rad(3.0))
    assert slopes.max() <= 1.15 * limit
    assert slopes.max() >= 0.6 * limit  # 48 uniform draws reach near the limit
    sheared = _augment(torch, {"x": torch.as_tensor(vertical)}, np.random.default_rng(0),
                       {"x": 1.0}, Augmentation(**fixed, shear=0.3))["x"].numpy()
    slopes = np.abs(_line_slopes(sheared, axis=2))
    assert slopes.max() <= 0.3 * 1.15
    assert slopes.max() >= 0.3 * 0.6


def test_recover_hands_the_augmentation_to_distillation(pair, data, monkeypatch):
    import rewriter.distill as distill_module
    from rewriter.recovery import recover

    calls = record_calls(monkeypatch, distill_module, "distill")
    x = data[0]["input"]
    batches = [{"input": x[i:i + 4]} for i in range(0, len(x), 4)]
    recover(pair[0], pair[1], batches, budget="2steps", augment="robust")
    assert [c.get("augment") for c in calls] == ["robust"]
    with pytest.raises(BadInputError, match="--augment"):
        recover(pair[0], pair[1], batches, budget="2steps", augment="strong")
    assert len(calls) == 1
