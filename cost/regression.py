"""Latency regression from measurements: one model per op kind on log latency.

For a kind (with a layout other than the usual one, a kind and layout: `group`) with at
least ``min_rows_per_kind`` training rows, and for a shared model over all rows (used by
the other kinds, kind one-hot features telling them apart; fitted on first use)::

    log(latency_ms) ~ linear(x_lin) + GBR(features)

x_lin = [log_work, log_bytes, log_out_elements, log_padded_macs, log_ideal_cycles] (+ the
kind one-hots in the shared model) fitted by ridge regression on standardised columns, so
the estimate follows the power law beyond the measured range; a scikit-learn
GradientBoostingRegressor on all `opspec.features` (with the estimator's `parallelism`, and
`parallelism_ox` x `parallelism_oy` output pixels for an array that unrolls the map) fits
what the line leaves.
Predictions are clipped to LOG_MS_RANGE. Everything is deterministic, so a model refitted
from the same rows and hyper-parameters predicts identically.

`save` writes JSON (never a pickle)::

    {"format": "rewriter.cost.regression", "version": 1,
     "hyperparameters": {"n_estimators": int, "max_depth": int, "learning_rate": float,
                         "max_features": float, "min_rows_per_kind": int,
                         "parallelism": int, "parallelism_ox": int, "parallelism_oy": int,
                         "random_state": int},
     "columns": [<the OpSpec fields>, "latency_ms"],
     "rows": [[<values in column order>], ...]}

and `load` validates every value and refits. `fit_report` scores held-out rows: MAPE,
share of estimates within +-10 %, and Spearman rank correlation (Pearson correlation of
the average ranks, computed with numpy).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor

from rewriter.cost.measurements import Measurement, read_csv
from rewriter.cost.opspec import (
    FEATURE_NAMES,
    INT_FIELDS,
    ONE_HOT_KINDS,
    SPEC_FIELDS,
    OpSpec,
    features,
)
from rewriter.cost.profile import HardwareProfile, ProfileError

FORMAT = "rewriter.cost.regression"
VERSION = 1
COLUMNS = (*SPEC_FIELDS, "latency_ms")
MAX_ROWS = 50_000  # rows an estimator file may hold (see _check_document)
# Files saved before OpSpec had a layout: their rows lack it, and it is "" for all of them.
_COLUMNS_BEFORE_LAYOUT = tuple(c for c in COLUMNS if c != "layout")
MAX_FILE_BYTES = 64 * 2**20
MAX_INT = 2**31
# name -> (type, lowest, highest)
HYPERPARAMETERS: dict[str, tuple[type, float, float]] = {
    "n_estimators": (int, 1, 5000), "max_depth": (int, 1, 12),
    "learning_rate": (float, 1e-6, 1.0), "max_features": (float, 0.01, 1.0),
    "min_rows_per_kind": (int, 1, 10**6),
    "parallelism": (int, 1, 4096), "parallelism_ox": (int, 1, 4096),
    "parallelism_oy": (int, 1, 4096), "random_state": (int, 0, 2**31 - 1),
}
DEFAULTS: dict[str, Any] = {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.15,
                            "max_features": 0.4, "min_rows_per_kind": 40, "parallelism": 8,
                            "parallelism_ox": 1, "parallelism_oy": 1, "random_state": 0}
# Absent from files saved before they existed: the defaults (an array that does not unroll
# the output map).
_OPTIONAL_HYPERPARAMETERS = frozenset({"parallelism_ox", "parallelism_oy"})
RIDGE = 0.01  # ridge penalty per row on the standardised line features
LOG_MS_RANGE = (math.log(1e-6), math.log(1e7))  # predictions are clipped to 1 ns .. 3 h
_LINEAR = ("log_work", "log_bytes", "log_out_elements", "log_padded_macs", "log_ideal_cycles")
_KIND_COLUMNS = tuple(f"kind_{k}" for k in ONE_HOT_KINDS)

Row = tuple[OpSpec, float]


class EstimatorError(ValueError):
    """An estimator file or its training data cannot be used; the message is one line."""


@dataclass(frozen=True)
class FitReport:
    n: int
    mape: float  # mean |estimate - measured| / measured
    within_10pct: float  # share of rows with |error| <= 10 %
    spearman: float

    def summary(self) -> str:
        return (f"{self.n} rows: MAPE {100 * self.mape:.1f}%, within +-10% "
                f"{100 * self.within_10pct:.0f}%, Spearman {self.spearman:.3f}")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy), 0 where either side is constant."""
    from scipy.stats import spearmanr

    if np.ptp(np.asarray(a, float)) == 0 or np.ptp(np.asarray(b, float)) == 0:
        return 0.0
    return float(spearmanr(a, b)[0])


def group(spec: OpSpec) -> str:
    """The rows a spec's model is fitted on: its kind's, or "kind/layout" for a layout other
    than the usual one (an unblocked resize runs different code, 2-4x slower)."""
    return f"{spec.kind}/{spec.layout}" if spec.layout else spec.kind


def as_rows(rows: Iterable[Measurement | Row]) -> list[Row]:
    """(spec, latency_ms) of measurements or rows."""
    return [(r.spec, r.latency_ms) if isinstance(r, Measurement) else (r[0], float(r[1]))
            for r in rows]


def accuracy(estimate: np.ndarray, measured: np.ndarray) -> FitReport:
    """How `estimate` matches `measured` (ms, same order): MAPE, share within +-10%,
    Spearman."""
    error = np.abs(estimate - measured) / measured
    return FitReport(len(measured), float(error.mean()), float((error <= 0.1).mean()),
                     spearman(estimate, measured))


def fit_report(estimator, test_rows: Iterable[Measurement | Row]) -> FitReport:
    """`estimator`'s accuracy (it has `predict_many_ms`) on rows it was not fitted on."""
    pairs = as_rows(test_rows)
    if not pairs:
        raise EstimatorError("no test rows")
    return accuracy(estimator.predict_many_ms([s for s, _ in pairs]),
                    np.array([ms for _, ms in pairs]))


def _linear_columns(with_kinds: bool) -> list[int]:
    names = _LINEAR + (_KIND_COLUMNS if with_kinds else ())
    return [FEATURE_NAMES.index(name) for name in names]


class _Model:
    """log latency = ridge line on x_lin + boosted trees on the residual."""

    def __init__(self, linear_columns: Sequence[int], hp: dict[str, Any]) -> None:
        self.linear_columns = list(linear_columns)
        self.trees = GradientBoostingRegressor(
            n_estimators=hp["n_estimators"], max_depth=hp["max_depth"],
            learning_rate=hp["learning_rate"], max_features=hp["max_features"],
            random_state=hp["random_state"])
        self.mean = self.scale = self.coef = np.zeros(len(self.linear_columns))
        self.intercept = 0.0

    def _line(self, x: np.ndarray) -> np.ndarray:
        return ((x[:, self.linear_columns] - self.mean) / self.scale) @ self.coef + self.intercept

    def fit(self, x: np.ndarray, y: np.ndarray) -> _Model:
        lin = x[:, self.linear_columns]
        self.mean, std = lin.mean(axis=0), lin.std(axis=0)
        self.scale = np.where(std > 1e-12, std, 1.0)
        z = (lin - self.mean) / self.scale
        self.intercept = float(y.mean())
        gram = z.T @ z + RIDGE * len(y) * np.eye(z.shape[1])
        self.coef = np.linalg.solve(gram, z.T @ (y - self.intercept))
        self.trees.fit(x, y - self._line(x))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.clip(self._line(x) + self.trees.predict(x), *LOG_MS_RANGE)


class RegressionEstimator:
    """Per-kind latency regressors fitted on measured (spec, latency_ms) rows."""

    def __init__(self, **hyperparameters: Any) -> None:
        self.hyperparameters = _check_hyperparameters({**DEFAULTS, **hyperparameters}, "")
        self.rows: list[Row] = []
        self._models: dict[str, _Model] = {}
        self._shared: _Model | None = None
        self._fitted = False
        self._cache: dict[tuple, float] = {}

    def _matrix(self, specs: Iterable[OpSpec]) -> np.ndarray:
        hp = self.hyperparameters
        p, ox, oy = hp["parallelism"], hp["parallelism_ox"], hp["parallelism_oy"]
        return np.array([[f[name] for name in FEATURE_NAMES]
                         for f in (features(s, p, ox, oy) for s in specs)], dtype=float)

    def fit(self, rows: Iterable[Measurement | Row]) -> RegressionEstimator:
        pairs = as_rows(rows)
        if not pairs:
            raise EstimatorError("no training rows")
        self.rows, self._models, self._shared, self._cache = pairs, {}, None, {}
        x, y, groups = self._training_data()
        for name in sorted(set(groups.tolist())):
            mask = groups == name
            if mask.sum() >= self.hyperparameters["min_rows_per_kind"]:
                self._models[name] = _Model(_linear_columns(False),
                                            self.hyperparameters).fit(x[mask], y[mask])
        self._fitted = True
        return self

    def _training_data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = self._matrix(s for s, _ in self.rows)
        y = np.log(np.array([ms for _, ms in self.rows], dtype=float))
        return x, y, np.array([group(s) for s, _ in self.rows])

    def _model(self, name: str) -> _Model:
        """The group's own model, or the shared one (fitted on first use)."""
        if name in self._models:
            return self._models[name]
        if self._shared is None:
            x, y, _ = self._training_data()
            self._shared = _Model(_linear_columns(True), self.hyperparameters).fit(x, y)
        return self._shared

    def predict_many_ms(self, specs: Sequence[OpSpec]) -> np.ndarray:
        if not self._fitted:
            raise EstimatorError("the estimator is not fitted")
        x = self._matrix(specs)
        out = np.empty(len(specs))
        groups = np.array([group(s) for s in specs])
        for name in set(groups.tolist()):
            mask = groups == name
            out[mask] = self._model(name).predict(x[mask])
        return np.exp(out)

    def covers(self, kind: str) -> bool:
        """Whether any training row is of `kind`."""
        return any(spec.kind == kind for spec, _ in self.rows)

    def predict_ms(self, spec: OpSpec) -> float:
        key = spec.signature()
        if key not in self._cache:
            self._cache[key] = float(self.predict_many_ms([spec])[0])
        return self._cache[key]

    def fit_report(self, test_rows: Iterable[Measurement | Row]) -> FitReport:
        return fit_report(self, test_rows)

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION,
                "hyperparameters": dict(self.hyperparameters), "columns": list(COLUMNS),
                "rows": [[*spec.signature(), ms] for spec, ms in self.rows]}

    def save(self, path: str | Path) -> None:
        """Write atomically (a temporary file beside the target, then renamed)."""
        from rewriter.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), separators=(",", ":"),
                                           allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RegressionEstimator:
        """Read a saved estimator, validate every value, and refit it."""
        path = Path(path)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
        except (OSError, ValueError, RecursionError) as exc:
            raise EstimatorError(f"{path}: not a readable estimator JSON: "
                                 f"{' '.join(str(exc).split())}") from None
        hp, rows = _check_document(data, str(path))
        return cls(**hp).fit(rows)

    @classmethod
    def from_profile(cls, profile: HardwareProfile, **hyperparameters: Any
                     ) -> RegressionEstimator:
        """Fit on a measured profile's CSV, with the profile's parallelism."""
        if profile.kind != "measured" or profile.measurements is None:
            raise ProfileError(f"{profile.source}: kind: a regression estimator needs a "
                               f"measured profile, got {profile.kind!r}")
        hp = {**array_hyperparameters(profile), **hyperparameters}
        return cls(**hp).fit(read_csv(profile.measurements))


def array_hyperparameters(profile: HardwareProfile) -> dict[str, int]:
    """The estimator hyper-parameters a profile's MAC array decides."""
    return {"parallelism": profile.parallelism_in, "parallelism_ox": profile.parallelism_ox,
            "parallelism_oy": profile.parallelism_oy}


def _no_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name} is not allowed")


def _check_number(where: str, value: Any, typ: type, low: float, high: float) -> Any:
    ok_type = (int, float) if typ is float else typ
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise EstimatorError(f"{where}: expected {'a number' if typ is float else 'an integer'}"
                             f", got {type(value).__name__}")
    if not (low <= value <= high) or (typ is float and not math.isfinite(value)):
        raise EstimatorError(f"{where}: {value!r} is outside [{low}, {high}]")
    return value


def _check_hyperparameters(hp: Any, where: str) -> dict[str, Any]:
    prefix = f"{where}: " if where else ""
    if not isinstance(hp, dict):
        raise EstimatorError(f"{prefix}hyperparameters: expected an object")
    unknown = sorted(set(hp) - set(HYPERPARAMETERS))
    if unknown:
        raise EstimatorError(f"{prefix}hyperparameters: unknown key {unknown[0]!r}")
    out = {}
    for name, (typ, low, high) in HYPERPARAMETERS.items():
        if name not in hp and name in _OPTIONAL_HYPERPARAMETERS:
            out[name] = DEFAULTS[name]
            continue
        if name not in hp:
            raise EstimatorError(f"{prefix}hyperparameters.{name}: missing")
        out[name] = _check_number(f"{prefix}hyperparameters.{name}", hp[name], typ, low, high)
    return out


def _check_row(where: str, row: Any) -> Row:
    if not isinstance(row, list) or len(row) != len(COLUMNS):
        raise EstimatorError(f"{where}: expected a list of {len(COLUMNS)} values")
    values = dict(zip(COLUMNS, row))
    for name in INT_FIELDS:
        _check_number(f"{where}, column {name!r}", values[name], int, 1, MAX_INT)
    for name in ("kind", "act", "layout"):
        if not isinstance(values[name], str) or len(values[name]) > 64:
            raise EstimatorError(f"{where}, column {name!r}: expected a short string")
    latency = _check_number(f"{where}, column 'latency_ms'", values["latency_ms"], float,
                            1e-9, 1e9)
    try:
        spec = OpSpec(**{name: values[name] for name in SPEC_FIELDS})
    except ValueError as exc:
        raise EstimatorError(f"{where}: {exc}") from None
    return spec, float(latency)


def _check_document(data: Any, where: str) -> tuple[dict[str, Any], list[Row]]:
    expected = {"format", "version", "hyperparameters", "columns", "rows"}
    if not isinstance(data, dict):
        raise EstimatorError(f"{where}: expected a JSON object at the top level")
    extra, missing = sorted(set(data) - expected), sorted(expected - set(data))
    if extra or missing:
        what = f"unknown key {extra[0]!r}" if extra else f"missing key {missing[0]!r}"
        raise EstimatorError(f"{where}: {what}")
    if data["format"] != FORMAT or data["version"] != VERSION:
        raise EstimatorError(f"{where}: format: expected {FORMAT!r} version {VERSION}")
    old = data["columns"] == list(_COLUMNS_BEFORE_LAYOUT)
    if data["columns"] != list(COLUMNS) and not old:
        raise EstimatorError(f"{where}: columns: expected {list(COLUMNS)}")
    hp = _check_hyperparameters(data["hyperparameters"], where)
    rows = data["rows"]
    if not isinstance(rows, list) or not rows:
        raise EstimatorError(f"{where}: rows: expected a non-empty list")
    if len(rows) > MAX_ROWS:
        # the estimator is refitted from its rows on every load; past this a load takes
        # minutes: a device's measurements need far fewer rows (cpu-ort ships 4,900)
        raise EstimatorError(f"{where}: {len(rows):,} rows; at most {MAX_ROWS:,} are "
                             "accepted (the fit is redone on every load): sample fewer")
    if old:
        at = COLUMNS.index("layout")
        rows = [row[:at] + [""] + row[at:] if isinstance(row, list) else row for row in rows]
    return hp, [_check_row(f"{where}: rows[{i}]", row) for i, row in enumerate(rows)]
