"""Parameter bytes and peak activation bytes.

Peak activation memory is computed from tensor liveness over the graph's execution order
(its topological order): a tensor is allocated when its producer runs (graph inputs from
the start) and freed after its last consumer has run (graph outputs never). The peak is
the largest total of live activation bytes at any step, counting the step's inputs and
outputs together, as a runtime without in-place reuse would need.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
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


NodeIO = tuple[tuple[str, ...], tuple[str, ...]]  # (activation inputs, outputs) of a node


def node_io(model: Model) -> list[NodeIO]:
    return [(tuple(t.name for t in n.inputs if isinstance(t, gs.Variable) and t.name),
             tuple(t.name for t in n.outputs)) for n in model.graph.nodes]


def last_uses(steps: list[NodeIO], outputs: Iterable[str]) -> dict[str, int]:
    """The step after which each tensor is dead (graph outputs: never)."""
    last: dict[str, int] = {}
    for step, (reads, _) in enumerate(steps):
        for name in reads:
            last[name] = step
    for name in outputs:
        last[name] = len(steps)
    return last


def liveness_peak(steps: list[NodeIO], inputs: Iterable[str], size: Callable[[str], int],
                  last: Mapping[str, int], skipped: Container[int] = (),
                  extra_reads: Mapping[int, str] | None = None) -> tuple[int, int]:
    """(peak live bytes, step reaching it; 0 when the graph inputs alone are the peak).

    `skipped` steps do not run; `extra_reads[step]` is one more tensor that step reads
    (the search uses both to score a fusion without rebuilding the graph).
    """
    extra_reads = extra_reads or {}
    if extra_reads:
        last = dict(last)
        for step, name in extra_reads.items():
            last[name] = max(last.get(name, -1), step)
    live = {name: size(name) for name in inputs}
    unread = tuple(name for name in live if last.get(name, -1) < 0)  # freed after step one
    current = sum(live.values())
    peak, peak_step = current, 0
    for step, (reads, outs) in enumerate(steps):
        if step in skipped:
            continue
        for name in outs:
            live[name] = size(name)
            current += live[name]
        if current > peak:
            peak, peak_step = current, step
        extra = (extra_reads[step],) if step in extra_reads else ()
        for name in (*reads, *extra, *outs, *unread):
            if name in live and last.get(name, -1) <= step:
                current -= live.pop(name)
    return peak, peak_step


def peak_activation(model: Model) -> tuple[int, str]:
    shapes = model.shapes
    nodes = model.graph.nodes
    tensors = model.graph.tensors()
    steps = node_io(model)

    def size(name: str) -> int:
        return prod(shapes.get(name, (0,))) * _dtype_bytes(tensors[name])

    peak, step = liveness_peak(steps, [t.name for t in model.graph.inputs], size,
                               last_uses(steps, [t.name for t in model.graph.outputs]))
    return int(peak), nodes[step].name if nodes else ""


def memory_stats(model: Model) -> MemoryStats:
    tensors = parameter_tensors(model)
    params = sum(int(np.asarray(t.values).size) for t in tensors)
    param_bytes = sum(int(np.asarray(t.values).nbytes) for t in tensors)
    peak, step = peak_activation(model)
    return MemoryStats(params=params, param_bytes=param_bytes, peak_activation_bytes=peak,
                       peak_step=step)
