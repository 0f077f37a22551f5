"""Measurement kits: writing them, timing them in onnxruntime, importing the timings, and the
few-shot correction of another target's op model."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from rewriter import zoo
from rewriter.cli import main
from rewriter.cost.estimate import Target
from rewriter.cost.fewshot import CorrectedEstimator, choose_estimator, prior_function
from rewriter.cost.kernels import decompose
from rewriter.cost.kit import kit_spec
from rewriter.cost.kit_manifest import (
    BASELINE_MANY,
    BASELINE_ONE,
    MANIFEST_COLUMNS,
    read_manifest,
    write_timings,
)
from rewriter.cost.measurements import read_csv
from rewriter.cost.opspec import MAC_KINDS, SPEC_FIELDS
from rewriter.cost.profile import ProfileError, load_profile
from rewriter.cost.sampling import sample_specs
from rewriter.graph_io import model_from_proto
from rewriter.passes import get_pass
from rewriter.rewrite import apply_pass

FREE_OF_MAC = "elementwise,pool,gap,resize,concat"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "mnv2.onnx"
    onnx.save(zoo.build("mobilenetv2", width=0.35, resolution=32), path)
    return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory, small_model) -> Path:
    out = tmp_path_factory.mktemp("kits") / "KIT"
    assert main(["cost", "kit", "-o", str(out), "--models", str(small_model), "-n", "150",
                 "--seed", "3"]) == 0
    return out


def npu_time(spec) -> float:
    """A synthetic device: npu-p32's op model."""
    return float(prior_function(load_profile("npu-p32"))([spec])[0])


def synthetic_timings(kit: Path, run_ms: float = 0.0, kernel_ms: float = 0.0,
                      device=npu_time) -> dict[str, float]:
    """Timings as a device would return them: each kernel by `device`, plus a fixed cost
    per run and per kernel (which the baselines show; untimed when both are 0)."""
    entries = read_manifest(kit)
    by_id = {e.id: e for e in entries}
    out = ({BASELINE_ONE: run_ms + kernel_ms, BASELINE_MANY: run_ms + 101 * kernel_ms}
           if run_ms or kernel_ms else {})
    for e in entries:
        if e.role == "op":
            out[e.id] = run_ms + kernel_ms + device(e.spec)
        elif e.role == "block":
            out[e.id] = run_ms + sum(kernel_ms + device(by_id[k].spec) for k in e.kernels)
    return out


# ----------------------------------------------------------------------------- kit


def test_kit_models_are_what_their_manifest_rows_say(kit, small_model):
    with open(kit / "manifest.csv", newline="") as fh:
        assert tuple(next(csv.reader(fh))) == MANIFEST_COLUMNS
    entries = read_manifest(kit)
    by_id = {e.id: e for e in entries}
    assert [e.id for e in entries[:2]] == [BASELINE_ONE, BASELINE_MANY]
    for e in entries:
        proto = onnx.load(str(kit / e.file))
        onnx.checker.check_model(proto)
        dims = [(v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim))
                for v in proto.graph.input]
        assert tuple(dims) == e.inputs and all(shape[0] == 1 for _, shape in dims)
        kernels = [k.spec for k in decompose(model_from_proto(proto))]
        if e.role == "op":
            assert kernels == [e.spec], e.id
        elif e.role == "block":
            assert kernels == [by_id[k].spec for k in e.kernels], e.id
    # the model's own kernels come first, then its rewrites' (fuse-ibn among them)
    folded = apply_pass(model_from_proto(onnx.load(str(small_model))), get_pass("fold-bn")).model
    own = {kit_spec(k.spec) for k in decompose(folded)}
    fused = {kit_spec(k.spec) for k in decompose(
        apply_pass(folded, get_pass("fuse-ibn")).model)} - own
    kit_specs = {e.spec for e in entries if e.role == "op"}
    assert fused and fused <= kit_specs
    first = [e for e in entries if e.role == "op"][:20]
    assert {e.source for e in first} == {"model", "rewrite"}
    assert all(e.spec in own for e in first if e.source == "model")


def test_kit_fused_blocks_are_what_fuse_ibn_makes_of_their_ibn(kit):
    entries = read_manifest(kit)
    by_id = {e.id: e for e in entries}
    blocks = [e for e in entries if e.role == "block"]
    pairs = {e.pair for e in blocks}
    assert len(blocks) == 2 * len(pairs) >= 2
    for tag in pairs:
        ibn, fused = (next(e for e in blocks if e.pair == tag and e.source == s)
                      for s in ("ibn", "fused-ibn"))
        model = model_from_proto(onnx.load(str(kit / ibn.file)))
        rewritten = apply_pass(model, get_pass("fuse-ibn")).model
        assert [k.spec for k in decompose(rewritten)] == [by_id[k].spec for k in fused.kernels]


def test_kit_draws_the_space_as_sample_specs_does(tmp_path):
    out = tmp_path / "KIT"
    assert main(["cost", "kit", "-o", str(out), "-n", "30", "--seed", "11"]) == 0
    drawn = [kit_spec(s) for s in sample_specs(30, 11, 32, "default")]
    spaced = [e.spec for e in read_manifest(out) if e.source == "space:default"]
    assert spaced and all(spec in drawn for spec in spaced)
    assert main(["cost", "kit", "-o", str(out), "-n", "3"]) == 2  # not an empty folder


# ----------------------------------------------------------------------------- run-kit


def test_run_kit_on_cpu_times_every_model(kit, tmp_path, capsys):
    out = tmp_path / "timings.csv"
    assert main(["cost", "run-kit", str(kit), "--warmup", "1", "--repeats", "2",
                 "-o", str(out)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["id"] for r in rows) == sorted(e.id for e in read_manifest(kit))
    assert all(float(r["latency_ms"]) > 0 for r in rows)


def test_run_kit_refuses_a_provider_that_is_not_installed(kit, tmp_path, capsys):
    code = main(["cost", "run-kit", str(kit), "--provider", "NoSuchExecutionProvider",
                 "-o", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'NoSuchExecutionProvider' is not available" in err and "CPUExecutionProvider" in err
    assert not (tmp_path / "t.csv").exists()


# ----------------------------------------------------------------------------- import


@pytest.mark.parametrize("row, message", [
    ("op-9999,0.5", "row 3: id 'op-9999' is not in the kit's manifest"),
    ("{op},0", "row 3: column 'latency_ms': must be a positive finite number"),
    ("{op},-1", "must be a positive finite number"),
    ("{op},nan", "must be a positive finite number"),
    ("{op},inf", "must be a positive finite number"),
    ("{op},fast", "expected a number, got 'fast'"),
    ("{first},0.3", "row 3: id '{first}' is timed twice (also row 2)"),
])
def test_import_refuses_bad_timings_naming_file_and_row(kit, tmp_path, capsys, row, message):
    ops = [e.id for e in read_manifest(kit) if e.role == "op"]
    timings = tmp_path / "t.csv"
    timings.write_text(f"id,latency_ms\n{ops[0]},0.25\n"
                       + row.format(op=ops[1], first=ops[0]) + "\n")
    out = tmp_path / "dev.toml"
    assert main(["cost", "import", str(kit), str(timings), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(timings) in err
    assert message.format(first=ops[0]) in err
    assert not out.exists()


def test_import_refuses_a_file_without_the_columns(kit, tmp_path, capsys):
    timings = tmp_path / "t.csv"
    timings.write_text("name,ms\nop-0001,0.2\n")
    assert main(["cost", "import", str(kit), str(timings), "-o", str(tmp_path / "d.toml")]) == 2
    assert "row 1: missing column 'id'" in capsys.readouterr().err


def test_imported_profile_is_a_target_that_estimates_a_zoo_model(kit, small_model, tmp_path,
                                                                   capsys):
    timings = tmp_path / "t.csv"
    write_timings(timings, synthetic_timings(kit, run_ms=0.05, kernel_ms=0.002))
    out = tmp_path / "dev.toml"
    assert main(["cost", "import", str(kit), str(timings), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy, cross-validated" in printed and "Spearman" in printed
    target = Target.load(out)
    assert target.profile.kind == "measured" and target.profile.prior is None
    # the run overhead the baselines show is out of every kernel time, the dispatch kept
    for row in read_csv(out.with_suffix(".csv")):
        assert row.latency_ms == pytest.approx(npu_time(row.spec) + 0.002, rel=1e-4)
    model = model_from_proto(onnx.load(str(small_model)))
    folded = apply_pass(model, get_pass("fold-bn")).model
    device = sum(npu_time(kit_spec(k.spec)) + 0.002 for k in decompose(folded))
    assert target.estimate(model).latency_ms == pytest.approx(device, rel=0.25)
    assert main(["estimate", str(small_model), "--target", str(out)]) == 0
    assert "target  dev" in capsys.readouterr().out


def test_reimport_merges_and_a_later_timing_wins(kit, tmp_path, capsys):
    times = synthetic_timings(kit)
    ids = [i for i in times if i.startswith("op-")]
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_timings(first, {i: times[i] for i in ids[:30]})
    write_timings(second, {ids[0]: 123.0, **{i: times[i] for i in ids[30:]}})
    out = tmp_path / "dev.toml"
    assert main(["cost", "import", str(kit), str(first), "-o", str(out)]) == 0
    assert len(read_csv(out.with_suffix(".csv"))) == 30
    assert main(["cost", "import", str(kit), str(second), "-o", str(out)]) == 0
    assert "merged with the 30 timings imported before (1 replaced" in capsys.readouterr().out
    rows = read_csv(out.with_suffix(".csv"))
    assert len(rows) == len(ids)
    spec0 = next(e.spec for e in read_manifest(kit) if e.id == ids[0])
    assert [r.latency_ms for r in rows if r.spec == spec0] == [123.0]


def test_import_checks_the_blocks_and_pairs_against_the_new_target(kit, tmp_path, capsys):
    timings = tmp_path / "t.csv"
    write_timings(timings, synthetic_timings(kit, run_ms=0.01))
    assert main(["cost", "import", str(kit), str(timings), "-o", str(tmp_path / "d.toml"),
                 "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    pair_tags = {e.pair for e in read_manifest(kit) if e.pair}
    assert data["pairs"] == len(pair_tags) and data["pairs_right"] >= data["pairs"] - 1


# ----------------------------------------------------------------------------- few-shot


def _device(prior_ms: np.ndarray) -> np.ndarray:
    """A known transform of the prior: t = 2.5 * p ** 0.8."""
    return 2.5 * prior_ms ** 0.8


def test_the_correction_recovers_a_transform_of_the_prior():
    prior = prior_function(load_profile("npu-p32"))
    specs = [s for s in sample_specs(400, 5) if s.kind in MAC_KINDS]
    train, test = specs[:60], specs[60:]
    rows = list(zip(train, _device(prior(train))))
    fitted = CorrectedEstimator(prior, "npu-p32").fit(rows)
    truth = _device(prior(test))
    raw = np.abs(prior(test) - truth) / truth
    error = np.abs(fitted.predict_many_ms(test) - truth) / truth
    assert raw.mean() > 0.5  # the prior alone is far off
    assert error.mean() < 0.03 and np.quantile(error, 0.9) < 0.06
    # the correction is the transform: log(t / p) = log 2.5 - 0.2 log p
    p = prior(test)
    assert np.allclose(fitted.correction(test), math.log(2.5) - 0.2 * np.log(p), atol=0.06)


def test_choose_estimator_keeps_the_prior_where_it_predicts_better():
    prior_profile = load_profile("npu-p32")
    prior = prior_function(prior_profile)
    specs = [s for s in sample_specs(120, 6) if s.kind in MAC_KINDS][:40]
    rows = list(zip(specs, _device(prior(specs))))
    array = {"parallelism": 8, "parallelism_ox": 1, "parallelism_oy": 1}
    choice = choose_estimator(rows, array, prior_profile)
    assert choice.use_prior and choice.corrected.mape < choice.scratch.mape / 2


def test_import_like_writes_a_profile_with_the_prior(kit, tmp_path, capsys):
    def device(spec):
        return float(_device(np.array([npu_time(spec)]))[0])

    timings = tmp_path / "t.csv"
    write_timings(timings, synthetic_timings(kit, device=device))
    out = tmp_path / "dev.toml"
    assert main(["cost", "import", str(kit), str(timings), "-o", str(out), "--like", "npu-p32",
                 "--free-kinds", FREE_OF_MAC]) == 0
    printed = capsys.readouterr().out
    assert "npu-p32 corrected" in printed and "using npu-p32 corrected" in printed
    profile = load_profile(out)
    assert profile.prior == "npu-p32" and "gap" in profile.free_kinds
    target = Target.load(out)
    spec = next(e.spec for e in read_manifest(kit) if e.role == "op" and e.spec.kind == "conv")
    assert target.kernel(spec)[0] == pytest.approx(device(spec), rel=0.1)


def test_a_prior_that_cannot_be_found_is_one_line(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(",".join((*SPEC_FIELDS, "latency_ms")) + "\n"
                        + "conv,1,8,8,8,8,8,8,3,3,1,1,,1,4,,0.1\n")
    toml = tmp_path / "p.toml"
    toml.write_text('name = "p"\ndescription = ""\nkind = "measured"\nparallelism_in = 8\n'
                    'parallelism_out = 8\nmacs_per_cycle = 64\nclock_hz = 1e9\n'
                    'onchip_memory_bytes = 1024\nbandwidth_bytes_per_s = 1e9\noverhead_s = 0\n'
                    'bytes_per_element = 4\nmeasurements = "m.csv"\nestimator = "regression"\n'
                    'prior = "nowhere.toml"\n')
    with pytest.raises(ProfileError, match="prior: 'nowhere.toml' is neither a built-in"):
        load_profile(toml)


def test_a_pair_side_the_models_already_have_keeps_its_pair():
    from dataclasses import replace

    from rewriter.cost.kit import BLOCK_ACT, DW_PAIRS, choose
    from rewriter.cost.one_op import one_op_model
    from rewriter.cost.opspec import OpSpec

    channels, side, kernel, stride = DW_PAIRS[0]
    dw = OpSpec.conv2d(channels, channels, side, kernel, stride, channels, BLOCK_ACT)
    summary = choose(models=[model_from_proto(one_op_model(dw))], n=5)
    tagged = {e.spec: e for e in summary.entries if e.pair == "dw-1"}
    assert set(tagged) == {dw, replace(dw, kind="conv", groups=1)}
    assert tagged[dw].source == "model"
