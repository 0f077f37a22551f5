"""Re-timing a measured target's ops: how fast the machine runs now against its CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewriter.cli import main
from rewriter.cost.estimate import Target
from rewriter.cost.measure import device_name, measure_specs
from rewriter.cost.measurements import Measurement, write_csv
from rewriter.cost.opspec import OpSpec
from rewriter.cost.profile import ProfileError
from rewriter.cost.retime import MIN_MS, machine_speed
from tests.helpers import edited_profile

SPECS = [OpSpec.conv2d(c, c, 56, 3, 1, 1, "relu") for c in (32, 48, 64)]


@pytest.fixture(scope="module")
def here(tmp_path_factory):
    """A measured profile of this machine: cpu-ort's, on three convs timed here."""
    tmp = tmp_path_factory.mktemp("retime")
    rows = measure_specs(SPECS, repeats=5, progress=False)
    assert all(r.latency_ms >= MIN_MS for r in rows)
    write_csv(tmp / "here.csv", rows)
    path = edited_profile(tmp, "cpu-ort", 'measurements = "cpu-ort.csv"',
                          f'measurements = "{tmp / "here.csv"}"')
    # no gemm among the three convs to take a weight-streaming rate from
    path.write_text(path.read_text().replace("stream_weights = true", "stream_weights = false"))
    return path


def test_ops_of_this_machine_are_retimed_and_scale_the_estimate(here):
    target = Target.load(here)
    check = machine_speed(target, ops=2, seed=1)
    assert check.ops == 2 and check.ratio > 0
    overhead = target.profile.overhead_s * 1e3
    before = target.kernel(SPECS[0])[0]
    target.set_speed(2.0)
    after = target.kernel(SPECS[0])[0]  # the cache was cleared
    assert after - overhead == pytest.approx(2 * (before - overhead))


def test_the_ratio_is_now_over_then(here, monkeypatch):
    """Ops that run twice as long now as in the CSV give x2 (a machine running slow), and
    scale the estimate up; rows handed in are the ones re-timed."""
    import rewriter.cost.retime as retime

    rows = retime.retimable(Target.load(here))

    def slower(specs, **_):
        times = {r.spec: r.latency_ms for r in rows}
        return [Measurement(s, 2 * times[s], "", 1, 1) for s in specs]

    monkeypatch.setattr(retime, "measure_specs", slower)
    check = machine_speed(Target.load(here), ops=3, rows=rows[:2])
    assert check.ratio == pytest.approx(2.0) and check.ops == 2
    # validate_retimed estimates at that speed and leaves the target as it found it
    from rewriter import zoo
    from rewriter.cost.validate import Case, validate_retimed
    from rewriter.graph_io import model_from_proto

    target = Target.load(here)
    model = model_from_proto(zoo.build("mobilenetv2", width=0.35, resolution=32))
    plain = target.estimate(model).latency_ms
    report = validate_retimed(target, [Case("m", model)], [1.0], 3, rows=rows)
    assert report.speed.ratio == pytest.approx(2.0)
    # per-op overhead is not scaled, so the whole model is slower by less than x2; how
    # much less depends on the CPU the CSV was timed on
    assert report.rows[0].estimated_ms > 1.05 * plain
    target.set_speed(2.0)
    at_two = target.estimate(model).latency_ms
    target.set_speed(1.0)
    assert report.rows[0].estimated_ms == pytest.approx(at_two)
    assert target.speed == 1.0 and target.estimate(model).latency_ms == pytest.approx(plain)


def test_what_cannot_be_retimed_is_one_clear_error():
    with pytest.raises(ProfileError, match="zigzag.*not on this machine"):
        machine_speed(Target.load("edge-tpu-zz"), ops=2)
    with pytest.raises(ProfileError, match="only a measured target"):
        machine_speed(Target.load("npu-p32"))
    with pytest.raises(ProfileError, match="analytic"):
        Target.load("npu-p32").set_speed(0.9)
    with pytest.raises(ValueError, match="positive"):
        Target.load("cpu-ort").set_speed(0.0)


def test_cli_validate_retimes_ops(here, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    assert main(["zoo", "mobilenetv2", "--width", "0.35", "--resolution", "64", "-o",
                 str(model)]) == 0
    capsys.readouterr()
    args = ["cost", "validate", "--no-zoo", "--model", str(model), "--repeats", "3"]
    assert main([*args, "--target", str(here), "--retime-ops", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["speed_ratio"] > 0 and data["rows"][0]["estimated_ms"] > 0
    assert main([*args, "--target", str(here), "--retime-ops", "2"]) == 0
    assert "re-timed now run at x" in capsys.readouterr().out
    assert main([*args, "--target", str(here), "--retime-ops", "-1"]) == 2
    assert main([*args, "--target", "edge-tpu-zz", "--retime-ops", "2"]) == 2
    assert "nothing to re-time" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere.csv"
    text = Path(str(here)).parent.joinpath("here.csv").read_text()
    elsewhere.write_text(text.replace(device_name(), "another machine"))
    profile = tmp_path / "elsewhere.toml"
    profile.write_text(here.read_text().replace(str(here.parent / "here.csv"), str(elsewhere)))
    assert main([*args, "--target", str(profile), "--retime-ops", "2"]) == 2
    assert "measured on another machine" in capsys.readouterr().err
