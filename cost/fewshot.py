"""Few-shot estimators: another target's op model, corrected to a new device's timings.

A profile with ``prior = "NAME"`` (a built-in target or a profile path) is served by a
`CorrectedEstimator`: the prior's op model (`cost.latency.op_latency_s`: the analytic
roofline, or the regressor of a measured target) gives p(spec), and a correction fitted on
the device's rows gives the rest, on log latency::

    log t = log p + c + ridge line(z) + GradientBoosting(features, log p)
    z     = [log p, log work, log bytes, log output elements, log padded MACs,
             log ideal cycles, kind one-hots]          (standardised)

The line is shrunk towards zero by a fixed ridge penalty (`PRIOR_RIDGE`), so a handful of
rows fit little more than a ratio to the prior, and more rows a power law in it
(``t = a * p**b`` is exactly ``c + (b - 1) log p``) with per-kind offsets; the trees fit
what the line leaves. Kinds the device has no rows of keep the prior's shape, scaled.

Whether the prior helps depends on how alike the devices are, so `choose_estimator`
cross-validates the corrected estimator against one fitted from scratch
(`RegressionEstimator`) on the device's rows and keeps the one with the lower error
weighted by time (`cross_validate`: every row predicted by a model not fitted on it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor

from rewriter.cost.measurements import Measurement, read_csv
from rewriter.cost.opspec import FEATURE_NAMES, ONE_HOT_KINDS, OpSpec, features
from rewriter.cost.profile import HardwareProfile, ProfileError, load_profile
from rewriter.cost.regression import (
    LOG_MS_RANGE,
    EstimatorError,
    FitReport,
    RegressionEstimator,
    accuracy,
    array_hyperparameters,
    as_rows,
    fit_report,
)

PRIOR_RIDGE = 1.0  # ridge penalty on the standardised correction line (absolute, not per row)
_LINE = ("log_work", "log_bytes", "log_out_elements", "log_padded_macs", "log_ideal_cycles",
         *(f"kind_{k}" for k in ONE_HOT_KINDS))
_LINE_COLUMNS = [FEATURE_NAMES.index(name) for name in _LINE]
MIN_PRIOR_MS = 1e-9

Row = tuple[OpSpec, float]
PriorFn = Callable[[Sequence[OpSpec]], np.ndarray]


def prior_function(profile: HardwareProfile) -> PriorFn:
    """specs -> the prior profile's op latencies in ms (its op model alone: no free kinds,
    no dispatch or floors, which are the new device's own business)."""
    if profile.kind == "measured":
        from rewriter.cost.latency import regression_for

        regressor = regression_for(profile)
        return lambda specs: regressor.predict_many_ms(list(specs))
    from rewriter.cost.analytic import estimate_op

    return lambda specs: np.array([estimate_op(s, profile).latency_s * 1e3 for s in specs])


def load_prior(name_or_path: str | Path, where: object = "prior") -> HardwareProfile:
    profile = load_profile(name_or_path)
    if profile.prior is not None:
        raise ProfileError(f"{where}: prior: {profile.name} has a prior of its own; a prior "
                           "must be fitted on its own measurements, or analytic")
    return profile


@dataclass(frozen=True)
class HeldOut:
    """Accuracy on rows no estimator was fitted on (`cross_validate`)."""

    n: int
    mape: float
    within_10pct: float
    spearman: float
    # sum |estimate - measured| / sum measured: the error weighted by time, as a model's
    # latency, a sum of kernels, weighs it
    weighted: float

    def summary(self) -> str:
        return (f"MAPE {100 * self.mape:.1f}%, within +-10% {100 * self.within_10pct:.0f}%, "
                f"Spearman {self.spearman:.3f}, |error|/time {100 * self.weighted:.1f}%")


class CorrectedEstimator:
    """A prior op model times a correction fitted on a device's (spec, latency_ms) rows."""

    def __init__(self, prior: PriorFn, prior_name: str = "prior", **hyperparameters: Any) -> None:
        self.prior = prior
        self.prior_name = prior_name
        # the regressor's hyper-parameters, checked as it checks them
        self.hyperparameters = RegressionEstimator(**hyperparameters).hyperparameters
        self.rows: list[Row] = []
        self._cache: dict[tuple, float] = {}
        self._fitted = False

    def _inputs(self, specs: Sequence[OpSpec]) -> tuple[np.ndarray, np.ndarray]:
        """(log prior ms, feature matrix) of `specs`."""
        hp = self.hyperparameters
        x = np.array([[f[name] for name in FEATURE_NAMES]
                      for f in (features(s, hp["parallelism"], hp["parallelism_ox"],
                                         hp["parallelism_oy"]) for s in specs)], dtype=float)
        prior = np.asarray(self.prior(specs), dtype=float)
        return np.log(np.maximum(prior, MIN_PRIOR_MS)), x

    def fit(self, rows: Iterable[Measurement | Row]) -> CorrectedEstimator:
        pairs = as_rows(rows)
        if not pairs:
            raise EstimatorError("no training rows")
        self.rows, self._cache = pairs, {}
        log_prior, x = self._inputs([s for s, _ in pairs])
        y = np.log(np.array([ms for _, ms in pairs])) - log_prior
        z = np.column_stack([log_prior, x[:, _LINE_COLUMNS]])
        self.mean, std = z.mean(axis=0), z.std(axis=0)
        self.scale = np.where(std > 1e-12, std, 1.0)
        z = (z - self.mean) / self.scale
        self.intercept = float(y.mean())
        gram = z.T @ z + PRIOR_RIDGE * np.eye(z.shape[1])
        self.coef = np.linalg.solve(gram, z.T @ (y - self.intercept))
        hp = self.hyperparameters
        self.trees = GradientBoostingRegressor(
            n_estimators=hp["n_estimators"], max_depth=hp["max_depth"],
            learning_rate=hp["learning_rate"], max_features=hp["max_features"],
            random_state=hp["random_state"])
        self.trees.fit(np.column_stack([x, log_prior]), y - self._line(log_prior, x))
        self._fitted = True
        return self

    def _line(self, log_prior: np.ndarray, x: np.ndarray) -> np.ndarray:
        z = (np.column_stack([log_prior, x[:, _LINE_COLUMNS]]) - self.mean) / self.scale
        return z @ self.coef + self.intercept

    def correction(self, specs: Sequence[OpSpec]) -> np.ndarray:
        """log(estimate / prior) for each spec: what the device's rows taught."""
        if not self._fitted:
            raise EstimatorError("the estimator is not fitted")
        log_prior, x = self._inputs(specs)
        return self._line(log_prior, x) + self.trees.predict(np.column_stack([x, log_prior]))

    def predict_many_ms(self, specs: Sequence[OpSpec]) -> np.ndarray:
        if not specs:
            return np.zeros(0)
        log_prior, _ = self._inputs(specs)
        return np.exp(np.clip(log_prior + self.correction(specs), *LOG_MS_RANGE))

    def predict_ms(self, spec: OpSpec) -> float:
        key = spec.signature()
        if key not in self._cache:
            self._cache[key] = float(self.predict_many_ms([spec])[0])
        return self._cache[key]

    def covers(self, kind: str) -> bool:
        """Whether any training row is of `kind`."""
        return any(spec.kind == kind for spec, _ in self.rows)

    def fit_report(self, test_rows: Iterable[Measurement | Row]) -> FitReport:
        return fit_report(self, test_rows)


Estimator = RegressionEstimator | CorrectedEstimator


def cross_validate(make: Callable[[], Estimator], rows: Sequence[Measurement | Row], *,
                   folds: int = 5, seed: int = 0) -> HeldOut:
    """Every row predicted by an estimator (`make()`) fitted on the other folds."""
    pairs = as_rows(rows)
    folds = min(folds, len(pairs))
    if folds < 2:
        raise EstimatorError(f"{len(pairs)} rows: too few to hold any out")
    order = np.random.default_rng(seed).permutation(len(pairs))
    estimate = np.empty(len(pairs))
    for part in np.array_split(order, folds):
        held = set(part.tolist())
        fitted = make().fit([pairs[i] for i in range(len(pairs)) if i not in held])
        estimate[part] = fitted.predict_many_ms([pairs[i][0] for i in part])
    measured = np.array([ms for _, ms in pairs])
    r = accuracy(estimate, measured)
    return HeldOut(r.n, r.mape, r.within_10pct, r.spearman,
                   float(np.abs(estimate - measured).sum() / measured.sum()))


@dataclass(frozen=True)
class Choice:
    """The estimators cross-validated on a device's rows, and which one is kept."""

    scratch: HeldOut
    corrected: HeldOut | None  # None without a prior
    use_prior: bool


def choose_estimator(rows: Sequence[Measurement | Row], array: dict[str, int],
                     prior: HardwareProfile | None, *, folds: int = 5,
                     seed: int = 0) -> Choice:
    """Cross-validate fitting from scratch and, with a prior, correcting it; keep the one
    with the lower time-weighted error (`HeldOut.weighted`). Not the MAPE: a model's
    latency is a sum of kernels, where the large ones count most; on the guided kit of
    benchmarks/kit_fewshot.py the two MAPEs tie after 50 timings while the corrected
    estimator has half the weighted error and is the better on the models."""
    scratch = cross_validate(lambda: RegressionEstimator(**array), rows, folds=folds, seed=seed)
    if prior is None:
        return Choice(scratch, None, False)
    fn = prior_function(prior)
    corrected = cross_validate(lambda: CorrectedEstimator(fn, prior.name, **array), rows,
                               folds=folds, seed=seed)
    return Choice(scratch, corrected, corrected.weighted < scratch.weighted)


@lru_cache(maxsize=8)
def _corrected(measurements: Path, mtime_ns: int, array: tuple[tuple[str, int], ...],
               prior: str, prior_mtime_ns: int, source: str) -> CorrectedEstimator:
    profile = load_prior(prior, source)
    return CorrectedEstimator(prior_function(profile), profile.name,
                              **dict(array)).fit(read_csv(measurements))


def corrected_for(profile: HardwareProfile) -> CorrectedEstimator:
    """The (cached) corrected estimator of a measured profile with a prior."""
    if profile.prior is None or profile.measurements is None:
        raise ProfileError(f"{profile.source}: prior: this profile has none")
    path = profile.measurements.resolve()
    prior_path = load_profile(profile.prior).source
    prior_mtime = prior_path.stat().st_mtime_ns if prior_path else 0
    array = tuple(sorted(array_hyperparameters(profile).items()))
    return _corrected(path, path.stat().st_mtime_ns, array, profile.prior, prior_mtime,
                      str(profile.source))
