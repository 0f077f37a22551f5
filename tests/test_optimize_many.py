"""`rewriter optimize-many`: every model x target optimized as `rewriter optimize` would,
one summary, a failure reported in its row without stopping the others."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rewriter.cli import OPTIMIZE_MANY_FAILED, main

TARGETS = "npu-p32,npu-p16"


def zoo_folder(folder: Path) -> Path:
    """Two tiny zoo models (a few hundred ms to optimize each) in `folder`."""
    from rewriter import zoo
    from rewriter.graph_io import save_model

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("mobilenetv2", "mobilenetv3"):
        save_model(zoo.build(name, width=0.25, resolution=32), folder / f"{name}.onnx")
    return folder


def run_many(capsys, models: Path, out: Path, *extra: str, code: int = 0) -> dict:
    """optimize-many --json; each row's output reduced to its file name, so runs into
    different folders compare equal."""
    assert main(["optimize-many", str(models), "--target", TARGETS, "-o", str(out), "--json",
                 *extra]) == code
    data = json.loads(capsys.readouterr().out)
    for row in data["rows"]:
        row["output"] = row["output"] and Path(row["output"]).name
    return data


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zoo_folder(tmp_path_factory.mktemp("zoo"))


def test_each_pair_is_what_optimize_gives(zoo_models, tmp_path, capsys) -> None:
    data = run_many(capsys, zoo_models, tmp_path / "out", "--workers", "2")
    assert data["executor"] == "local pool of 2 processes" and data["failed"] == 0
    assert [(Path(r["model"]).name, r["target"]) for r in data["rows"]] == [
        ("mobilenetv2.onnx", "npu-p32"), ("mobilenetv2.onnx", "npu-p16"),
        ("mobilenetv3.onnx", "npu-p32"), ("mobilenetv3.onnx", "npu-p16")]
    for row in data["rows"]:
        single = tmp_path / "single.onnx"
        assert main(["optimize", row["model"], "--target", row["target"], "-o", str(single),
                     "--json"]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert row["status"] == "ok" and row["exit_code"] == 0
        assert row["before_ms"] == alone["before"]["latency_ms"]
        assert row["after_ms"] == alone["after"]["latency_ms"]
        assert row["rewrites"] == len(alone["rewrites"])
        assert row["gain_pct"] == pytest.approx(
            100 * (1 - row["after_ms"] / row["before_ms"]))
        assert (tmp_path / "out" / row["output"]).read_bytes() == single.read_bytes()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows"][0]["output"] == str(tmp_path / "out" / "mobilenetv2.npu-p32.onnx")
    table = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert table[4] == ("| model | target | before ms | after ms | gain % | rewrites | status "
                        "| error |")
    assert len([line for line in table if line.endswith("| ok |  |")]) == 4


def test_a_failure_is_reported_in_its_row_and_the_rest_go_on(zoo_models, tmp_path,
                                                            capsys) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    models = [str(bad), str(zoo_models / "mobilenetv2.onnx")]
    out = tmp_path / "out"
    code = main(["optimize-many", *models, "--target", "npu-p32", "-o", str(out),
                 "--workers", "2"])
    assert code == OPTIMIZE_MANY_FAILED
    stdout, stderr = capsys.readouterr()
    assert "2 runs (greedy, seed 0)" in stdout and "1 failed" in stdout
    assert stderr.splitlines() == [
        f"rewriter: error: {bad} for npu-p32: {bad} is not an ONNX model (protobuf parse "
        "failed: Error parsing message with type 'onnx.ModelProto': Wire format was corrupt)"]
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["status"], r["exit_code"], r["output"]) for r in rows] == [
        ("failed", 2, None), ("ok", 0, str(out / "mobilenetv2.npu-p32.onnx"))]
    assert sorted(p.name for p in out.iterdir()) == [
        "mobilenetv2.npu-p32.onnx", "summary.json", "summary.md"]


@pytest.mark.parametrize("args, message", [
    (["{zoo}", "--target", "npu-p32,nope"], "not a built-in profile"),
    (["{zoo}", "--target", "npu-p32,npu-p32"], "names npu-p32 twice"),
    (["{zoo}", "{zoo}/mobilenetv2.onnx", "{other}/mobilenetv2.onnx", "--target", "npu-p32"],
     "would both write"),
    (["{empty}", "--target", "npu-p32"], "no *.onnx files in the folder"),
    (["{zoo}", "--target", "npu-p32", "--strategy", "annealing"], "unknown strategy"),
    (["{zoo}", "--target", "npu-p32", "--ray", "auto"], "pip install 'rewriter[ray]'"),
])
def test_bad_options_fail_in_one_line_before_any_work(zoo_models, tmp_path, capsys,
                                                      monkeypatch, args, message) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "mobilenetv2.onnx").write_bytes((zoo_models / "mobilenetv2.onnx").read_bytes())
    (tmp_path / "empty").mkdir()
    monkeypatch.setitem(sys.modules, "ray", None)  # the [ray] extra missing
    filled = [a.format(zoo=zoo_models, other=other, empty=tmp_path / "empty") for a in args]
    out = tmp_path / "out"
    assert main(["optimize-many", *filled, "-o", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.splitlines()) == 1
    assert not out.exists()
