"""Measurement harness: one-op models, sampling, timing a few tiny ops, CSV in and out."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import shape_inference

from rewriter.cost.measure import measure_specs
from rewriter.cost.measurements import COLUMNS, Measurement, MeasurementError, read_csv, write_csv
from rewriter.cost.one_op import one_op_model
from rewriter.cost.opspec import KINDS, OpSpec
from rewriter.cost.sampling import MAX_MACS, sample_specs

conv = OpSpec.conv2d


def _out_shape(model: onnx.ModelProto) -> list[int]:
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    return [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]


def test_sample_specs_space():
    specs = sample_specs(300, seed=3)
    assert specs == sample_specs(300, seed=3)
    assert specs != sample_specs(300, seed=4)
    # every kind but the layout conversion, which only the "layout" space draws
    assert set(Counter(s.kind for s in specs)) == set(KINDS) - {"reorder"}
    channels = [s.cin for s in specs if s.kind in ("conv", "conv1x1")]
    assert any(c % 32 == 0 for c in channels) and any(c % 32 for c in channels)
    assert min(channels) >= 8 and max(channels) <= 512
    assert {s.stride for s in specs} == {1, 2}
    assert {s.kh for s in specs if s.kind == "conv"} == {3, 5}
    assert any(s.act for s in specs) and any(not s.act for s in specs)
    assert all(s.macs <= MAX_MACS for s in specs)
    assert any(s.kind == "dwconv" and s.cout == 2 * s.cin for s in specs)


def test_one_op_models_are_valid_and_shaped():
    specs = sample_specs(60, seed=5) + [
        conv(16, 96, 15, 3, stride=2, act="hardswish"), conv(8, 8, 9, 5, groups=8, act="silu"),
        OpSpec("gemm", cin=64, cout=10, act="sigmoid"),
        OpSpec("elementwise", cin=8, cout=8, h_in=5, w_in=5, h_out=5, w_out=5, act="relu6"),
    ]
    for spec in specs:
        model = one_op_model(spec)
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == 13
        expected = [spec.n, spec.cout] + ([] if spec.kind == "gemm" else [spec.h_out, spec.w_out])
        assert _out_shape(model) == expected, spec
    ops = [n.op_type for n in one_op_model(conv(16, 32, 8, 3, act="relu6")).graph.node]
    assert ops == ["Conv", "Clip"]


def test_one_op_model_computes_the_op():
    spec = conv(4, 6, 7, 3, stride=2, act="relu")
    model = one_op_model(spec)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 4, 7, 7)).astype(np.float32)
    (y,) = session.run(None, {"x0": x})
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    b = onnx.numpy_helper.to_array(model.graph.initializer[1])
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((1, 6, 4, 4))
    for i in range(4):
        for j in range(4):
            patch = xp[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            ref[0, :, i, j] = np.einsum("chw,ochw->o", patch, w) + b
    np.testing.assert_allclose(y, np.maximum(ref, 0), rtol=1e-4, atol=1e-5)


def test_an_anisotropic_stride_is_built_from_the_sizes():
    # PP-OCR rec's (2, 1)-strided 3x3 conv, 24x160 -> 12x160; the spec keeps stride 2
    spec = OpSpec("conv", cin=8, cout=8, h_in=24, w_in=160, h_out=12, w_out=160, kh=3, kw=3,
                  stride=2)
    model = one_op_model(spec)
    assert _out_shape(model) == [1, 8, 12, 160]
    (node,) = [n for n in model.graph.node if n.op_type == "Conv"]
    assert [list(a.ints) for a in node.attribute if a.name == "strides"] == [[2, 1]]


def test_unbuildable_specs():
    with pytest.raises(MeasurementError, match="activation 'gelu'"):
        one_op_model(conv(8, 8, 8, 3, act="gelu"))
    with pytest.raises(MeasurementError, match="no padding"):
        one_op_model(OpSpec("conv", cin=8, cout=8, h_in=8, w_in=8, h_out=2, w_out=2, kh=3,
                            kw=3, stride=2))


def test_measure_tiny_ops_and_csv_round_trip(tmp_path: Path):
    specs = [
        conv(8, 16, 8, 3, act="relu"), conv(8, 8, 8, 3, groups=8), OpSpec("gemm", cin=32, cout=8),
        OpSpec("gap", cin=8, cout=8, h_in=8, w_in=8),
        OpSpec("elementwise", cin=8, cout=8, h_in=8, w_in=8, h_out=8, w_out=8, n_inputs=2),
    ]
    rows = measure_specs(specs, repeats=3, warmup=1, threads=1, progress=False)
    assert [r.spec for r in rows] == specs
    assert all(0 < r.latency_ms < 1000 for r in rows)
    assert all(r.threads == 1 and r.repeats == 3 and r.device for r in rows)
    path = tmp_path / "m.csv"
    write_csv(path, rows)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    back = read_csv(path)
    assert [r.spec for r in back] == specs
    assert [r.latency_ms for r in back] == pytest.approx([r.latency_ms for r in rows], rel=1e-5)
    assert back[0].device == rows[0].device and back[0].threads == 1


def test_foreign_csv_minimal_columns_any_order(tmp_path: Path):
    path = tmp_path / "npu.csv"
    path.write_text(
        "latency_ms,vendor_note,kind,n,cin,cout,h_in,w_in,h_out,w_out,kh,kw,stride,groups\n"
        "0.25,fast,conv,1,16,32,56,56,56,56,3,3,1,1\n"
        "0.5,,dwconv,1,32,32,56,56,28,28,3,3,2,32\n")
    rows = read_csv(path)
    assert rows[0] == Measurement(conv(16, 32, 56, 3), 0.25)
    assert rows[1].spec.kind == "dwconv" and rows[1].spec.act == "" and rows[1].threads == 0


HEADER = "kind,n,cin,cout,h_in,w_in,h_out,w_out,kh,kw,stride,groups,latency_ms\n"
GOOD = "conv,1,16,32,56,56,56,56,3,3,1,1,0.25\n"
MALFORMED = [
    ("kind,n,cin\n", "row 1: missing column 'cout'"),
    (HEADER + GOOD + "conv,1,sixteen,32,56,56,56,56,3,3,1,1,0.25\n",
     "row 3: column 'cin': expected an integer"),
    (HEADER + GOOD + "conv,1,16,32,56,56,56,56,3,3,1,1,-1\n", "row 3: column 'latency_ms'"),
    (HEADER + GOOD + "conv,1,16,32,56,56,56,56,3,3,1,1,nan\n", "row 3: column 'latency_ms'"),
    (HEADER + "lstm,1,16,32,56,56,56,56,3,3,1,1,0.25\n", "row 2: column 'kind'"),
    (HEADER + "groupconv,1,16,30,56,56,56,56,3,3,1,4,0.25\n", "row 2: .*groups"),
    (HEADER + "conv,1,16,32,56,56,56,56,3,3,1,1,0.25,extra\n", "row 2: more fields"),
    (HEADER + "conv,1,16\n", "row 2: column 'cout'"),
    (HEADER, "no measurements"),
    ("", "missing column 'kind'"),
]


@pytest.mark.parametrize("text,message", MALFORMED)
def test_malformed_csv(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(MeasurementError, match=message) as info:
        read_csv(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_csv(tmp_path: Path):
    with pytest.raises(MeasurementError, match="cannot read"):
        read_csv(tmp_path / "absent.csv")


def test_wide_sample_space_reaches_the_thin_corners():
    specs = sample_specs(300, seed=7, parallelism=8, space="wide")
    assert specs == sample_specs(300, seed=7, parallelism=8, space="wide")
    assert {s.kind for s in specs} <= {"conv", "conv1x1", "dwconv", "groupconv", "gemm"}
    convs = [s for s in specs if s.kind != "gemm"]
    assert any(s.h_in == 1 for s in convs)  # squeeze-excite convs on a 1x1 map
    assert any(s.cin > 576 and s.h_in <= 7 for s in convs)
    assert any(s.cin <= 24 and s.kind == "conv1x1" and s.h_in >= 24 for s in convs)
    assert all(s.macs <= MAX_MACS for s in specs)
    with pytest.raises(ValueError, match="sample space"):
        sample_specs(10, seed=1, space="huge")


def test_oblong_sample_space_has_batched_gemms_and_non_square_maps():
    specs = sample_specs(200, seed=7, parallelism=8, space="oblong")
    assert specs == sample_specs(200, seed=7, parallelism=8, space="oblong")
    gemms = [s for s in specs if s.kind == "gemm"]
    convs = [s for s in specs if s.kind != "gemm"]
    assert gemms and all(2 <= s.n <= 512 for s in gemms)
    assert convs and all(s.h_in != s.w_in and s.n == 1 for s in convs)
    assert all(s.w_out == -(-s.w_in // s.stride) and s.h_out == -(-s.h_in // s.stride)
               for s in convs)
    assert all(s.macs <= MAX_MACS for s in specs)
    for spec in specs[:12]:  # every shape builds as a one-op model
        assert one_op_model(spec).graph.node


@pytest.mark.parametrize("taps, mode", [(1, "nearest"), (2, "linear"), (4, "cubic")])
def test_resize_taps_pick_the_mode_and_upsampling_reads_a_blocked_tensor(taps, mode):
    """An upsampling Resize is built behind a 1x1 helper conv (so onnxruntime runs it in the
    blocked layout it has inside a CNN); time_model leaves the helper out."""
    from rewriter.cost.one_op import LAYOUT_HELPER
    from rewriter.cost.opspec import vector_ops

    up = OpSpec("resize", cin=24, cout=24, h_in=7, w_in=9, h_out=14, w_out=18, kh=taps, kw=taps)
    model = one_op_model(up)
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    assert onnx.helper.get_attribute_value(
        next(a for a in resize.attribute if a.name == "mode")).decode() == mode
    helpers = [n for n in model.graph.node if n.name.startswith(LAYOUT_HELPER)]
    assert [n.op_type for n in helpers] == ["Conv"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim],
                np.float32)
    assert session.run(None, {"x0": x})[0].shape == (1, 24, 14, 18)
    assert vector_ops(up) == 14 * 18 * 24 * taps * taps
    down = OpSpec("resize", cin=24, cout=24, h_in=14, w_in=14, h_out=7, w_out=7)
    assert not [n for n in one_op_model(down).graph.node if n.name.startswith(LAYOUT_HELPER)]
    with pytest.raises(MeasurementError, match="taps"):
        one_op_model(OpSpec("resize", cin=8, cout=8, h_in=4, w_in=4, h_out=8, w_out=8, kh=3,
                            kw=3))


def test_stem_sample_space_draws_first_convs():
    specs = sample_specs(120, seed=7, parallelism=8, space="stem")
    assert specs == sample_specs(120, seed=7, parallelism=8, space="stem")
    assert {s.kind for s in specs} == {"conv"} and {s.cin for s in specs} == {1, 3, 4}
    assert all(8 <= s.cout <= 64 and s.h_in >= 32 for s in specs)
    assert any(s.h_in != s.w_in for s in specs) and any(s.stride == 1 for s in specs)
    assert {s.kh for s in specs} == {3, 5, 7}
    assert all(s.macs <= MAX_MACS for s in specs)
    for spec in specs[:6]:
        model = one_op_model(spec)
        assert _out_shape(model) == [1, spec.cout, spec.h_out, spec.w_out], spec


def test_layout_sample_space_draws_conversions_and_upsampling():
    specs = sample_specs(200, seed=7, parallelism=8, space="layout")
    assert {s.kind for s in specs} == {"reorder", "resize"}
    reorders = [s for s in specs if s.kind == "reorder"]
    assert {s.layout for s in reorders} == {"", "nchw"}
    into = [s for s in reorders if s.layout == ""]
    assert all(s.cin % 8 == 0 and s.cin >= 16 for s in into)  # what onnxruntime blocks
    resizes = [s for s in specs if s.kind == "resize"]
    assert {s.h_out // s.h_in for s in resizes} == {2, 4, 8}
    assert {s.layout for s in resizes} == {"", "nchw"} and {s.kh for s in resizes} == {1, 2}


def test_head_sample_space_draws_class_maps_upsampled_to_the_image():
    specs = sample_specs(200, seed=7, parallelism=8, space="head")
    assert {s.kind for s in specs} == {"reorder", "resize"}
    assert all(1 <= s.cin == s.cout <= 64 for s in specs)
    assert min(s.cin for s in specs) < 8  # below where the layout space starts
    assert all(s.h_out == s.w_out and s.h_out % 16 == 0 and 48 <= s.h_out <= 512
               for s in specs)
    assert {s.layout for s in specs if s.kind == "reorder"} == {"nchw"}
    resizes = [s for s in specs if s.kind == "resize"]
    assert {s.h_out // s.h_in for s in resizes} == {2, 4, 8, 16}
    assert all(s.h_out == s.h_in * (s.h_out // s.h_in) for s in resizes)
    assert {s.layout for s in resizes} == {"", "nchw"} and {s.kh for s in resizes} == {1, 2}
    for spec in specs[:6]:
        assert _out_shape(one_op_model(spec))[1:] == [spec.cout, spec.h_out, spec.w_out]


def test_reorders_and_unblocked_resizes_are_timed_as_onnxruntime_runs_them():
    """A conversion is timed on the Reorder node onnxruntime inserts around a helper conv;
    a resize with layout "nchw" is built without the helper, so it runs unblocked."""
    from rewriter.cost.measure import reorder_op, time_model
    from rewriter.cost.one_op import LAYOUT_HELPER

    out = OpSpec("reorder", cin=24, cout=24, h_in=20, w_in=20, h_out=20, w_out=20,
                 layout="nchw")
    into = OpSpec("reorder", cin=32, cout=32, h_in=20, w_in=20, h_out=20, w_out=20)
    assert (reorder_op(out), reorder_op(into), reorder_op(conv(8, 8, 4))) == (
        "ReorderOutput", "ReorderInput", None)
    for spec in (out, into):
        model = one_op_model(spec)
        assert [n.name for n in model.graph.node] == [f"{LAYOUT_HELPER}_conv"]
        assert time_model(model, repeats=3, only=reorder_op(spec)) > 0
    # 21 channels are not blocked on the way in: no conversion to time, one clear error
    odd = OpSpec("reorder", cin=21, cout=21, h_in=8, w_in=8, h_out=8, w_out=8)
    with pytest.raises(MeasurementError, match="no ReorderInput"):
        measure_specs([odd], repeats=2, progress=False, floor_ms=0.0)
    with pytest.raises(MeasurementError, match="keep their shape"):
        one_op_model(OpSpec("reorder", cin=8, cout=16, h_in=4, w_in=4, h_out=4, w_out=4))
    up = OpSpec("resize", cin=24, cout=24, h_in=7, w_in=7, h_out=28, w_out=28, kh=2, kw=2)
    plain = one_op_model(replace(up, layout="nchw"))
    assert [n.op_type for n in plain.graph.node] == ["Resize"]
    assert [n.op_type for n in one_op_model(up).graph.node] == ["Conv", "Resize"]


def test_csv_layout_column_round_trips_and_defaults(tmp_path: Path):
    spec = OpSpec("reorder", cin=16, cout=16, h_in=4, w_in=4, h_out=4, w_out=4, layout="nchw")
    path = tmp_path / "m.csv"
    write_csv(path, [Measurement(spec, 0.01)])
    assert "layout" in path.read_text().splitlines()[0].split(",")
    assert read_csv(path)[0].spec == spec
    path.write_text(path.read_text().replace(",nchw,", ",blocked,"))
    with pytest.raises(MeasurementError, match="layout"):
        read_csv(path)


def test_the_profiler_floor_is_the_quietest_round(monkeypatch):
    """A burst of load during one round must not raise the floor that every op of the
    sitting has removed: the lowest round is kept."""
    import rewriter.cost.measure as measure

    rounds = iter([0.005, 0.003, 0.004, 0.006, 0.005])
    calls = []

    def timed(model, *, repeats, threads, **_):
        calls.append(repeats)
        return next(rounds)

    monkeypatch.setattr(measure, "time_model", timed)
    assert measure.profiler_floor_ms(repeats=300) == 0.003
    assert calls == [300 // measure.FLOOR_ROUNDS] * measure.FLOOR_ROUNDS
