"""An op's own latency model on any profile, and the cached regressor of a measured one.

``op_latency_s(spec, profile)`` is `analytic.estimate_op(...).latency_s` on an "analytic"
profile, and ``RegressionEstimator.predict_ms(spec) / 1000`` on a "measured" one, the
estimator being fitted once per (measurements file, its mtime, the profile's array)
and kept. That is the op model alone: a kernel's latency inside a model on a target,
`estimate.Target.kernel`, adds a measured profile's rules on top (free kinds, the
`stream_weights` floor, the machine's `speed` now when its ops were re-timed, in-model
dispatch `overhead_s`, the `floor_at_peak` floor).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rewriter.cost.analytic import estimate_op
from rewriter.cost.opspec import OpSpec
from rewriter.cost.profile import HardwareProfile, ProfileError


@lru_cache(maxsize=8)
def _fitted(measurements: Path, mtime_ns: int, array: tuple[tuple[str, int], ...]):
    """A CSV of measurements is fitted (`array`: the profile's array hyper-parameters); a
    JSON saved by `rewriter cost fit` is loaded, and must have been fitted for that array."""
    from rewriter.cost.measurements import read_csv
    from rewriter.cost.regression import RegressionEstimator

    if measurements.suffix == ".json":
        loaded = RegressionEstimator.load(measurements)
        saved = {name: loaded.hyperparameters[name] for name, _ in array}
        if saved != dict(array):
            raise ProfileError(f"{measurements}: fitted for {saved}, but the profile's array "
                               f"is {dict(array)} (refit with `rewriter cost fit "
                               f"--parallelism P --map-tile OXxOY`)")
        return loaded
    return RegressionEstimator(**dict(array)).fit(read_csv(measurements))


def regression_for(profile: HardwareProfile):
    """The (cached) `RegressionEstimator` of a measured profile, or its `CorrectedEstimator`
    when the profile names a prior."""
    from rewriter.cost.regression import RegressionEstimator, array_hyperparameters

    if profile.kind != "measured" or profile.measurements is None:
        return RegressionEstimator.from_profile(profile)  # raises ProfileError
    if profile.prior is not None:  # another target's op model, corrected (cost.fewshot)
        from rewriter.cost.fewshot import corrected_for

        return corrected_for(profile)
    path = profile.measurements.resolve()
    array = tuple(sorted(array_hyperparameters(profile).items()))
    return _fitted(path, path.stat().st_mtime_ns, array)


def op_latency_s(spec: OpSpec, profile: HardwareProfile) -> float:
    """Estimated latency of one op (kernel) in seconds on `profile`."""
    if profile.kind == "analytic":
        return estimate_op(spec, profile).latency_s
    return regression_for(profile).predict_ms(spec) / 1e3
