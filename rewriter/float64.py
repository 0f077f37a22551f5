"""A float64 copy of a float32 ONNX model, and running it, for the verifier's float64 mode.

`to_float64(proto)` returns a copy in which every float32 tensor becomes float64: float
initializers, Constant / ConstantOfShape values (value_float(s) become a double `value`),
the element type of graph inputs and outputs, Cast / `dtype` attributes that name FLOAT;
value_info is dropped (onnxruntime and the reference evaluator infer it again). Subgraphs
(If, Loop, Scan) are converted the same way. Inputs that ONNX types as float32 whatever T
is (the `scales` of Resize and Upsample) get a Cast back to float32 in front of them.

`run_float64(proto64, feeds)` runs such a copy: in onnxruntime's CPU provider when it has a
double kernel for every op, else with `onnx.reference.ReferenceEvaluator` (onnxruntime has
no double Conv, so a CNN normally lands there; it is pure numpy, so keep inputs small). It
returns the outputs and which engine ran them, or raises `Float64Unavailable` when neither
can run the model (an op missing in both).
"""

from __future__ import annotations

from typing import Collection, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rewriter.errors import UnsupportedError

FLOAT, DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE

# (op, input index) typed tensor(float) in ONNX whatever the data type is.
_FLOAT32_ONLY_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (2,), "Upsample": (1,)}
# Attributes that name an output element type.
_TYPE_ATTRIBUTES = ("to", "dtype")


class Float64Unavailable(Exception):
    """Neither onnxruntime nor the reference evaluator can run the float64 copy."""


def to_float64(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float64 copy of `proto` (not modified); see the module docstring."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    _convert_graph(model.graph)
    return model


def _convert_tensor(tensor: TensorProto) -> None:
    if tensor.data_type == FLOAT:
        tensor.CopyFrom(numpy_helper.from_array(
            numpy_helper.to_array(tensor).astype(np.float64), tensor.name))


def _convert_value_infos(values: list[onnx.ValueInfoProto]) -> None:
    for value in values:
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor_type.elem_type == FLOAT:
            tensor_type.elem_type = DOUBLE


def _convert_graph(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _convert_tensor(tensor)
    for sparse in graph.sparse_initializer:
        _convert_tensor(sparse.values)
    _convert_value_infos(list(graph.input))
    _convert_value_infos(list(graph.output))
    del graph.value_info[:]
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        _convert_node(node)
        for index in _FLOAT32_ONLY_INPUTS.get(node.op_type, ()) if not node.domain else ():
            if index < len(node.input) and node.input[index]:
                cast_out = f"{node.input[index]}__float32_for_{node.name or node.op_type}"
                nodes.append(helper.make_node("Cast", [node.input[index]], [cast_out],
                                              name=f"{cast_out}.cast", to=FLOAT))
                node.input[index] = cast_out
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _convert_node(node: onnx.NodeProto) -> None:
    attributes: list[onnx.AttributeProto] = []
    for attr in node.attribute:
        if node.op_type == "Constant" and attr.name == "value_float":
            attr = helper.make_attribute("value", numpy_helper.from_array(
                np.asarray(attr.f, dtype=np.float64)))
        elif node.op_type == "Constant" and attr.name == "value_floats":
            attr = helper.make_attribute("value", numpy_helper.from_array(
                np.asarray(list(attr.floats), dtype=np.float64)))
        elif attr.type == onnx.AttributeProto.TENSOR:
            _convert_tensor(attr.t)
        elif attr.type == onnx.AttributeProto.TENSORS:
            for tensor in attr.tensors:
                _convert_tensor(tensor)
        elif attr.type == onnx.AttributeProto.GRAPH:
            _convert_graph(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for sub in attr.graphs:
                _convert_graph(sub)
        elif (attr.type == onnx.AttributeProto.INT and attr.name in _TYPE_ATTRIBUTES
              and attr.i == FLOAT and not node.domain):
            attr.i = DOUBLE
        attributes.append(attr)
    del node.attribute[:]
    node.attribute.extend(attributes)


# Ops whose float initializers are parameters (weights, biases, statistics) that a rewrite
# may recompute and round to float32 again; scales, shapes and clip bounds are left alone.
_PARAMETER_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
    "LayerNormalization", "Add", "Sub", "Mul", "Div", "PRelu"})


def perturb_parameters(proto64: onnx.ModelProto, relative: float, seed: int = 0,
                       keep: Collection[str] = ()) -> onnx.ModelProto:
    """A copy of a float64 model with every parameter initializer (one consumed only by
    the ops in `_PARAMETER_OPS`) not named in `keep` multiplied elementwise by
    1 + u * `relative`, u uniform in [-1, 1]: the model with those parameters rounded once
    more, at random."""
    rng = np.random.default_rng(seed)
    consumers: dict[str, set[str]] = {}
    for node in proto64.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    model = onnx.ModelProto()
    model.CopyFrom(proto64)
    for tensor in model.graph.initializer:
        ops = consumers.get(tensor.name)
        if (tensor.data_type != DOUBLE or tensor.name in keep or not ops
                or not ops <= _PARAMETER_OPS):
            continue
        values = numpy_helper.to_array(tensor)
        noise = 1.0 + relative * rng.uniform(-1.0, 1.0, values.shape)
        tensor.CopyFrom(numpy_helper.from_array(values * noise, tensor.name))
    return model


def unchanged_parameters(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> set[str]:
    """Names of the float initializers of `rewritten` that hold, bit for bit, a float
    initializer of `original` (whatever its name): those a rewrite did not recompute."""
    def key(tensor: TensorProto) -> tuple[tuple[int, ...], bytes]:
        values = numpy_helper.to_array(tensor)
        return values.shape, np.ascontiguousarray(values).tobytes()

    known = {key(t) for t in original.graph.initializer if t.data_type == FLOAT}
    return {t.name for t in rewritten.graph.initializer
            if t.data_type == FLOAT and key(t) in known}


def run_float64(proto64: onnx.ModelProto, feeds: Mapping[str, np.ndarray]
                ) -> tuple[dict[str, np.ndarray], str]:
    """Run a `to_float64` copy on `feeds` (cast to float64); returns (outputs, engine),
    engine being "onnxruntime" or "reference"."""
    from rewriter.runtime import run_model

    feeds64 = {k: np.asarray(v, dtype=np.float64) for k, v in feeds.items()}
    names = [o.name for o in proto64.graph.output]
    try:
        return run_model(proto64, feeds64), "onnxruntime"
    except UnsupportedError as ort_error:
        why_not = str(ort_error)
    try:
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(proto64, new_ops=_reference_fixes()).run(names, feeds64)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Float64Unavailable(f"{why_not}; the reference evaluator: {first}") from None
    return {n: np.asarray(v, dtype=np.float64) for n, v in zip(names, values)}, "reference"


def _reference_fixes() -> list[type]:
    """Ops the reference evaluator gets wrong for inference, replaced.

    BatchNormalization opset 9..13: onnx's reference fills in the default momentum and then
    normalises with the batch's own statistics (training behaviour); inference, as
    onnxruntime runs it, uses the running mean and variance.
    """
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None,  # noqa: ARG002
                 training_mode=None, is_test=None, spatial=None):  # noqa: ARG002
            if training_mode:
                raise NotImplementedError("BatchNormalization with training_mode=1")
            shape = (-1,) + (1,) * (x.ndim - 2)
            eps = 1e-5 if epsilon is None else epsilon
            y = (scale.reshape(shape) * (x - mean.reshape(shape))
                 / np.sqrt(var.reshape(shape) + eps) + bias.reshape(shape))
            return (y.astype(x.dtype),)

    return [BatchNormalization]
