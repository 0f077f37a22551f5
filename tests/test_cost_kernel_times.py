"""Kernels of real models timed as one-op models now, priced in place of the regressor."""

from __future__ import annotations

import pytest

from rewriter.cost.estimate import Target
from rewriter.cost.opspec import OpSpec
from rewriter.cost.profile import ProfileError
from rewriter.cost.validate import time_kernels, zoo_cases
from tests.helpers import edited_profile


@pytest.fixture(scope="module")
def case():
    return next(c for c in zoo_cases(widths=[0.35], resolutions=[64])
                if c.name.startswith("mobilenetv3"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """cpu-ort without the weight-streaming floor: a kernel's price is its time + dispatch."""
    path = edited_profile(tmp_path_factory.mktemp("plain"), "cpu-ort", "stream_weights = true",
                          "stream_weights = false")
    return Target.load(path)


@pytest.fixture(scope="module")
def timed(plain, case):
    try:
        return time_kernels(plain, [spec for *_, spec in plain.parts(case.model)],
                            progress=False)
    except ProfileError as exc:  # cpu-ort's ops were measured on another kind of CPU
        if "not on this machine" not in str(exc):
            raise
        pytest.skip(str(exc))


def test_every_kernel_priced_is_timed(plain, case, timed):
    times, unbuildable = timed
    priced = {spec.signature() for *_, spec in plain.parts(case.model)}
    assert not unbuildable
    assert set(times) == priced
    assert all(ms > 0 for ms in times.values())
    # the conversions onnxruntime inserts are priced, and timed, too
    assert any(key[0] == "reorder" for key in times)


def prices(target, case) -> list[float]:
    # sorted: onnxruntime may list the same conversions in another order from one session
    # to the next
    return sorted(op.latency_ms for op in target.estimate(case.model).ops)


def test_kernel_times_replace_the_regressor_and_ignore_the_speed(plain, case, timed):
    times, _ = timed
    overhead = plain.profile.overhead_s * 1e3
    parts = plain.parts(case.model)
    fitted = plain.estimate(case.model).latency_ms
    try:
        plain.set_speed(3.0)
        slow = {spec.signature(): plain.kernel(spec)[0] for *_, spec in parts}
        plain.set_kernel_times(times)
        # each pass is its one-op time plus dispatch, whatever the machine's speed
        assert prices(plain, case) == pytest.approx(
            sorted(times[spec.signature()] + overhead for *_, spec in parts))
        # a kernel not timed keeps the regressor's price at the machine's speed
        untimed = parts[0][-1].signature()
        plain.set_kernel_times({k: ms for k, ms in times.items() if k != untimed})
        assert prices(plain, case) == pytest.approx(sorted(
            slow[key] if key == untimed else times[key] + overhead
            for key in (spec.signature() for *_, spec in parts)))
    finally:
        plain.set_speed(1.0)
        plain.set_kernel_times({})
    assert plain.estimate(case.model).latency_ms == pytest.approx(fitted)


def test_a_timed_kernel_still_streams_its_weights():
    """cpu-ort floors a kernel at its weights' streaming time, timed or not, at the
    machine's speed: that rate is the CSV's."""
    target = Target.load("cpu-ort")
    gemm = OpSpec("gemm", cin=1280, cout=1000)
    overhead = target.profile.overhead_s * 1e3
    target.set_kernel_times({gemm.signature(): 1e-6})
    streamed = target.kernel(gemm)[0] - overhead
    assert streamed > 0.01  # 5 MB of weights: tens of microseconds, not a nanosecond
    target.set_speed(2.0)
    assert target.kernel(gemm)[0] - overhead == pytest.approx(2 * streamed)


def test_what_kernel_times_cannot_be():
    with pytest.raises(ProfileError, match="analytic"):
        Target.load("npu-p32").set_kernel_times({})
    target = Target.load("cpu-ort")
    key = OpSpec("conv1x1", cin=8, cout=8).signature()
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            target.set_kernel_times({key: bad})
    for bad_key in (("conv",), ("no-such-kind", *key[1:])):
        with pytest.raises(ValueError, match="signature"):
            target.set_kernel_times({bad_key: 1.0})
    with pytest.raises(ProfileError, match="not on this machine|only a measured"):
        time_kernels(Target.load("tpu-zz"), [], progress=False)


def test_models_priced_from_their_parts_are_estimated_alike(plain, case):
    """validate_by with each case's parts (no onnxruntime layout session per pricing) gives
    the estimate's own latency."""
    from rewriter.cost.validate import validate_by

    parts = [plain.parts(case.model)]
    report = validate_by(plain, [case], lambda _: [1.0], parts)
    assert report.rows[0].estimated_ms == pytest.approx(plain.estimate(case.model).latency_ms)
