"""Parameter bytes and peak activation bytes.

Peak activation memory is computed from tensor liveness over the graph's execution order
(its topological order): a tensor is allocated when its producer runs (graph inputs from
the start) and freed after its last consumer has run (graph outputs never). The peak is
the largest total of live activation bytes at any step, counting the step's inputs and
outputs together, as a runtime without in-place reuse would need.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.analysis.ops import parameter_tensors
from rewriter.graph_io import Model


@dataclass(frozen=True)
class MemoryStats:
    params: int
    param_bytes: int
    peak_activation_bytes: int
    peak_step: str  # the node running when the peak is reached


def _dtype_bytes(tensor: gs.Tensor) -> int:
    dtype = getattr(tensor, "dtype", None)
    try:
        return int(np.dtype(dtype).itemsize) if dtype is not None else 4
    except TypeError:
        return 4


def peak_activation(model: Model) -> tuple[int, str]:
    shapes = model.shapes
    nodes = model.graph.nodes
    last_use: dict[str, int] = {}
    for step, node in enumerate(nodes):
        for tensor in node.inputs:
            if isinstance(tensor, gs.Variable) and tensor.name:
                last_use[tensor.name] = step
    for tensor in model.graph.outputs:
        last_use[tensor.name] = len(nodes)

    def size(tensor: gs.Tensor) -> int:
        return prod(shapes.get(tensor.name, (0,))) * _dtype_bytes(tensor)

    live: dict[str, int] = {t.name: size(t) for t in model.graph.inputs}
    peak, peak_step = sum(live.values()), nodes[0].name if nodes else ""
    for step, node in enumerate(nodes):
        for tensor in node.outputs:
            live[tensor.name] = size(tensor)
        current = sum(live.values())
        if current > peak:
            peak, peak_step = current, node.name
        for name in [n for n in live if last_use.get(n, -1) <= step]:
            del live[name]
    return int(peak), peak_step


def memory_stats(model: Model) -> MemoryStats:
    tensors = parameter_tensors(model)
    params = sum(int(np.asarray(t.values).size) for t in tensors)
    param_bytes = sum(int(np.asarray(t.values).nbytes) for t in tensors)
    peak, step = peak_activation(model)
    return MemoryStats(params=params, param_bytes=param_bytes, peak_activation_bytes=peak,
                       peak_step=step)
