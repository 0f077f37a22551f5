"""Whole-model estimates: kernel decomposition, targets, memory budget, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewriter import zoo
from rewriter.cli import main
from rewriter.cost.estimate import Target, estimate
from rewriter.cost.kernels import decompose, normalise_act
from rewriter.cost.measurements import read_csv
from rewriter.cost.memory import check_model_budget, parse_bytes
from rewriter.errors import BadInputError
from rewriter.graph_io import model_from_proto
from rewriter.passes import get_pass
from rewriter.rewrite import apply_pass
from tests.helpers import edited_profile, load


@pytest.fixture(scope="module")
def mnv2():
    return load(zoo.build("mobilenetv2", width=1.0, resolution=224))


def test_conv_bn_act_is_one_kernel(mnv2):
    kernels = decompose(mnv2)
    stem = kernels[0]
    assert stem.nodes == ("features.0.conv", "features.0.bn", "features.0.act")
    assert stem.spec.kind == "conv" and stem.spec.act == "relu6"
    kinds = [k.spec.kind for k in kernels]
    assert kinds.count("dwconv") == 17 and kinds.count("gemm") == 1
    assert kinds.count("elementwise") == 10  # the residual Adds
    covered = {n for k in kernels for n in k.nodes}
    assert all(n.name in covered or n.op == "Flatten" for n in mnv2.graph.nodes)


def test_a_sequence_matmul_is_a_gemm_with_a_row_per_leading_index():
    """[1, T, C] x [C, K] (PP-OCR rec's attention) and [1, H, T, D] x [1, H, D, T]: every
    leading index is one more row of the product, so the spec's MACs are the MatMul's."""
    inits = [numpy_helper.from_array(np.ones((24, 36), np.float32), "w"),
             numpy_helper.from_array(np.array([1, 10, 3, 12], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"], "proj"),  # [1, 10, 36]
             helper.make_node("Reshape", ["q", "shape"], ["q4"], "split"),
             helper.make_node("Transpose", ["q4"], ["heads"], "to_heads", perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["heads"], ["keys"], "to_keys", perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["heads", "keys"], ["y"], "scores")]  # [1, 3, 10, 10]
    graph = helper.make_graph(
        nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10, 10])], inits)
    model = model_from_proto(helper.make_model(graph,
                                               opset_imports=[helper.make_opsetid("", 13)]))
    gemms = {k.name: k.spec for k in decompose(model) if k.spec.kind == "gemm"}
    proj, scores = gemms["proj"], gemms["scores"]
    assert (proj.n, proj.cin, proj.cout, proj.n_inputs) == (10, 24, 36, 1)
    assert proj.macs == 10 * 24 * 36
    assert (scores.n, scores.cin, scores.cout, scores.n_inputs) == (30, 12, 10, 2)
    assert scores.macs == 3 * 10 * 12 * 10


def test_a_resize_kernel_says_its_interpolation_taps():
    """LR-ASPP's bilinear upsampling costs 2-3x a nearest one in onnxruntime: the spec keeps
    the mode as taps per axis (kh = kw)."""
    model = model_from_proto(zoo.build("lraspp", width=0.35, resolution=96))
    taps = {k.spec.kh for k in decompose(model) if k.spec.kind == "resize"}
    assert taps == {2}  # both of its Resizes are linear
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], "up", mode="nearest")], "up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [scales])
    nearest = model_from_proto(helper.make_model(graph,
                                                 opset_imports=[helper.make_opsetid("", 13)]))
    (kernel,) = decompose(nearest)
    assert (kernel.spec.kind, kernel.spec.kh, kernel.spec.kw) == ("resize", 1, 1)


def test_activation_names_normalise():
    assert normalise_act("hardswish+affine") == "hardswish"
    assert normalise_act("hardsigmoid") == "sigmoid"
    assert normalise_act("") == ""


@pytest.mark.parametrize("target", ["npu-p32", "npu-p16", "cpu-ort"])
def test_estimate_sums_its_kernels(mnv2, target):
    result = estimate(mnv2, target)
    assert result.target == target
    assert result.latency_ms == pytest.approx(sum(o.latency_ms for o in result.ops))
    kernels = [o for o in result.ops if o.kind != "reorder"]
    assert result.latency_ms > 0 and len(kernels) == len(decompose(mnv2))
    assert result.param_bytes > 13e6 and result.peak_activation_bytes > 4 * 96 * 112 * 112


def test_folding_bn_does_not_change_the_estimate(mnv2):
    folded = apply_pass(mnv2, get_pass("fold-bn")).model
    target = Target.load("npu-p32")
    assert target.estimate(folded).latency_ms == pytest.approx(target.estimate(mnv2).latency_ms)


def test_dw_to_dense_pays_off_on_narrow_layers_on_npu(mnv2):
    """The effect the search exploits: a 32-channel depthwise conv at 112x112 is slower than
    its exact dense replacement on npu-p32, a 960-channel one at 7x7 is faster."""
    target = Target.load("npu-p32")
    base = target.estimate(mnv2).latency_ms
    early = apply_pass(mnv2, get_pass("dw-to-dense"), ["features.1.dw.conv"]).model
    late = apply_pass(mnv2, get_pass("dw-to-dense"), ["features.17.dw.conv"]).model
    assert target.estimate(early).latency_ms < base
    assert target.estimate(late).latency_ms > base


def test_alignment_changes_npu_latency_in_steps(mnv2):
    """Padding 24 channels to 32 costs nothing extra in tiles at P = 32."""
    target = Target.load("npu-p32")
    base = target.estimate(mnv2)
    site = next(s for s in get_pass("align-channels-up", 32).sites(mnv2)
                if s.detail["channels"] == 24)
    aligned = apply_pass(mnv2, get_pass("align-channels-up", 32), [site.id]).model
    after = target.estimate(aligned)
    assert after.latency_ms <= base.latency_ms * 1.01
    assert after.param_bytes > base.param_bytes


def test_budget_says_which_constraint_binds(mnv2):
    check = check_model_budget(mnv2, max_param_bytes=parse_bytes("20M"),
                               max_activation_bytes=parse_bytes("1M"))
    assert not check.fits
    assert check.binding.constraint == "activations"
    assert "exceed the budget 1.00 MiB" in check.binding.describe()
    assert check_model_budget(mnv2, parse_bytes("20M"), parse_bytes("64M")).fits


@pytest.mark.parametrize("text, value", [("512", 512), ("4K", 4096), ("1.5M", 1572864),
                                         ("2G", 2 * 2**30), ("3 MiB", 3 * 2**20)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1M", "4X"])
def test_parse_bytes_rejects(text):
    with pytest.raises(BadInputError):
        parse_bytes(text)


def test_cli_estimate_json(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    assert main(["zoo", "mobilenetv3", "--width", "0.5", "--resolution", "96", "-o",
                 str(path)]) == 0
    capsys.readouterr()
    assert main(["estimate", str(path), "--target", "npu-p16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("target", "latency_ms", "param_bytes", "peak_activation_bytes", "ops"):
        assert key in data
    assert {"name", "op_type", "latency_ms"} <= set(data["ops"][0])
    assert main(["estimate", str(path), "--target", str(tmp_path / "no.toml")]) == 2


def test_cli_cost_fit_measure_validate(tmp_path, capsys):
    csv = tmp_path / "ops.csv"
    assert main(["cost", "measure", "-n", "24", "--repeats", "3", "-o", str(csv)]) == 0
    more = tmp_path / "more.csv"
    more.write_text(csv.read_text())
    assert main(["cost", "measure", "--space", "layout", "-n", "4", "--repeats", "3",
                 "-o", str(more), "--append"]) == 0
    assert "after the 24 already there" in capsys.readouterr().out
    rows = read_csv(more)
    assert len(rows) == 28 and rows[:24] == read_csv(csv)
    more.write_text("kind,n\nconv,x\n")
    assert main(["cost", "measure", "-n", "2", "-o", str(more), "--append"]) == 2
    assert "more.csv" in capsys.readouterr().err
    est = tmp_path / "est.json"
    assert main(["cost", "fit", str(csv), "-o", str(est), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["rows"] == 24 and est.exists()
    assert main(["cost", "fit", str(csv), "-o", str(est), "--map-tile", "4x4"]) == 0
    assert json.loads(est.read_text())["hyperparameters"]["parallelism_ox"] == 4
    assert main(["cost", "fit", str(csv), "-o", str(est), "--map-tile", "4"]) == 2
    assert "--map-tile" in capsys.readouterr().err
    # an estimator fitted for another array is refused by a profile, one clear line
    mismatched = tmp_path / "tiled.toml"
    mismatched.write_text(Target.load("cpu-ort").profile.source.read_text()
                          .replace('measurements = "cpu-ort.csv"', f'measurements = "{est}"'))
    from rewriter.cost.profile import ProfileError

    with pytest.raises(ProfileError, match=r"fitted for .*'parallelism_ox': 4"):
        Target.load(mismatched)
    assert main(["cost", "fit", str(csv), "-o", str(est)]) == 0  # fitted for cpu-ort's array
    capsys.readouterr()
    # A profile of the user's own device: measurements from the fitted JSON.
    profile = tmp_path / "mycpu.toml"
    text = (Target.load("cpu-ort").profile.source.read_text()
            .replace('name = "cpu-ort"', 'name = "mycpu"')
            .replace('measurements = "cpu-ort.csv"', f'measurements = "{est}"'))
    profile.write_text(text)
    model = tmp_path / "m.onnx"
    main(["zoo", "mobilenetv2", "--width", "0.35", "--resolution", "64", "-o", str(model)])
    capsys.readouterr()
    assert main(["cost", "validate", "--target", str(profile), "--no-zoo", "--model",
                 f"{model},input=1x3x64x64", "--repeats", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "mycpu" and data["models"] == 1
    assert data["rows"][0]["measured_ms"] > 0 and data["rows"][0]["estimated_ms"] > 0
    assert main(["cost", "validate", "--target", "npu-p32"]) == 2


def test_layout_reorders_come_from_onnxruntime():
    """cpu-ort prices the NCHWc conversions onnxruntime inserts: an SE block's Mul runs in
    NCHW, so MobileNetV3 pays conversions that MobileNetV2 (Adds fused into convs) doesn't."""
    from rewriter.cost.layout import onnxruntime_layout

    v2 = load(zoo.build("mobilenetv2", width=0.5, resolution=96, fold_bn=True))
    v3 = load(zoo.build("mobilenetv3", width=0.5, resolution=96))
    r2, r3 = onnxruntime_layout(v2).reorders, onnxruntime_layout(v3).reorders
    assert len(r3) > 4 * max(len(r2), 1)
    assert all(v3.shapes[t][1] == spec.cin for t, spec in r3)
    estimate = Target.load("cpu-ort").estimate(v3)
    reorders = [o for o in estimate.ops if o.kind == "reorder"]
    assert len(reorders) == len(r3) and all(o.latency_ms > 0 for o in reorders)
    assert not any(o.kind == "reorder" for o in Target.load("npu-p32").estimate(v3).ops)


def test_blocked_layout_key_is_validated(tmp_path):
    from rewriter.cost.profile import ProfileError, load_profile

    assert load_profile("cpu-ort").blocked_layout is True
    bad = edited_profile(tmp_path, "cpu-ort", "blocked_layout = true", 'blocked_layout = "yes"')
    with pytest.raises(ProfileError, match="blocked_layout: expected true or false"):
        load_profile(bad)


def test_onnxruntime_says_which_resizes_it_leaves_unblocked():
    """LR-ASPP's head multiplies by an attention scale (an NCHW Mul) before its first
    upsampling, so onnxruntime runs that Resize in plain NCHW and the last one blocked;
    cpu-ort prices each in the layout it runs in, and conversions in both directions."""
    from dataclasses import replace

    from rewriter.cost.layout import onnxruntime_layout

    model = load(zoo.build("lraspp", width=0.35, resolution=96, fold_bn=True))
    layout = onnxruntime_layout(model)
    assert layout.unblocked == {"head.up"}
    assert {spec.layout for _, spec in layout.reorders} == {"", "nchw"}
    assert all(spec.kind == "reorder" for _, spec in layout.reorders)
    target = Target.load("cpu-ort")
    by_name = {o.name: o for o in target.estimate(model).ops}
    kernels = {k.name: k for k in decompose(model)}
    for name, layout_name in (("head.up", "nchw"), ("head.out_up", "")):
        spec = replace(kernels[name].spec, layout=layout_name)
        assert by_name[name].latency_ms == target.kernel(spec)[0]
    up = kernels["head.up"].spec
    assert target.kernel(replace(up, layout="nchw"))[0] > 1.5 * target.kernel(up)[0]


def _spelled_out_hardswish_model():
    """Conv -> x * Clip(x + 3, 0, 6) / 6 -> Conv, as PaddleOCR exports hard-swish."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)
             for name, shape in (("w1", (32, 16, 3, 3)), ("w2", (32, 32, 1, 1)))]
    inits += [numpy_helper.from_array(np.array(v, np.float32), name)
              for name, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "three"], ["a"], name="hs.add"),
        helper.make_node("Clip", ["a", "zero", "six"], ["k"], name="hs.clip"),
        helper.make_node("Mul", ["c", "k"], ["m"], name="hs.mul"),
        helper.make_node("Div", ["m", "six"], ["h"], name="hs.div"),
        helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 40, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 40, 40])], inits)
    return load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_activations_onnxruntime_does_not_fuse_are_priced_as_their_own_passes():
    from dataclasses import replace

    model = _spelled_out_hardswish_model()
    conv1 = next(k for k in decompose(model) if k.name == "conv1")
    assert conv1.spec.act == "hardswish" and len(conv1.nodes) == 5
    target = Target.load("cpu-ort")
    ops = {o.name: o for o in target.estimate(model).ops}
    separate = {n: ops[n].kind for n in ("hs.add", "hs.clip", "hs.mul", "hs.div")}
    assert separate == dict.fromkeys(separate, "elementwise")
    assert all(ops[n].latency_ms > 0 for n in separate)
    assert ops["conv1"].latency_ms == target.kernel(replace(conv1.spec, act=""))[0]
    # a target without a runtime layout keeps the activation in the conv
    npu = [o.name for o in Target.load("npu-p32").estimate(model).ops]
    assert "conv1" in npu and not set(separate) & set(npu)


def test_weights_stream_in_at_the_measured_rate(tmp_path):
    """A classifier Gemm whose weights fit in L2 alone runs at L2 speed in a one-op model
    but at the streaming rate in a model; cpu-ort floors every kernel at the latter."""
    from rewriter.cost.estimate import streaming_bandwidth
    from rewriter.cost.opspec import OpSpec
    from rewriter.cost.profile import ProfileError, load_profile

    profile = load_profile("cpu-ort")
    assert profile.stream_weights and profile.onchip_memory_bytes == 2 * 2**20
    target = Target.load("cpu-ort")
    rate = streaming_bandwidth(target._regressor.rows, profile.onchip_memory_bytes)
    assert 1e9 < rate < 1e12
    gemm = OpSpec("gemm", cin=360, cout=1000)  # 1.4 MB of weights
    assert target.kernel(gemm)[0] >= gemm.weight_bytes / rate * 1e3
    plain = edited_profile(tmp_path, "cpu-ort", "stream_weights = true", "")
    assert Target.load(plain).kernel(gemm)[0] < target.kernel(gemm)[0]
    small = [(s, ms) for s, ms in target._regressor.rows if s.weight_bytes < 2**20]
    with pytest.raises(ProfileError, match="stream_weights needs measured gemms"):
        streaming_bandwidth(small, profile.onchip_memory_bytes)
