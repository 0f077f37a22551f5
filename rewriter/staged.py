"""Run a model over calibration batches slice by slice, so weights can change in between.

A layer-by-layer refit needs, for each refitted node in topological order, the rewritten
model's input to that node with every earlier refit already in place. Running the whole
model again after each refit would cost one forward pass (and one onnxruntime session) per
refitted node; instead the sorted node list is cut just before each refitted node, each
slice becomes a small model whose inputs are the tensors live at the cut, and the live
tensors are carried over in numpy. Every node runs once, in one session per slice.
`stream` and `collect` run a whole model over the batches in one session.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rewriter.graph_io import Model
from rewriter.runtime import run_session, session, with_outputs

Batches = Sequence[Mapping[str, np.ndarray]]


def sample_count(batches: Batches) -> int:
    """How many inputs `batches` hold in all."""
    return sum(len(next(iter(feeds.values()))) for feeds in batches)


def stream(proto: onnx.ModelProto, batches: Batches,
           names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """The tensors `names`, batch by batch, from one onnxruntime session."""
    sess = session(with_outputs(proto, names))
    for feeds in batches:
        yield run_session(sess, feeds, names)


def collect(model: Model, batches: Batches, names: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
    """Values of tensors `names` (default: the graph outputs) over all batches, from one
    session, concatenated on axis 0."""
    proto = model.to_onnx(infer_shapes=False)  # onnxruntime infers shapes itself
    names = [o.name for o in proto.graph.output] if names is None else list(names)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for values in stream(proto, batches, names):
        for name in names:
            parts[name].append(values[name])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


class StagedRun:
    """Runs `proto`'s nodes (topologically sorted) in slices over every batch."""

    def __init__(self, proto: onnx.ModelProto, batches: Batches) -> None:
        self.proto = proto
        self.nodes = list(proto.graph.node)
        self.initializers = {t.name: t for t in proto.graph.initializer}
        self.last_use: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            for name in node.input:
                self.last_use[name] = index
        self.values = [dict(feeds) for feeds in batches]
        self.position = 0

    def index(self, node_name: str) -> int:
        for i, node in enumerate(self.nodes):
            if node.name == node_name:
                return i
        raise KeyError(node_name)

    def replace_constants(self, node_name: str, constants: Mapping[int, tuple[str, np.ndarray]]
                          ) -> None:
        """Give node `node_name` new constant inputs {index: (name, values)} (an index one
        past its last input appends one, e.g. a bias the fit added)."""
        node = self.nodes[self.index(node_name)]
        for i, (name, values) in sorted(constants.items()):
            while len(node.input) <= i:
                node.input.append("")
            node.input[i] = name
            self.initializers[name] = numpy_helper.from_array(values, name)

    def tensor(self, name: str) -> list[np.ndarray]:
        """The value of a live tensor, one array per batch."""
        return [values[name] for values in self.values]

    def run_until(self, stop: int) -> None:
        """Run nodes [position, stop) on every batch, then forget tensors no node from
        `stop` on reads."""
        if stop > self.position:
            sub, inputs, outputs = self._slice(self.position, stop)
            if outputs:
                sess = session(sub)
                for values in self.values:
                    values.update(run_session(sess, {n: values[n] for n in inputs}, outputs))
        self.position = max(stop, self.position)
        for values in self.values:
            for name in [n for n in values if self.last_use.get(n, -1) < self.position]:
                del values[name]

    def _slice(self, start: int, stop: int) -> tuple[onnx.ModelProto, list[str], list[str]]:
        nodes = self.nodes[start:stop]
        produced: set[str] = set()
        inputs: dict[str, None] = {}  # ordered set
        constants: dict[str, onnx.TensorProto] = {}
        for node in nodes:
            for name in node.input:
                if not name or name in produced:
                    continue
                if name in self.initializers:
                    constants[name] = self.initializers[name]
                else:
                    inputs[name] = None
            produced.update(n for n in node.output if n)
        outputs = [n for node in nodes for n in node.output
                   if n and self.last_use.get(n, -1) >= stop]
        sample = self.values[0]
        graph = helper.make_graph(
            nodes, f"slice_{start}_{stop}",
            [helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(sample[name].dtype), None)
             for name in inputs],
            [onnx.ValueInfoProto(name=name) for name in outputs],
            list(constants.values()),
        )
        sub = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        sub.ir_version = self.proto.ir_version
        return sub, list(inputs), outputs
