"""The CLI contract: output, one-line errors, exit codes, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from rewriter.cli import main
from tests.test_graph_io import torch_style_model


@pytest.fixture()
def small_model(tmp_path):
    path = tmp_path / "small.onnx"
    onnx.save(torch_style_model(), path)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rewriter.cli", *args], capture_output=True,
                          text=True)


def test_passes_lists_every_pass_with_exactness(capsys):
    assert main(["passes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [
        "fold-bn", "trim-kernel", "dw-to-dense", "dw-to-grouped", "fuse-linear-conv",
        "align-channels-up", "fuse-ibn", "align-channels-down", "depth-multiplier"]
    assert all(" exact " in line for line in lines[:6])
    assert all("architecture change" in line for line in lines[6:])
    assert main(["passes", "--json"]) == 0
    assert [p["exact"] for p in json.loads(capsys.readouterr().out)] == [True] * 6 + [False] * 3


def test_inspect_json_has_the_documented_keys(small_model, capsys):
    assert main(["inspect", str(small_model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("params", "param_bytes", "macs", "peak_activation_bytes", "blocks", "sites"):
        assert key in data
    assert data["params"] == 4 * 3 * 3 * 3
    assert data["macs"] == 4 * 8 * 8 * 3 * 3 * 3
    assert data["sites"]["fold-bn"] == 0
    assert data["blocks"][0]["kind"] == "conv_bn_act" and "silu" in data["blocks"][0]["activation"]


@pytest.mark.parametrize("args, message", [
    (["inspect", "{missing}"], "no such file"),
    (["inspect", "{junk}"], "not an ONNX model"),
    (["apply", "{model}", "--pass", "nope", "-o", "{out}"], "unknown pass 'nope'"),
    (["apply", "{model}", "--pass", "fold-bn", "--site", "x", "-o", "{out}"], "has no site 'x'"),
    (["inspect", "{model}", "--input-shape", "x=1x3"], "rank 2"),
    (["apply", "{model}", "--pass", "dw-to-dense", "-o", "{model}"], "overwrite the input"),
    (["bogus"], "invalid choice"),
    (["optimize", "{model}", "--target", "npu-p32", "--exact", "--allow-architecture-changes",
      "-o", "{out}"], "not allowed with argument --exact"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, small_model, args, message):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not a protobuf")
    values = {"missing": tmp_path / "missing.onnx", "junk": junk, "model": small_model,
              "out": tmp_path / "out.onnx"}
    proc = run_cli(*(a.format(**values) for a in args))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_dynamic_dims_without_input_shape_is_exit_2(real_models):
    proc = run_cli("inspect", str(real_models["det"]))
    assert proc.returncode == 2
    assert "--input-shape x=1x3xHxW" in proc.stderr


def test_failed_verification_exits_1_and_writes_nothing(real_models, tmp_path, monkeypatch,
                                                         capsys):
    """A wrong rewrite (a weight off by 1%) must be caught, reported, and not written."""
    import numpy as np
    import onnx_graphsurgeon as gs

    from rewriter.passes.fold_bn import FoldBatchNorm

    exact_apply = FoldBatchNorm.apply

    def wrong_apply(self, model, site):
        new = exact_apply(self, model, site)
        conv = new.node(site.nodes[0])
        conv.inputs[1] = gs.Constant(conv.inputs[1].name + "_bad",
                                     np.asarray(conv.inputs[1].values) * np.float32(1.01))
        return new

    monkeypatch.setattr(FoldBatchNorm, "apply", wrong_apply)
    out = tmp_path / "out.onnx"
    code = main(["apply", str(real_models["cls"]), "--input-shape", "x=1x3x48x192",
                 "--pass", "fold-bn", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED" in err and "nothing written" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_tolerance_below_float_noise_is_refused(real_models, tmp_path):
    proc = run_cli("apply", str(real_models["cls"]), "--input-shape", "x=1x3x48x192",
                   "--pass", "fold-bn", "--tolerance", "1e-12", "-o", str(tmp_path / "o.onnx"))
    assert proc.returncode == 1 and "refused" in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_apply_chosen_sites_and_input_untouched(real_models, tmp_path, capsys):
    before = real_models["cls"].read_bytes()
    out = tmp_path / "folded.onnx"
    code = main(["apply", str(real_models["cls"]), "--input-shape", "x=1x3x48x192",
                 "--pass", "fold-bn", "--site", "Conv@0", "--site", "Conv@1", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert text.count("applied  fold-bn") == 2 and "verification passed" in text
    assert real_models["cls"].read_bytes() == before
    written = onnx.load(str(out))
    assert sum(n.op_type == "BatchNormalization" for n in written.graph.node) == 33
    meta = {p.key: p.value for p in written.metadata_props}
    assert meta["rewriter.passes"] == "fold-bn@Conv@0,fold-bn@Conv@1"


def test_verification_inputs_from_npz(real_models, tmp_path, capsys):
    import numpy as np

    from rewriter.samples import text_image

    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=text_image(64, 96, 3))
    code = main(["apply", str(real_models["det"]), "--input-shape", "x=1x3x64x96",
                 "--pass", "fold-bn", "--inputs", str(npz), "-o", str(tmp_path / "o.onnx"),
                 "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["verification"]["passed"]
    assert data["verification"]["inputs"] == {"x": [1, 3, 64, 96]}
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=text_image(64, 96, 3))
    proc = run_cli("apply", str(real_models["det"]), "--input-shape", "x=1x3x64x96",
                   "--pass", "fold-bn", "--inputs", str(bad), "-o", str(tmp_path / "p.onnx"))
    assert proc.returncode == 2 and "lacks x" in proc.stderr


def test_zoo_then_inspect_mobilenetv2(tmp_path, capsys):
    path = tmp_path / "mnv2.onnx"
    assert main(["zoo", "mobilenetv2", "--width", "0.5", "--resolution", "96", "-o",
                 str(path)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ibns = [b for b in data["blocks"] if b["kind"] == "inverted_bottleneck"]
    assert len(ibns) == 17
    assert [b["expansion"] for b in ibns] == [1] + [6] * 16
    assert [b["stride"] for b in ibns if b["stride"] == 2] == [2] * 4
    assert sum(b["residual"] for b in ibns) == 10
    assert data["params"] == 1_987_224  # the zoo's count at width 0.5, BN unfolded
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "inverted bottlenecks: 17" in text
    assert main(["zoo", "resnet", "-o", str(path)]) == 2
    assert "unknown" in capsys.readouterr().err.lower()
