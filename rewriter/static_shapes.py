"""Shape computations made constant at the fixed input dims, a symbolic batch kept (and
the zero initial states built from the batch folded away: `fold_zero_states`).

Exporters compute the shape arguments of Reshape and Expand at run time (Shape -> Gather
-> Unsqueeze -> Concat chains, with Cast, Slice and arithmetic in between), so one file
serves any input size. Once the user fixes the non-batch input dims, those shapes are
fixed too, except for the batch: onnxslim and onnx-simplifier fold them by fixing the
batch as well. Here the batch stays symbolic, so the shape argument is rewritten so as
not to depend on it:

The graph is run twice in onnxruntime, at batch sizes 1 and 3 (every other input dim as
fixed), and the shapes of the tensors around each computed Reshape/Expand are read. For a
Reshape (allowzero 0) whose shape argument is computed, output dim j becomes
- the constant d when it is d at both batch sizes;
- 0 ("copy dim j of the data input") when it equals the data input's dim j at both;
- -1 ("whatever is left") for at most one dim that is neither;
otherwise the Reshape is left alone. When every dim is settled, the largest constant one
becomes -1 all the same, so that a channel rewrite upstream (a depth multiplier before a
flatten to [N, C]) does not meet a channel count baked into the constant. An Expand whose
output shape is the same at both batch sizes gets that shape as a constant argument (Expand
broadcasts its input to it, so
the result is the same). The chains that computed the old arguments are then dead and
are removed. Dims that are the same at two batch sizes are the same at every batch size
for the linear shape arithmetic exporters write; the loaded model is checked against the
file's own graph in onnxruntime whenever it is optimised, as every rewrite is.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.graph_query import Namer, const_value, fills_zeros

__all__ = ["fold_computed_shapes", "fold_zero_states", "shapes_at_run_time"]

BATCHES = (1, 3)


def _run_shapes(graph: gs.Graph, ir_version: int, inputs: Mapping[str, Sequence[int]],
                batch: int, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The shapes of tensors `names` when the graph runs in onnxruntime at `batch` (other
    input dims as fixed; the values are seeded noise, shapes do not depend on them)."""
    from rewriter.runtime import run_model, with_outputs

    copy = graph.copy()
    copy.cleanup(remove_unused_graph_inputs=False)  # nodes emptied by earlier folding
    proto = gs.export_onnx(copy, do_type_check=False)
    proto.ir_version = ir_version
    del proto.graph.value_info[:]
    rng = np.random.default_rng(0)
    feeds = {}
    for tensor in copy.inputs:
        shape = (batch, *[int(d) for d in inputs[tensor.name][1:]])
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
        feeds[tensor.name] = (rng.standard_normal(shape).astype(dtype)
                              if np.issubdtype(dtype, np.floating) else np.zeros(shape, dtype))
    values = run_model(with_outputs(proto, names), feeds, list(names), optimize=False)
    return {name: tuple(int(d) for d in value.shape) for name, value in values.items()}


def _at_batches(graph: gs.Graph, ir_version: int,
                inputs: Mapping[str, Sequence[int] | None], names: Sequence[str]
                ) -> list[dict[str, tuple[int, ...]]] | None:
    """The shapes of tensors `names` at each of BATCHES; None when there is nothing to
    ask, an input's dims are unknown, or the graph does not run at these sizes."""
    if not names or any(inputs.get(t.name) is None for t in graph.inputs):
        return None
    try:
        return [_run_shapes(graph, ir_version, inputs, b, names)  # type: ignore[arg-type]
                for b in BATCHES]
    except Exception:  # the graph keeps what it has
        return None


def _reshape_target(out: Sequence[tuple[int, ...]], data: Sequence[tuple[int, ...]]
                    ) -> list[int] | None:
    (out1, out3), (in1, in3) = out, data
    if len(out1) != len(out3):
        return None
    target: list[int] = []
    free = 0
    for j, (a, b) in enumerate(zip(out1, out3)):
        if a == b and a != 0:
            target.append(a)
        elif j < len(in1) and j < len(in3) and in1[j] == a and in3[j] == b:
            target.append(0)
        else:
            free += 1
            target.append(-1)
    if free > 1:
        return None
    if free == 0:
        # Leave the largest constant dim to be inferred: it is the one a channel rewrite
        # downstream changes (a flattened [N, C]), and -1 keeps following it.
        fixed = [j for j, d in enumerate(target) if d > 0]
        if fixed:
            target[max(fixed, key=lambda j: target[j])] = -1
    return target


def fold_computed_shapes(graph: gs.Graph, ir_version: int,
                         inputs: Mapping[str, Sequence[int] | None]) -> int:
    """Make computed Reshape/Expand shape arguments constant (module docstring), in place;
    the number of arguments replaced. Nothing is done unless every input's dims are known
    and shape inference succeeds at both batch sizes."""
    computed = [n for n in graph.nodes if n.op in ("Reshape", "Expand") and len(n.inputs) > 1
                and const_value(n.inputs[1]) is None]
    at = _at_batches(graph, ir_version, inputs,
                     sorted({t.name for n in computed for t in (n.inputs[0], n.outputs[0])
                             if not isinstance(t, gs.Constant)}))
    if at is None:
        return 0
    namer = Namer(graph)
    replaced = 0
    for node in computed:
        data, out = node.inputs[0], node.outputs[0]
        outs = [s.get(out.name) for s in at]
        datas = [s.get(data.name) if not isinstance(data, gs.Constant)
                 else tuple(data.values.shape) for s in at]
        if any(o is None for o in outs) or any(d is None for d in datas):
            continue
        if node.op == "Reshape":
            if int(node.attrs.get("allowzero", 0)) != 0:
                continue
            target = _reshape_target(outs, datas)
        else:
            target = list(outs[0]) if outs[0] == outs[1] else None
        if target is None:
            continue
        node.inputs[1] = gs.Constant(namer(f"{node.name or node.op}.shape_static"),
                                     np.asarray(target, np.int64))
        replaced += 1
    if replaced:
        graph.cleanup(remove_unused_graph_inputs=False)
    return replaced


def fold_zero_states(graph: gs.Graph, ir_version: int,
                     inputs: Mapping[str, Sequence[int] | None]) -> int:
    """Terms of an all-zero tensor made at run time (ConstantOfShape of 0: the zero
    initial state of an RNN cell that torch unrolls into Gemm / Mul / Add, its shape
    computed from the batch) are folded out of the Adds that read them, in place; the
    number of Adds simplified:
    - Add(Gemm(Z, W, C), Y) = Y + beta * C, since Z W = 0: the Gemm's output is replaced
      by the constant beta * C in that Add;
    - Add(Mul(Z, S), Y) = Y: the Add becomes an Identity of Y (which canonicalize then
      removes). Exact for finite S (0 * inf is NaN), as where exporters write it: S a
      Sigmoid or another gate.
    Only where Y alone has the Add's output shape at batch 1 and 3 (run in onnxruntime),
    so dropping the other term changes no broadcast. The chains that built Z die."""
    zeros = {id(t) for n in graph.nodes if fills_zeros(n) for t in n.outputs}
    if not zeros:
        return 0
    outputs = {id(t) for t in graph.outputs}
    pairs: list[tuple[gs.Node, gs.Node, gs.Tensor, np.ndarray | None]] = []
    for node in graph.nodes:
        if len(node.outputs) != 1 or id(node.outputs[0]) in outputs:
            continue
        term = node.outputs[0]
        if node.op == "Gemm" and node.inputs and id(node.inputs[0]) in zeros:
            has_c = len(node.inputs) > 2 and node.inputs[2].name
            c = const_value(node.inputs[2]) if has_c else np.zeros(1, np.float32)
            if c is None:
                continue
            value = (float(node.attrs.get("beta", 1.0)) * c).astype(c.dtype)
        elif node.op == "Mul" and any(id(t) in zeros for t in node.inputs):
            value = None
        else:
            continue
        for add in term.outputs:
            if add.op == "Add" and len(add.inputs) == 2 and add.inputs[0] is not add.inputs[1]:
                other = add.inputs[1] if add.inputs[0] is term else add.inputs[0]
                pairs.append((node, add, other, value))
    at = _at_batches(graph, ir_version, inputs,
                     sorted({t.name for _, add, other, _ in pairs
                             for t in (other, add.outputs[0])
                             if not isinstance(t, gs.Constant)}))
    if at is None:
        return 0
    namer = Namer(graph)
    folded = 0
    for node, add, other, value in pairs:
        out = add.outputs[0]
        if isinstance(other, gs.Constant) or any(
                shapes.get(other.name) is None or shapes.get(other.name) != shapes.get(out.name)
                for shapes in at):
            continue
        if value is not None and np.any(value != 0):
            constant = gs.Constant(namer(f"{node.name or 'gemm'}.zero_state_bias"), value)
            add.inputs.clear()
            add.inputs.extend([other, constant])
        else:  # an Identity, which the canonical form then removes (renaming outputs)
            add.op = "Identity"
            add.inputs.clear()
            add.inputs.append(other)
        folded += 1
    if folded:
        graph.cleanup(remove_unused_graph_inputs=False)
    return folded


def shapes_at_run_time(graph: gs.Graph, ir_version: int,
                       inputs: Mapping[str, Sequence[int] | None],
                       names: Sequence[str]) -> dict[str, list[int | str]]:
    """The shapes of tensors `names` as the graph runs at batch 1 and 3: a dim that differs
    is the batch ("N"), and a tensor whose other dims differ is left out. Empty when the
    inputs' dims are not all known or the graph does not run."""
    at = _at_batches(graph, ir_version, inputs, names)
    if at is None:
        return {}
    shapes: dict[str, list[int | str]] = {}
    for name in names:
        one, three = at[0].get(name), at[1].get(name)
        if one is None or three is None or len(one) != len(three):
            continue
        dims: list[int | str] = [a if a == b else "N" for a, b in zip(one, three)]
        if all(isinstance(d, int) for d in dims[1:]):
            shapes[name] = dims
    return shapes
