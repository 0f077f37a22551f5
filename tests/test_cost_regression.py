"""Regression estimator: fits, JSON round trip, hostile files, and the bundled measurements."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rewriter.cost.analytic import estimate_op
from rewriter.cost.latency import op_latency_s, regression_for
from rewriter.cost.measurements import read_csv
from rewriter.cost.opspec import OpSpec
from rewriter.cost.profile import load_profile
from rewriter.cost.regression import (
    EstimatorError,
    FitReport,
    RegressionEstimator,
    spearman,
)
from rewriter.cost.sampling import sample_specs

FAST = {"n_estimators": 40, "min_rows_per_kind": 30}


@pytest.fixture(scope="module")
def synthetic():
    """Rows whose latency is the npu-p32 analytic estimate (ms)."""
    p32 = load_profile("npu-p32")
    specs = sample_specs(500, seed=11)
    rows = [(s, estimate_op(s, p32).latency_ms) for s in specs]
    return rows[:400], rows[400:]


@pytest.fixture(scope="module")
def fitted(synthetic):
    return RegressionEstimator(parallelism=32, **FAST).fit(synthetic[0])


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 35, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0


def test_fits_analytic_model(fitted, synthetic):
    report = fitted.fit_report(synthetic[1])
    assert isinstance(report, FitReport) and report.n == 100
    assert report.spearman > 0.95
    assert report.mape < 0.3
    # the report's figures, recomputed from the predictions by hand
    measured = np.array([ms for _, ms in synthetic[1]])
    predicted = np.array([fitted.predict_ms(s) for s, _ in synthetic[1]])
    error = np.abs(predicted / measured - 1)
    assert report.within_10pct == pytest.approx(np.mean(error <= 0.10))
    assert report.mape == pytest.approx(np.mean(error))
    assert "Spearman" in report.summary()


def test_save_load_round_trip(fitted, synthetic, tmp_path: Path):
    path = tmp_path / "est.json"
    fitted.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "rewriter.cost.regression" and len(data["rows"]) == 400
    assert data["hyperparameters"]["parallelism"] == 32
    loaded = RegressionEstimator.load(path)
    specs = [s for s, _ in synthetic[1]]
    assert np.array_equal(loaded.predict_many_ms(specs), fitted.predict_many_ms(specs))
    assert loaded.hyperparameters == fitted.hyperparameters


def test_shared_model_for_rare_kinds(synthetic):
    rows = [r for r in synthetic[0] if r[0].kind != "resize"]
    est = RegressionEstimator(parallelism=32, **FAST).fit(rows)
    resize = next(s for s, _ in synthetic[1] + synthetic[0] if s.kind == "resize")
    assert est.predict_ms(resize) > 0
    assert "resize" not in est._models and "conv" in est._models


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _mutations(good: dict):
    def with_(**changes):
        return {**good, **changes}

    row = good["rows"][0]
    yield "reduce-top", with_(__reduce__=["os.system", ["echo pwned"]]), "unknown key '__reduce__'"
    yield "reduce-row", with_(rows=[{"__reduce__": ["os.system", ["x"]]}]), r"rows\[0\]"
    yield "py-object", with_(rows=[["builtins.eval", *row[1:]]]), "unknown op kind"
    yield "string-int", with_(rows=[[row[0], 1, "16", *row[3:]]]), "column 'cin'"
    yield "bool-int", with_(rows=[[row[0], True, *row[2:]]]), "column 'n'"
    yield "huge-int", with_(rows=[[row[0], 10**40, *row[2:]]]), "column 'n'"
    yield "neg-latency", with_(rows=[[*row[:-1], -1.0]]), "latency_ms"
    yield "short-row", with_(rows=[row[:5]]), "list of 17"
    yield "bad-layout", with_(rows=[[*row[:-2], "nhwc", row[-1]]]), "layout"
    yield "no-rows", with_(rows=[]), "non-empty"
    yield "too-many-rows", with_(rows=[row] * 50_001), "at most 50,000"
    yield "hp-type", with_(hyperparameters={**good["hyperparameters"], "max_depth": "3"}), \
        "max_depth"
    yield "hp-range", with_(hyperparameters={**good["hyperparameters"], "n_estimators": 10**9}), \
        "n_estimators"
    yield "hp-extra", with_(hyperparameters={**good["hyperparameters"], "loss": "x"}), "'loss'"
    yield "format", with_(format="pickle"), "format"
    yield "columns", with_(columns=good["columns"][::-1]), "columns"
    yield "missing", {k: v for k, v in good.items() if k != "rows"}, "missing key 'rows'"
    yield "not-object", [1, 2, 3], "top level"
    yield "nan", json.dumps(good).replace(str(row[-1]), "NaN", 1), "NaN"
    yield "truncated", json.dumps(good)[:50], "not a readable"


def test_hostile_and_corrupt_files_rejected(fitted, tmp_path: Path):
    good = fitted.to_json()
    for name, data, message in _mutations(good):
        path = _write(tmp_path, data)
        with pytest.raises(EstimatorError) as info:
            RegressionEstimator.load(path)
        text = str(info.value)
        assert "\n" not in text and str(path) in text, name
        assert re.search(message, text), (name, text)
    with pytest.raises(EstimatorError, match="not a readable"):
        RegressionEstimator.load(tmp_path / "absent.json")


def test_bundled_cpu_measurements(tmp_path: Path):
    """The shipped cpu-ort CSV: held-out ranking quality, and a fast JSON reload."""
    profile = load_profile("cpu-ort")
    rows = read_csv(profile.measurements)
    assert len(rows) >= 2000
    order = np.random.default_rng(0).permutation(len(rows))
    train = [rows[i] for i in order[: len(rows) * 4 // 5]]
    test = [rows[i] for i in order[len(rows) * 4 // 5:]]
    est = RegressionEstimator(parallelism=profile.parallelism_in).fit(train)
    report = est.fit_report(test)
    assert report.spearman > 0.97 and report.mape < 0.3, report.summary()
    path = tmp_path / "cpu.json"
    est.save(path)
    loaded = RegressionEstimator.load(path)
    specs = [r.spec for r in test]
    assert np.array_equal(loaded.predict_many_ms(specs), est.predict_many_ms(specs))


def test_op_latency_dispatch():
    p32, cpu = load_profile("npu-p32"), load_profile("cpu-ort")
    spec = OpSpec.conv2d(32, 64, 28, 3, act="relu")
    # P = 32: one output channel over a multiple of P costs a whole extra tile
    over = OpSpec.conv2d(32, 65, 28, 3, act="relu")
    assert op_latency_s(over, p32) > 1.4 * op_latency_s(spec, p32) > 0
    assert regression_for(cpu) is regression_for(load_profile("cpu-ort"))  # cached
    assert op_latency_s(spec, cpu) == regression_for(cpu).predict_ms(spec) / 1e3 > 0



def test_files_saved_before_the_map_tile_existed_still_load(fitted, synthetic, tmp_path: Path):
    path = tmp_path / "old.json"
    fitted.save(path)
    data = json.loads(path.read_text())
    for key in ("parallelism_ox", "parallelism_oy"):
        del data["hyperparameters"][key]
    path.write_text(json.dumps(data))
    loaded = RegressionEstimator.load(path)
    assert loaded.hyperparameters == fitted.hyperparameters  # the defaults, 1 x 1
    specs = [s for s, _ in synthetic[1]]
    assert np.array_equal(loaded.predict_many_ms(specs), fitted.predict_many_ms(specs))


def test_map_tile_changes_the_ideal_cycles_feature():
    from rewriter.cost.opspec import features

    six, eight = OpSpec.conv2d(16, 16, 6), OpSpec.conv2d(16, 16, 8)
    assert features(six, 8)["log_ideal_cycles"] < features(eight, 8)["log_ideal_cycles"]
    assert features(six, 8, 4, 4)["log_ideal_cycles"] == features(eight, 8, 4, 4)[
        "log_ideal_cycles"]
    assert features(six, 8, 4, 4)["spatial_fill"] == pytest.approx(36 / 64)


def test_files_saved_before_the_layout_column_still_load(fitted, synthetic, tmp_path: Path):
    path = tmp_path / "old.json"
    fitted.save(path)
    data = json.loads(path.read_text())
    at = data["columns"].index("layout")
    data["columns"].pop(at)
    data["rows"] = [row[:at] + row[at + 1:] for row in data["rows"]]
    path.write_text(json.dumps(data))
    loaded = RegressionEstimator.load(path)
    specs = [s for s, _ in synthetic[1]]
    assert np.array_equal(loaded.predict_many_ms(specs), fitted.predict_many_ms(specs))
    assert loaded.covers("conv") and not loaded.covers("reorder")


def test_each_kind_and_layout_gets_its_own_model():
    """An unblocked resize runs other code than a blocked one, and a conversion out of the
    blocked layout other code than one into it: the bundled measurements fit each apart."""
    from rewriter.cost.estimate import Target
    from rewriter.cost.regression import group

    resize = OpSpec("resize", cin=64, cout=64, h_in=14, w_in=14, h_out=28, w_out=28, kh=2, kw=2)
    assert group(resize) == "resize" and group(replace(resize, layout="nchw")) == "resize/nchw"
    regressor = Target.load("cpu-ort")._regressor
    assert {"resize", "resize/nchw", "reorder", "reorder/nchw"} <= set(regressor._models)
    assert regressor.covers("reorder")
