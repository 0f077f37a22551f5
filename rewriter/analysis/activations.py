"""Recognise activation functions however an exporter spelled them.

An activation applied to tensor t is a connected region of elementwise ops whose only
non-constant input is t (constants must be scalars), that reads every use of t and has
exactly one tensor leaving it. This one rule covers Relu, Clip(0, 6) (ReLU6), HardSwish
as an op, as x * HardSigmoid(x), and as paddle2onnx writes it (x * Clip(x + 3, 0, 6) / 6),
and SiLU as x * Sigmoid(x).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.graph_query import const_value, is_empty_input

UNARY = {
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Elu",
    "Selu", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Abs", "Neg", "Exp", "Sqrt",
}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}


@dataclass(frozen=True)
class Activation:
    name: str  # relu, relu6, hardswish, silu, sigmoid, ... or the ops joined by '+'
    nodes: tuple[gs.Node, ...]
    output: gs.Tensor


def _scalar_const(tensor: gs.Tensor) -> bool:
    value = const_value(tensor)
    return value is not None and value.size == 1


def match_activation(tensor: gs.Tensor, graph_outputs: list[gs.Tensor]) -> Activation | None:
    if any(t is tensor for t in graph_outputs) or not tensor.outputs:
        return None
    region_tensors = {id(tensor)}
    region: list[gs.Node] = []
    frontier = [tensor]
    while frontier:
        current = frontier.pop()
        for node in current.outputs:
            if node in region or node.op not in UNARY | BINARY:
                continue
            inputs_ok = all(
                id(t) in region_tensors or _scalar_const(t) or is_empty_input(t)
                for t in node.inputs
            )
            if not inputs_ok:
                continue
            region.append(node)
            for out in node.outputs:
                region_tensors.add(id(out))
                frontier.append(out)
    if not region:
        return None
    region_ids = {id(n) for n in region}
    if any(id(n) not in region_ids for n in tensor.outputs):
        return None
    exits = []
    for node in region:
        for out in node.outputs:
            leaves = any(id(c) not in region_ids for c in out.outputs) or any(
                t is out for t in graph_outputs
            )
            if leaves:
                exits.append(out)
    if len(exits) != 1:
        return None
    # Keep the execution order of the graph for the node list.
    return Activation(name=_classify(region), nodes=tuple(region), output=exits[0])


def _classify(nodes: list[gs.Node]) -> str:
    ops = Counter(n.op for n in nodes)
    if len(nodes) == 1:
        node = nodes[0]
        if node.op == "Clip":
            low, high = _clip_bounds(node)
            if low == 0.0 and high == 6.0:
                return "relu6"
            if low == 0.0 and high is None:
                return "relu"
            return "clip"
        return node.op.lower()
    affine = {"Add", "Sub", "Mul", "Div"}
    if set(ops) <= affine:
        return "affine"  # scalar scale and shift, as learnable-affine blocks export
    core = ""
    if ops["Sigmoid"] == 1 and ops["Mul"] >= 1:
        core, used = "silu", Counter({"Sigmoid": 1, "Mul": 1})
    elif ops["HardSigmoid"] == 1 and ops["Mul"] >= 1:
        core, used = "hardswish", Counter({"HardSigmoid": 1, "Mul": 1})
    elif ops["Clip"] == 1 and ops["Add"] >= 1 and ops["Mul"] >= 1 and ops["Div"] + ops["Mul"] >= 2:
        core, used = "hardswish", Counter({"Clip": 1, "Add": 1, "Mul": 1})
        used["Div" if ops["Div"] else "Mul"] += 1
    if core:
        rest = ops - used
        return core if not rest else (core + "+affine" if set(rest) <= affine else
                                      core + "+" + "+".join(sorted(o.lower() for o in rest)))
    return "+".join(sorted(n.op.lower() for n in nodes))


def _clip_bounds(node: gs.Node) -> tuple[float | None, float | None]:
    if len(node.inputs) > 1:
        bounds = []
        for index in (1, 2):
            value = const_value(node.inputs[index]) if index < len(node.inputs) else None
            bounds.append(float(np.asarray(value).reshape(-1)[0]) if value is not None else None)
        return bounds[0], bounds[1]
    low = node.attrs.get("min")
    high = node.attrs.get("max")
    return (float(low) if low is not None else None, float(high) if high is not None else None)
