"""Loading what exporters write, saving atomically, and refusing bad files in one line."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewriter.errors import BadInputError, UnsupportedError
from rewriter.graph_io import load_model, model_from_proto, parse_input_shapes, save_model
from rewriter.runtime import run_model


def torch_style_model(opset: int = 11, batch: str | int = "batch",
                      spatial=(8, 8)) -> onnx.ModelProto:
    """Conv(weights as Constant nodes) -> Clip(0, 6 as inputs) -> Sigmoid*Mul, as torch exports."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w")),
        *(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
          for name, value in (("lo", np.float32(0)), ("hi", np.float32(6)))),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["s"]),
        helper.make_node("Mul", ["r", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "torch_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, *spatial])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_constant_nodes_become_weights_and_batch_stays_symbolic(tmp_path, opset):
    path = tmp_path / "m.onnx"
    onnx.save(torch_style_model(opset), path)
    model = load_model(path)
    assert "Constant" not in {n.op for n in model.graph.nodes}
    assert model.input_shapes == {"x": (1, 3, 8, 8)}
    assert model.shapes["c"] == (1, 4, 8, 8)
    assert all(n.name for n in model.graph.nodes)
    out = save_model(model, tmp_path / "out.onnx")
    written = onnx.load(out)
    assert written.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(written, {"x": x})["y"],
                               run_model(onnx.load(path), {"x": x})["y"], rtol=1e-6, atol=1e-6)


def test_external_data_loads(tmp_path):
    proto = torch_style_model()
    model = model_from_proto(proto)
    exported = model.to_onnx()
    onnx.save(exported, tmp_path / "ext.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    loaded = load_model(tmp_path / "ext.onnx")
    weights = [t for t in loaded.graph.tensors().values() if getattr(t, "values", None) is not None]
    assert any(np.asarray(t.values).shape == (4, 3, 3, 3) for t in weights)


def test_dynamic_spatial_dims_need_input_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(torch_style_model(spatial=("h", "w")), path)
    model = load_model(path)
    with pytest.raises(UnsupportedError, match="--input-shape x=1x3xHxW"):
        _ = model.shapes
    fixed = load_model(path, {"x": (1, 3, 16, 12)})
    assert fixed.shapes["y"] == (1, 4, 16, 12)
    written = fixed.to_onnx()
    dims = written.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[2:]] == [16, 12]


@pytest.mark.parametrize("spec, message", [
    (["x=1x3"], "rank 2"),
    (["y=1x3x8x8"], "names no input 'y'"),
    (["x=1x4x8x8"], "axis 1 is fixed to 3"),
])
def test_bad_input_shapes(tmp_path, spec, message):
    path = tmp_path / "m.onnx"
    onnx.save(torch_style_model(), path)
    with pytest.raises(BadInputError, match=message):
        load_model(path, parse_input_shapes(spec))


@pytest.mark.parametrize("spec", ["x", "x=", "x=1xAx3", "=1x3", "x=0x3x8x8"])
def test_unparsable_input_shape(spec):
    with pytest.raises(BadInputError, match="--input-shape"):
        parse_input_shapes([spec])


def test_bad_files(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    good = tmp_path / "m.onnx"
    onnx.save(torch_style_model(), good)
    data = good.read_bytes()
    for name, content in [("trunc.onnx", data[: len(data) // 2]), ("text.onnx", b"hello\n"),
                          ("empty.onnx", b"")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(BadInputError):
            load_model(path)
    with pytest.raises(BadInputError, match="directory"):
        load_model(tmp_path)


def test_unsupported_op_domain_and_dtype():
    proto = torch_style_model()
    proto.graph.node[-1].domain = "com.example"
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedError, match="com.example"):
        model_from_proto(proto)
    proto = torch_style_model()
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    with pytest.raises(BadInputError):
        model_from_proto(proto)


def test_save_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    model = model_from_proto(torch_style_model())
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous content")
    broken = model.to_onnx()
    broken.graph.node[0].input[0] = "does_not_exist"
    with pytest.raises(BadInputError, match="onnx.checker"):
        save_model(broken, target)
    assert target.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["out.onnx"]
    save_model(model, target)
    onnx.checker.check_model(onnx.load(target), full_check=True)
    assert os.listdir(tmp_path) == ["out.onnx"]
