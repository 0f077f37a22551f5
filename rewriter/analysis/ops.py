"""Per-op table: output shape, MACs and parameters of every node.

MACs follow the usual convention (one multiply-accumulate per weight use):
Conv: N * Cout * Hout * Wout * (Cin / groups) * Kh * Kw; ConvTranspose: N * Cin * Hin * Win
* (Cout / groups) * Kh * Kw; Gemm/MatMul: rows * inner * columns. Other ops do no MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.graph_io import Model

# Inputs of these ops that hold learned parameters (by input index).
_PARAM_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2, 3, 4),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "PRelu": (1,),
}


@dataclass(frozen=True)
class OpRow:
    name: str
    op_type: str
    output_shape: tuple[int, ...]
    macs: int
    params: int


def parameter_tensors(model: Model) -> list[gs.Constant]:
    """Float constants that are learned parameters, each counted once.

    Weights of parametric ops, plus per-channel float constants elsewhere (a scale in a Mul,
    say). Scalars feeding elementwise ops (the 3 and 6 of a spelled-out HardSwish) and
    integer constants (shapes, axes) are not parameters.
    """
    found: dict[str, gs.Constant] = {}
    for node in model.graph.nodes:
        for tensor in _node_parameters(node):
            found[tensor.name] = tensor
    return list(found.values())


def _node_parameters(node: gs.Node) -> list[gs.Constant]:
    wanted = _PARAM_INPUTS.get(node.op, ())
    found = []
    for index, tensor in enumerate(node.inputs):
        if not isinstance(tensor, gs.Constant):
            continue
        values = np.asarray(tensor.values)
        if np.issubdtype(values.dtype, np.floating) and (index in wanted or values.size > 1):
            found.append(tensor)
    return found


def node_params(node: gs.Node) -> int:
    return sum(int(np.asarray(t.values).size) for t in _node_parameters(node))


def node_macs(model: Model, node: gs.Node) -> int:
    shapes = model.shapes
    out = node.outputs[0] if node.outputs else None
    out_shape = shapes.get(out.name) if out is not None else None
    if out_shape is None:
        return 0
    if node.op in ("Conv", "ConvTranspose") and len(node.inputs) > 1:
        weight_shape = model.shape(node.inputs[1])
        kernel = prod(weight_shape[2:])
        if node.op == "Conv":
            return int(prod(out_shape) * weight_shape[1] * kernel)
        in_shape = model.shape(node.inputs[0])
        return int(prod(in_shape) * weight_shape[1] * kernel)
    if node.op in ("Gemm", "MatMul"):
        a_shape = model.shape(node.inputs[0])
        transposed = node.op == "Gemm" and node.attrs.get("transA", 0)
        inner = a_shape[0] if transposed else a_shape[-1]
        return int(prod(out_shape) * inner)
    return 0


def op_table(model: Model) -> list[OpRow]:
    rows = []
    for node in model.graph.nodes:
        out = node.outputs[0] if node.outputs else None
        shape = model.shapes.get(out.name, ()) if out is not None else ()
        rows.append(
            OpRow(
                name=node.name,
                op_type=node.op,
                output_shape=tuple(shape),
                macs=node_macs(model, node),
                params=node_params(node),
            )
        )
    return rows
