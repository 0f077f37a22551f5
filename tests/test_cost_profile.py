"""Hardware profiles: built-ins load, and every kind of bad file fails with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewriter.cost.opspec import KINDS
from rewriter.cost.profile import PROFILE_DIR, ProfileError, builtin_profiles, load_profile
from tests.helpers import edited_profile


def test_builtins_load():
    assert builtin_profiles() == ["cpu-ort", "edge-tpu-zz", "npu-p16", "npu-p32", "tpu-zz"]
    p32 = load_profile("npu-p32")
    assert (p32.kind, p32.parallelism_in, p32.parallelism_out) == ("analytic", 32, 32)
    assert p32.macs_per_cycle == 1024 and p32.bytes_per_element == 1
    assert set(p32.ops) == set(KINDS) - {"reorder"}  # optional: takes elementwise's
    assert p32.op("reorder") == p32.op("elementwise")
    assert 0 < p32.op("dwconv").depthwise_efficiency < p32.op("conv").efficiency <= 1
    assert p32.op("elementwise").lanes == 32
    assert p32.activation_cost("relu6") == 0 and p32.activation_cost("mystery") == 2.0
    assert load_profile("npu-p16").parallelism_in == 16
    cpu = load_profile("cpu-ort")
    assert cpu.kind == "measured" and cpu.estimator == "regression"
    assert cpu.measurements is not None and cpu.measurements.name == "cpu-ort.csv"
    assert cpu.measurements.is_file()


def test_load_by_path(tmp_path: Path):
    path = edited_profile(tmp_path, "npu-p32", 'name = "npu-p32"', 'name = "mine"')
    assert load_profile(path).name == "mine"
    assert load_profile(str(path)).source == path


BAD = [
    ("clock_hz = 1.0e9\n", "", "clock_hz", "missing"),
    ("clock_hz = 1.0e9", 'clock_hz = "fast"', "clock_hz", "number"),
    ("bandwidth_bytes_per_s = 16.0e9", "bandwidth_bytes_per_s = 0", "bandwidth_bytes_per_s",
     "positive"),
    ("overhead_s = 2.0e-6", "overhead_s = -1e-6", "overhead_s", ">= 0"),
    ("parallelism_in = 32", "parallelism_in = 32.0", "parallelism_in", "integer"),
    ("parallelism_in = 32", "parallelism_in = true", "parallelism_in", "integer"),
    ("overhead_s = 2.0e-6", "overhead_s = 2.0e-6\nturbo = 1", "turbo", "unknown"),
    ("[ops.conv]\nefficiency = 0.95", "[ops.conv]\nefficiency = 1.5", "ops.conv.efficiency",
     "(0, 1]"),
    ("[ops.conv]\nefficiency = 0.95", "[ops.conv]\nefficency = 0.95", "ops.conv.efficency",
     "unknown"),
    ("[ops.gemm]\nefficiency = 0.80", "[ops.matmul]\nefficiency = 0.80", "ops.gemm", "missing"),
    ("lanes = 32\nefficiency = 0.90\n\n[ops.pool]", "efficiency = 0.90\n\n[ops.pool]",
     "ops.elementwise.lanes", "missing"),
    ("default = 2.0", "", "activations.default", "missing"),
    ("relu = 0.0", "relu = -1.0", "activations.relu", ">= 0"),
    ('kind = "analytic"', 'kind = "magic"', "kind", "analytic"),
    ("macs_per_cycle = 1024", "macs_per_cycle = 2048", "macs_per_cycle", "parallelism_in"),
    ("clock_hz = 1.0e9", "clock_hz = ", "invalid TOML", "line"),
]


@pytest.mark.parametrize("old,new,key,words", BAD, ids=[b[2] + "-" + b[3] for b in BAD])
def test_invalid_profiles_name_file_and_key(tmp_path: Path, old, new, key, words):
    path = edited_profile(tmp_path, "npu-p32", old, new)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and key in message and words in message


def test_measured_profile_problems(tmp_path: Path):
    path = edited_profile(tmp_path, "cpu-ort", '"cpu-ort.csv"', '"nowhere.csv"')
    with pytest.raises(ProfileError, match="measurements: .*nowhere.csv"):
        load_profile(path)
    path = edited_profile(tmp_path, "cpu-ort", 'estimator = "regression"', 'estimator = "oracle"')
    with pytest.raises(ProfileError, match="estimator: .*oracle"):
        load_profile(path)
    path = edited_profile(tmp_path, "cpu-ort", 'estimator = "regression"\n', "")
    with pytest.raises(ProfileError, match="estimator: missing"):
        load_profile(path)
    # a CSV next to a user profile is found there
    (tmp_path / "mine.csv").write_text((PROFILE_DIR.parent / "data" / "cpu-ort.csv").read_text())
    path = edited_profile(tmp_path, "cpu-ort", '"cpu-ort.csv"', '"mine.csv"')
    assert load_profile(path).measurements == tmp_path / "mine.csv"


def test_missing_and_unknown(tmp_path: Path):
    with pytest.raises(ProfileError, match="npu-p64: no such profile file .*npu-p32"):
        load_profile("npu-p64")
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile(tmp_path / "absent.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(ProfileError, match="binary.toml"):
        load_profile(binary)
