"""Hostile inputs (issue 17): each gives its documented exit code and one line, writes
nothing, leaves the input untouched, and output paths are checked before any work."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewriter.cli import main
from rewriter.errors import BadInputError
from tests.test_graph_io import torch_style_model

TARGET = "npu-p32"


def run(*args: str) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:  # argparse refusals exit 2 themselves
        return int(exc.code or 0)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def model(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(torch_style_model(), path)
    return path


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if the command loads a model (the checks must come first)."""
    import rewriter.graph_io

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(rewriter.graph_io, "load_model", refuse)


# -- 1. output paths ---------------------------------------------------------------------
def test_output_equal_to_report_is_refused_before_any_work(tmp_path, model, capsys, no_work):
    before = digest(model)
    report = tmp_path / "r.html"
    assert run("optimize", model, "--target", TARGET, "-o", report, "--report", report) == 2
    one_line_error(capsys, "r.html")
    assert digest(model) == before and not report.exists()


def test_report_named_like_the_input_is_refused(tmp_path, model, capsys, no_work):
    before = digest(model)
    assert run("optimize", model, "--target", TARGET, "-o", tmp_path / "o.onnx",
               "--report", model) == 2
    one_line_error(capsys, "input")
    assert digest(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_report_files_may_not_collide_with_the_output(tmp_path, model, capsys, no_work):
    # --report r writes r.html and r.md: -o r.md would be overwritten by the report
    assert run("optimize", model, "--target", TARGET, "-o", tmp_path / "r.md",
               "--report", tmp_path / "r") == 2
    one_line_error(capsys, "r.md")


@pytest.mark.parametrize("command", ["apply", "optimize"])
def test_output_through_a_symlink_to_the_input_is_refused(tmp_path, model, capsys, no_work,
                                                          command):
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    before = digest(model)
    extra = ["--pass", "fold-bn"] if command == "apply" else ["--target", TARGET]
    assert run(command, model, *extra, "-o", link) == 2
    one_line_error(capsys, "overwrite the input")
    assert digest(model) == before and link.is_symlink()


def test_recover_output_equal_to_an_input_is_refused(tmp_path, model, capsys, no_work):
    other = tmp_path / "other.onnx"
    other.write_bytes(model.read_bytes())
    assert run("recover", model, other, "-o", tmp_path / "." / "other.onnx") == 2
    one_line_error(capsys, "overwrite the input")


def long_name(tmp_path: Path) -> Path:
    return tmp_path / ("a" * 300 + ".onnx")


@pytest.mark.parametrize("make_out, message", [
    (lambda d, m: m / "o.onnx", "not a folder"),          # the parent is a file
    (lambda d, m: d / "nowhere" / "o.onnx", "does not exist"),
    (lambda d, m: long_name(d), "at most 255"),
    (lambda d, m: d, "is a directory"),
])
@pytest.mark.parametrize("command", [
    ["apply", "{model}", "--pass", "fold-bn"],
    ["optimize", "{model}", "--target", TARGET],
    ["recover", "{model}", "{model}"],
    ["zoo", "mobilenetv2"],
    ["cost", "fit", "{model}"],
    ["cost", "measure", "-n", "1"],
])
def test_bad_output_paths_are_exit_2_before_any_work(tmp_path, model, capsys, no_work,
                                                     make_out, message, command):
    out = make_out(tmp_path, model)
    args = [a.format(model=model) for a in command]
    assert run(*args, "-o", out) == 2
    one_line_error(capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_unwritable_folder_is_exit_2(tmp_path, model, capsys, monkeypatch, no_work):
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)
    assert run("apply", model, "--pass", "fold-bn", "-o", tmp_path / "o.onnx") == 2
    one_line_error(capsys, "cannot write")


def test_full_disk_is_exit_2_and_leaves_nothing(tmp_path, model, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx, "save", full)
    assert run("zoo", "mobilenetv2", "--width", "0.35", "--resolution", "32", "-o",
               tmp_path / "o.onnx") == 2
    one_line_error(capsys, "No space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cost_fit_to_a_directory_leaves_no_temporary(tmp_path, capsys):
    from rewriter.cost.profile import DATA_DIR

    csv = sorted(DATA_DIR.glob("*.csv"))[0]
    folder = tmp_path / "DIR"
    folder.mkdir()
    assert run("cost", "fit", csv, "-o", folder) == 2
    one_line_error(capsys, "directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR"]


# -- 2. numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "abc"])
def test_bad_tolerance_is_exit_2(tmp_path, model, capsys, value):
    assert run("apply", model, "--pass", "fold-bn", "-o", tmp_path / "o.onnx",
               f"--tolerance={value}") == 2
    one_line_error(capsys, "--tolerance")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "-1", "0", "1e-9", "-inf", "4Q"])
def test_bad_memory_budget_is_exit_2(tmp_path, model, capsys, value):
    for flag in ("--max-params", "--max-activations"):
        assert run("optimize", model, "--target", TARGET, "-o", tmp_path / "o.onnx",
                   f"{flag}={value}") == 2
        one_line_error(capsys, "bad size")


def test_parse_bytes_bounds():
    from rewriter.cost.memory import parse_bytes

    assert parse_bytes("4M") == 4 * 2**20 and parse_bytes("1.5K") == 1536
    for text in ("inf", "nan", "1e999", "1e999G", "1e300G", "-1", "0"):
        with pytest.raises(BadInputError):
            parse_bytes(text)


@pytest.mark.parametrize("command", [
    ["apply", "{model}", "--pass", "fold-bn", "-o", "{out}"],
    ["optimize", "{model}", "--target", TARGET, "-o", "{out}"],
    ["recover", "{model}", "{model}", "-o", "{out}"],
    ["cost", "measure", "-n", "1", "-o", "{out}"],
    ["cost", "fit", "{model}", "-o", "{out}"],
    ["zoo", "mobilenetv2", "-o", "{out}"],
])
@pytest.mark.parametrize("seed", ["-1", "99999999999999999999999", "1.5"])
def test_bad_seed_is_exit_2(tmp_path, model, capsys, command, seed):
    args = [a.format(model=model, out=tmp_path / "o.out") for a in command]
    assert run(*args, f"--seed={seed}") == 2
    one_line_error(capsys, "--seed")


@pytest.mark.parametrize("value", ["nan", "-0.1", "1.5", "inf"])
def test_bad_min_fidelity_is_exit_2(tmp_path, model, capsys, value):
    assert run("optimize", model, "--target", TARGET, "-o", tmp_path / "o.onnx",
               f"--min-fidelity={value}") == 2
    one_line_error(capsys, "--min-fidelity")
    assert run("recover", model, model, "-o", tmp_path / "o.onnx",
               f"--min-fidelity={value}") == 2
    one_line_error(capsys, "--min-fidelity")


@pytest.mark.parametrize("shape, message", [
    ("x=1x3x100000x100000", "the inputs would need"),
    ("x=1x3x99999999999999999999x4", "larger than"),
    ("x=1x3x-8x8", "positive integers"),
    ("x=1x3x8.5x8", "positive integers"),
])
def test_absurd_input_shapes_are_exit_2(tmp_path, model, capsys, shape, message):
    assert run("apply", model, "--pass", "fold-bn", "-o", tmp_path / "o.onnx",
               "--input-shape", shape) == 2
    one_line_error(capsys, message)


def test_same_input_shape_twice_is_an_error(model, capsys):
    assert run("inspect", model, "--input-shape", "x=1x3x8x8", "--input-shape",
               "x=2x3x8x8") == 2
    one_line_error(capsys, "given twice")


def test_declared_input_too_large_is_refused(tmp_path, capsys):
    proto = torch_style_model(batch=1, spatial=(40000, 40000))
    path = tmp_path / "big.onnx"
    onnx.save(proto, path)
    assert run("inspect", path) == 2
    one_line_error(capsys, "the inputs would need")


def test_zero_d_calibration_array_is_bad_input(tmp_path, model):
    from rewriter.data import load_samples
    from rewriter.graph_io import load_model

    npz = tmp_path / "cal.npz"
    np.savez(npz, x=np.float32(3.0))
    with pytest.raises(BadInputError, match="scalar"):
        load_samples(npz, load_model(model))


@pytest.mark.parametrize("option, value", [
    ("--multiple", "0"), ("--multiple", "-3"), ("--multiplier", "nan"),
    ("--multiplier", "1.5"),
])
def test_other_numbers_of_apply_are_checked(tmp_path, model, capsys, option, value):
    assert run("apply", model, "--pass", "depth-multiplier", "-o", tmp_path / "o.onnx",
               f"{option}={value}") == 2
    one_line_error(capsys, option)


# -- 3. one atomic writer: modes, no fixed temporary names ---------------------------------
@pytest.fixture()
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def written_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_model_gets_the_umask_mode(tmp_path, model, umask, mask, mode):
    from rewriter.graph_io import load_model, save_model

    umask(mask)
    out = save_model(load_model(model), tmp_path / "o.onnx")
    assert written_mode(out) == mode


def test_overwritten_files_keep_their_mode(tmp_path, model, umask):
    from rewriter.atomic import atomic_write_text
    from rewriter.graph_io import load_model, save_model

    out = tmp_path / "o.onnx"
    out.write_bytes(b"old")
    out.chmod(0o640)
    save_model(load_model(model), out)
    assert written_mode(out) == 0o640
    text = tmp_path / "t.md"
    text.write_text("old")
    text.chmod(0o604)
    atomic_write_text(text, "new")
    assert written_mode(text) == 0o604 and text.read_text() == "new"


def test_report_csv_and_estimator_files_get_the_umask_mode(tmp_path, umask):
    from rewriter.cost.measurements import read_csv, write_csv
    from rewriter.cost.profile import DATA_DIR
    from rewriter.cost.regression import RegressionEstimator
    from rewriter.search.report import _write_atomic

    umask(0o022)
    _write_atomic(tmp_path / "r.html", "<p>")
    rows = read_csv(sorted(DATA_DIR.glob("*.csv"))[0])[:40]
    write_csv(tmp_path / "m.csv", rows)
    RegressionEstimator().fit(rows).save(tmp_path / "e.json")
    for name in ("r.html", "m.csv", "e.json"):
        assert written_mode(tmp_path / name) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "m.csv", "r.html"]


def test_writers_do_not_follow_a_planted_temporary_symlink(tmp_path):
    from rewriter.cost.measurements import read_csv, write_csv
    from rewriter.cost.profile import DATA_DIR
    from rewriter.cost.regression import RegressionEstimator

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    rows = read_csv(sorted(DATA_DIR.glob("*.csv"))[0])[:40]
    # the fixed temporary names the writers used before
    (tmp_path / ".m.csv.tmp").symlink_to(victim)
    (tmp_path / ".e.json.tmp").symlink_to(victim)
    write_csv(tmp_path / "m.csv", rows)
    RegressionEstimator().fit(rows).save(tmp_path / "e.json")
    assert victim.read_text() == "precious"
    assert len(read_csv(tmp_path / "m.csv")) == 40


def test_atomic_write_failure_leaves_nothing(tmp_path):
    from rewriter.atomic import atomic_write

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.txt", boom)
    assert list(tmp_path.iterdir()) == []


# -- 4. external data ----------------------------------------------------------------------
def conv_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.fixture()
def external(tmp_path) -> Path:
    """A model folder with its weights in m.data, and a secret file beside the folder."""
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(conv_model(), folder / "m.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    (tmp_path / "secret.bin").write_bytes(b"S" * 4096)
    return folder


def retarget(folder: Path, location: str, offset: int | None = None,
             length: int | None = None) -> Path:
    proto = onnx.load(folder / "m.onnx", load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
        if entry.key == "offset" and offset is not None:
            entry.value = str(offset)
        if entry.key == "length" and length is not None:
            entry.value = str(length)
    onnx.save(proto, folder / "m.onnx")
    return folder / "m.onnx"


def test_plain_external_data_loads(external, capsys):
    assert run("inspect", external / "m.onnx", "--json") == 0
    assert json.loads(capsys.readouterr().out)["params"] == 4 * 3 * 3 * 3


@pytest.mark.parametrize("trick, message", [
    ("absolute", "absolute path"),
    ("dotdot", "leaves the model's folder"),
    ("file_symlink", "symlink"),
    ("folder_symlink", "symlink"),
    ("past_end", "runs past the end"),
    ("missing", "does not exist"),
    ("negative", "negative"),
])
def test_external_data_tricks_are_refused(external, tmp_path, capsys, trick, message):
    secret = tmp_path / "secret.bin"
    if trick == "absolute":
        path = retarget(external, str(secret))
    elif trick == "dotdot":
        path = retarget(external, "../secret.bin")
    elif trick == "file_symlink":
        (external / "m.data").unlink()
        (external / "m.data").symlink_to(secret)
        path = external / "m.onnx"
    elif trick == "folder_symlink":
        (external / "sub").symlink_to(tmp_path)
        path = retarget(external, "sub/secret.bin")
    elif trick == "past_end":
        path = retarget(external, "m.data", offset=100, length=432)
    elif trick == "missing":
        path = retarget(external, "nothing.data")
    else:
        path = retarget(external, "m.data", offset=-4)
    out = tmp_path / "o.onnx"
    assert run("apply", path, "--pass", "fold-bn", "-o", out) == 2
    one_line_error(capsys, message, "refusing")
    assert not out.exists()


def test_onnx_dependency_is_one_that_refuses_symlinks():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"onnx>=1.21"' in text
    assert "tomli" in text and "python_version<'3.11'" in text


# -- 5. onnxruntime's warnings -------------------------------------------------------------
def test_onnxruntime_logs_errors_only():
    import onnxruntime as ort

    from rewriter.runtime import session

    sess = session(conv_model())
    assert sess.get_session_options().log_severity_level == 3
    assert ort  # the default logger is set on import of rewriter.runtime (checked below)


def test_no_onnxruntime_warnings_on_stderr(tmp_path):
    from rewriter import zoo

    path = tmp_path / "m.onnx"
    onnx.save(zoo.build("mobilenetv2", width=0.35, resolution=32), path)
    proc = subprocess.run([sys.executable, "-m", "rewriter.cli", "apply", str(path), "--pass",
                           "fold-bn", "-o", str(tmp_path / "o.onnx")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" not in proc.stderr and "[W:" not in proc.stderr, proc.stderr


# -- 6. data-dependent shapes, folding cap --------------------------------------------------
def nonzero_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["r"], ["nz"]),
         helper.make_node("Cast", ["nz"], ["y"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("command", ["estimate", "optimize"])
def test_nonzero_is_a_clear_exit_2(tmp_path, capsys, command):
    path = tmp_path / "nz.onnx"
    onnx.save(nonzero_model(), path)
    extra = ["-o", tmp_path / "o.onnx"] if command == "optimize" else []
    assert run(command, path, "--target", TARGET, *extra) == 2
    one_line_error(capsys, "data-dependent shape at node")


def constant_of_shape_model(shape) -> onnx.ModelProto:
    dims = numpy_helper.from_array(np.array(shape, dtype=np.int64), "s")
    axes = numpy_helper.from_array(np.arange(len(shape), dtype=np.int64), "ax")
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["s"], ["c"],
                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
         helper.make_node("ReduceSum", ["c", "ax"], ["r"], keepdims=1),
         helper.make_node("Add", ["x", "r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], [dims, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_constant_folding_is_capped():
    from rewriter.graph_io import model_from_proto

    huge = model_from_proto(constant_of_shape_model([1, 3, 4096, 4096]))
    assert "ConstantOfShape" in {n.op for n in huge.graph.nodes}  # not expanded (192 MiB)
    small = model_from_proto(constant_of_shape_model([1, 3, 4, 4]))
    assert "ConstantOfShape" not in {n.op for n in small.graph.nodes}  # folded


# -- 7. profiles, JSON, opsets -------------------------------------------------------------
@pytest.mark.parametrize("value", ["1e-320", "-1.0", "nan", "inf", "1e300"])
def test_absurd_profile_numbers_are_one_profile_error(tmp_path, model, capsys, value):
    from rewriter.cost.profile import ProfileError, load_profile
    from tests.helpers import edited_profile

    path = edited_profile(tmp_path, "npu-p32", "bandwidth_bytes_per_s = 16.0e9",
                          f"bandwidth_bytes_per_s = {value}")
    with pytest.raises(ProfileError, match="bandwidth_bytes_per_s"):
        load_profile(path)
    assert run("estimate", model, "--target", path, "--json") == 2
    one_line_error(capsys, "bandwidth_bytes_per_s")


def test_json_output_is_strict():
    from rewriter.cli_args import _json

    text = _json({"a": math.inf, "b": [math.nan, 1.0], "c": np.float64(-math.inf)})
    assert json.loads(text) == {"a": None, "b": [None, 1.0], "c": None}
    assert "Infinity" not in text and "NaN" not in text


@pytest.mark.parametrize("opset", [29, 1000])
def test_future_opset_names_the_supported_range(tmp_path, capsys, opset):
    proto = conv_model()
    proto.opset_import[0].version = opset
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    assert run("inspect", path) == 2
    err = one_line_error(capsys, f"opset {opset}", "supported")
    assert len(err) < 200


# -- 8. Python 3.10 ------------------------------------------------------------------------
def test_profiles_load_without_tomllib():
    code = ("import sys; sys.modules['tomllib'] = None\n"
            "try:\n    import tomli\nexcept ImportError:\n    print('no tomli'); raise SystemExit\n"
            "from rewriter.cost.profile import load_profile\n"
            "print(load_profile('npu-p32').name)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "no tomli":
        pytest.skip("tomli is not installed here")
    assert proc.stdout.strip() == "npu-p32"


# -- found by the fuzzer (tests/test_fuzz_cli.py) -----------------------------------------
def mutated(tmp_path: Path, edit) -> Path:
    proto = conv_model()
    edit(proto)
    path = tmp_path / "bad.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def bad_utf8(proto):
    raw = bytearray(proto.SerializeToString())
    at = raw.index(b"Conv")
    raw[at] = 0xF2
    proto.ParseFromString(bytes(raw))


@pytest.mark.parametrize("edit, message", [
    (bad_utf8, "not UTF-8"),
    (lambda p: setattr(p.graph.initializer[0], "data_type", 33), "unknown data type"),
    (lambda p: p.graph.initializer[0].dims.__setitem__(0, 2), "its data holds"),
    (lambda p: p.graph.node[0].attribute.append(helper.make_attribute("group", 0)),
     "group 0"),
    (lambda p: p.graph.node[0].attribute.append(helper.make_attribute("strides", [1, -1])),
     "strides"),
])
@pytest.mark.parametrize("command", ["inspect", "estimate"])
def test_corrupt_models_are_exit_2(tmp_path, capsys, edit, message, command):
    path = mutated(tmp_path, edit)
    extra = ["--target", TARGET] if command == "estimate" else []
    assert run(command, path, *extra) == 2
    one_line_error(capsys, message)


def test_inconsistent_conv_groups_are_exit_2(tmp_path, capsys):
    path = mutated(tmp_path, lambda p: p.graph.node[0].attribute.append(
        helper.make_attribute("group", 2)))
    assert run("estimate", path, "--target", TARGET) == 2
    one_line_error(capsys)


def test_a_window_larger_than_its_input_is_exit_2(tmp_path, capsys):
    path = mutated(tmp_path, lambda p: p.graph.node[0].attribute.append(
        helper.make_attribute("dilations", [1, 6])))
    assert run("estimate", path, "--target", TARGET) == 2
    one_line_error(capsys, "tensor")


def test_a_constant_output_is_exit_2(tmp_path, capsys):
    proto = constant_of_shape_model([1, 3, 4, 4])
    proto.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    path = tmp_path / "c.onnx"
    onnx.save(proto, path)
    assert run("inspect", path) == 2
    one_line_error(capsys, "constant")


def test_commands_that_run_the_model_bound_its_tensors(tmp_path, capsys):
    proto = torch_style_model(batch=1, spatial=(167, 167))
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    path = tmp_path / "big.onnx"
    onnx.save(proto, path)
    assert run("inspect", path) == 0  # analysis allocates nothing
    capsys.readouterr()
    assert run("apply", path, "--pass", "fold-bn", "--input-shape", "x=64x3x1024x1024",
               "-o", tmp_path / "o.onnx") == 2
    one_line_error(capsys)


@pytest.mark.parametrize("command", [
    ["optimize", "{model}", "--target", TARGET, "--allow-architecture-changes", "-o", "{out}"],
    ["recover", "{model}", "{model}", "-o", "{out}"],
])
def test_unknown_augmentation_is_exit_2(tmp_path, model, capsys, no_work, command):
    args = [a.format(model=model, out=tmp_path / "o.onnx") for a in command]
    assert run(*args, "--augment", "strong") == 2
    one_line_error(capsys, "--augment", "robust")
    assert not (tmp_path / "o.onnx").exists()
