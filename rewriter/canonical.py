"""Canonical form: exact normalisations of exporter idioms, applied on load.

Exporters spell one network many ways; analysis (block detection, channel groups) and the
passes recognise one spelling. `canonicalize(graph)` rewrites the others into it, in
place, and returns human-readable notes of what it changed. Every rule computes the same
function as the graph it replaces (up to float rounding where weights are rescaled):

1. Identity, and Dropout at inference, are removed. Dropout is the identity when it does
   not train: only a Dropout whose `training_mode` input is absent or a constant false,
   and whose mask output is unused, is removed. When the removed node's output is a graph
   output, the producer of its input is made to write that output under its name instead
   (the tensor is renamed, not copied); when its input is a graph input, another graph
   output or a constant, the node stays (there is nothing to rename).

2. A per-channel Mul / Add / Sub of a constant right after a Conv (or a ConvTranspose:
   its output channels are weight axis 1; Mul only with group 1) whose output nothing else
   reads is folded into the conv (BN exported as Mul+Add, conv bias as a separate Add):
   (conv(x, W) + b) * s = conv(x, W * s) + b * s and (conv(x, W) + b) + t =
   conv(x, W) + (b + t), where s and t broadcast as [1, C, 1, 1] (after right-aligning to
   the conv output's rank: every axis but the channel axis of size 1, the channel axis of
   size C or 1). A constant of shape [C] is NOT per-channel: against an NCHW tensor it
   broadcasts along W, so it is left alone unless C == 1. Only `x - t` folds for Sub
   (`t - x` would negate W). The rule repeats, so Conv -> Mul -> Add folds completely.

3. A constant zero Pad on the spatial axes only (mode constant, value 0 or absent, pads
   and opset-18 axes constant, all non-negative, nothing on batch or channel axes) is
   folded into the pads of the nodes that read it, when every reader can take it (if one
   cannot, the Pad stays for all, as the padded tensor would still be needed):
   - Conv (auto_pad NOTSET or VALID; VALID is pads 0): conv pads are zero padding, so
     conv(pad(x, q), pads=p) = conv(x, pads=p+q) for any stride and dilation.
   - AveragePool with ceil_mode 0, when it counts its own padding (count_include_pad=1)
     or has none: explicit zeros are counted in the mean, and so are pool pads with
     count_include_pad=1, which the folded pool then gets.
   - MaxPool with ceil_mode 0, no Indices output, when the Pad's input is produced by a
     Relu or a Clip with a constant min >= 0, and every total pad is smaller than the
     kernel. MaxPool pads with -inf, not 0; the two agree only when the input is
     non-negative (a window holding a real element x >= 0 and padded zeros has max x
     either way) and no window lies wholly in the padding (there 0 vs -inf). Other
     MaxPools keep their Pad.
   Pads in another mode (reflect, edge), with a non-zero value, or read by anything else
   stay; channel analysis treats a spatial Pad as channel-transparent.

4. MatMul(A, B) + C becomes Gemm(A, B, C) (one kernel instead of two) when B is a
   constant [K, M], C a constant of shape [M] or [1, M] and only the Add reads the
   product. A known to be 2-D: Gemm directly. A of shape [D..., K] with every dim but
   the batch known (wherever it is: time-major RNN outputs are [T, B, K]): Reshape to
   [-1, K], Gemm, Reshape to [D..., M] with -1 for the batch, which stays symbolic.

5. The initial state of an LSTM / GRU / RNN built as ConstantOfShape of 0 (torch exports
   h0 = zeros(1, batch, hidden) that way, computing the batch at run time) is dropped: an
   absent initial state is zero by the op's definition.

Before these, on load (rewriter.graph_io), constant subgraphs are folded, and shape
arguments computed at run time are made constant at the fixed input dims with the batch
kept symbolic (rewriter.static_shapes).

Activations in any spelling (ReLU6 as Clip, hard-swish as x * HardSigmoid(x) or
x * Clip(x + 3, 0, 6) / 6, SiLU as x * Sigmoid(x)) are recognised by
rewriter.analysis.activations, by their algebra, so they are not rewritten here.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.graph_query import Namer, const_value, fills_zeros, is_empty_input


def canonicalize(graph: gs.Graph) -> list[str]:
    """Normalise `graph` in place (see the module docstring); return notes of what changed."""
    namer = Namer(graph)
    notes: list[str] = []
    removed, kept = _remove_identities(graph)
    for op, count in sorted(removed.items()):
        notes.append(f"removed {count} {op} node{'s' if count > 1 else ''}")
    for op, count in sorted(kept.items()):
        notes.append(f"kept {count} {op} node{'s' if count > 1 else ''} between a graph "
                     "input or constant and a graph output")
    folded = _fold_affine(graph, namer)
    for (op, into), count in sorted(folded.items()):
        notes.append(f"folded {count} per-channel {op} node{'s' if count > 1 else ''} "
                     f"into Conv {into}")
    states = _drop_zero_states(graph)
    if states:
        notes.append(f"dropped {states} zero initial state{'s' if states > 1 else ''} of "
                     "recurrent nodes (the default when absent)")
    gemms = _matmul_add_to_gemm(graph, namer)
    if gemms:
        notes.append(f"fused {gemms} MatMul + Add pair{'s' if gemms > 1 else ''} into Gemm")
    pads, left = _fold_pads(graph)
    for op, count in sorted(pads.items()):
        notes.append(f"folded {count} Pad node{'s' if count > 1 else ''} into {op} pads")
    for reason, count in sorted(left.items()):
        notes.append(f"left {count} Pad node{'s' if count > 1 else ''} ({reason})")
    graph.nodes = [n for n in graph.nodes if n.outputs or n.inputs]
    return notes


def _detach(node: gs.Node) -> None:
    node.inputs.clear()
    node.outputs.clear()


def _replace_input(consumer: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for i, tensor in enumerate(consumer.inputs):
        if tensor is old:
            consumer.inputs[i] = new


def _is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def _attr_str(node: gs.Node, key: str, default: str) -> str:
    value = node.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


# -- 1. Identity and inference Dropout -------------------------------------------------------
def _passes_through(node: gs.Node, graph: gs.Graph) -> bool:
    if node.op == "Identity":
        return len(node.inputs) == 1 and len(node.outputs) == 1
    if node.op != "Dropout" or not node.inputs or not node.outputs:
        return False
    if len(node.inputs) > 2 and not is_empty_input(node.inputs[2]):
        training = const_value(node.inputs[2])
        if training is None or bool(np.any(training)):
            return False  # training (or maybe training): the node really drops
    for mask in node.outputs[1:]:
        if mask.name and (mask.outputs or _is_graph_output(graph, mask)):
            return False
    return True


def _remove_identities(graph: gs.Graph) -> tuple[Counter, Counter]:
    removed: Counter = Counter()
    kept: Counter = Counter()
    graph_inputs = {id(t) for t in graph.inputs}
    for node in list(graph.nodes):
        if not _passes_through(node, graph):
            continue
        x, y = node.inputs[0], node.outputs[0]
        if not _is_graph_output(graph, y):
            for consumer in list(y.outputs):
                _replace_input(consumer, y, x)
            _detach(node)
            removed[node.op] += 1
            continue
        # y must keep its name as a graph output: rename x to it where x can be renamed.
        producer = x.inputs[0] if isinstance(x, gs.Variable) and x.inputs else None
        if (producer is None or id(x) in graph_inputs or _is_graph_output(graph, x)
                or isinstance(x, gs.Constant)):
            kept[node.op] += 1
            continue
        _detach(node)
        for consumer in list(x.outputs):
            _replace_input(consumer, x, y)
        for i, tensor in enumerate(producer.outputs):
            if tensor is x:
                producer.outputs[i] = y
        removed[node.op] += 1
    return removed, kept


# -- 2. per-channel Mul / Add / Sub after a Conv ---------------------------------------------
def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """`value` as a [channels] vector when it broadcasts as [1, C, 1, ...] against a
    rank-`rank` NCHW tensor with `channels` channels, else None."""
    if value.ndim > rank or not np.issubdtype(value.dtype, np.floating):
        return None
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,))


def _fold_affine(graph: gs.Graph, namer: Callable[[str], str]) -> Counter:
    folded: Counter = Counter()
    changed = True
    while changed:
        changed = False
        for conv in list(graph.nodes):
            if conv.op not in ("Conv", "ConvTranspose") or len(conv.inputs) < 2 or not (
                    conv.outputs):
                continue
            weight = const_value(conv.inputs[1])
            has_bias = len(conv.inputs) > 2 and not is_empty_input(conv.inputs[2])
            bias = const_value(conv.inputs[2]) if has_bias else None
            if weight is None or (has_bias and bias is None) or weight.ndim < 3:
                continue
            transposed = conv.op == "ConvTranspose"
            group = int(conv.attrs.get("group", 1))
            y = conv.outputs[0]
            if _is_graph_output(graph, y) or len(y.outputs) != 1:
                continue
            nxt = y.outputs[0]
            if nxt.op not in ("Mul", "Add", "Sub") or len(nxt.inputs) != 2:
                continue
            if nxt.inputs[0] is y and nxt.inputs[1] is not y:
                other = nxt.inputs[1]
            elif nxt.inputs[1] is y and nxt.op != "Sub" and nxt.inputs[0] is not y:
                other = nxt.inputs[0]
            else:
                continue
            value = const_value(other)
            # ConvTranspose weights are [Cin, Cout / group, k...]: output channels on axis 1
            cout = int(weight.shape[1]) * group if transposed else int(weight.shape[0])
            vector = _per_channel(value, cout, weight.ndim) if value is not None else None
            if vector is None or (transposed and nxt.op == "Mul" and group != 1):
                continue
            b = bias.astype(np.float64) if bias is not None else np.zeros(cout)
            if nxt.op == "Mul":
                axis_shape = ((1, cout) if transposed else (cout,)) + (1,) * (
                    weight.ndim - (2 if transposed else 1))
                w = (weight.astype(np.float64) * vector.reshape(axis_shape)).astype(
                    weight.dtype)
                b = b * vector
                conv.inputs[1] = gs.Constant(namer(f"{conv.name}.weight_canonical"), w)
                into = "weights"
            else:
                b = b + vector if nxt.op == "Add" else b - vector
                into = "biases"
            # The constants may be shared with other convs: give this one its own. A scaled
            # conv without a bias keeps none (0 * s is 0).
            if has_bias or nxt.op != "Mul":
                dtype = bias.dtype if bias is not None else weight.dtype
                new_bias = gs.Constant(namer(f"{conv.name}.bias_canonical"), b.astype(dtype))
                if len(conv.inputs) > 2:
                    conv.inputs[2] = new_bias
                else:
                    conv.inputs.append(new_bias)
            out = nxt.outputs[0]
            _detach(nxt)
            conv.outputs[0] = out
            folded[(nxt.op, into)] += 1
            changed = True
    return folded


# -- 3. zero spatial Pad into the reader's pads ----------------------------------------------
def _pad_amounts(pad: gs.Node, rank: int) -> tuple[list[int], list[int]] | str:
    """(begins, ends) per axis of a constant zero Pad, or why it is not one."""
    mode = _attr_str(pad, "mode", "constant")
    if mode != "constant":
        return f"{mode} mode"
    if len(pad.inputs) < 2:
        return "pads as an attribute (opset < 11)"
    pads = const_value(pad.inputs[1])
    if pads is None:
        return "pads not constant"
    pads = pads.astype(np.int64).reshape(-1)
    if len(pad.inputs) > 2 and not is_empty_input(pad.inputs[2]):
        fill = const_value(pad.inputs[2])
        if fill is None or fill.size != 1 or float(fill.reshape(-1)[0]) != 0.0:
            return "non-zero pad value"
    if len(pad.inputs) > 3 and not is_empty_input(pad.inputs[3]):
        axes = const_value(pad.inputs[3])
        if axes is None:
            return "axes not constant"
        axes_list = [int(a) + rank if int(a) < 0 else int(a) for a in axes.reshape(-1)]
    else:
        axes_list = list(range(len(pads) // 2))
    if len(pads) != 2 * len(axes_list) or any(not 0 <= a < rank for a in axes_list):
        return "pads do not match the rank"
    begins, ends = [0] * rank, [0] * rank
    for i, axis in enumerate(axes_list):
        begins[axis] += int(pads[i])
        ends[axis] += int(pads[i + len(axes_list)])
    if any(p < 0 for p in begins + ends):
        return "negative pads (a crop)"
    if begins[0] or ends[0] or begins[1] or ends[1]:
        return "pads the batch or channel axis"
    return begins, ends


def _reader_rank(node: gs.Node) -> int | None:
    if node.op == "Conv":
        weight = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is not None:
            return int(weight.ndim)
        kernel = node.attrs.get("kernel_shape")
        return len(kernel) + 2 if kernel else None
    kernel = node.attrs.get("kernel_shape")
    return len(kernel) + 2 if kernel else None


def _non_negative(tensor: gs.Tensor) -> bool:
    producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None
    if producer is None:
        return False
    if producer.op == "Relu":
        return True
    if producer.op == "Clip":
        if len(producer.inputs) > 1 and not is_empty_input(producer.inputs[1]):
            low = const_value(producer.inputs[1])
            return low is not None and low.size == 1 and float(low.reshape(-1)[0]) >= 0.0
        low = producer.attrs.get("min")
        return low is not None and float(low) >= 0.0
    return False


def _can_take(graph: gs.Graph, reader: gs.Node, pad_out: gs.Tensor, pad_in: gs.Tensor,
              begins: list[int], ends: list[int]) -> bool:
    if reader.inputs[0] is not pad_out or any(t is pad_out for t in reader.inputs[1:]):
        return False
    if _attr_str(reader, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False  # SAME_* pads depend on the input size; not worth converting here
    if reader.op == "Conv":
        return True
    if int(reader.attrs.get("ceil_mode", 0)):
        return False  # a partial last window would see the explicit pad differently
    own = [int(p) for p in reader.attrs.get("pads", [])]
    if reader.op == "AveragePool":
        return int(reader.attrs.get("count_include_pad", 0)) == 1 or not any(own)
    if reader.op == "MaxPool":
        if any(t.name and (t.outputs or _is_graph_output(graph, t))
               for t in reader.outputs[1:]):
            return False  # Indices would index the padded tensor
        if not _non_negative(pad_in):
            return False
        kernel = [int(k) for k in reader.attrs.get("kernel_shape", [])]
        spatial = len(kernel)
        own = own or [0] * (2 * spatial)
        totals_b = [own[i] + begins[i + 2] for i in range(spatial)]
        totals_e = [own[i + spatial] + ends[i + 2] for i in range(spatial)]
        return all(b < k and e < k for b, e, k in zip(totals_b, totals_e, kernel))
    return False


def _fold_pads(graph: gs.Graph) -> tuple[Counter, Counter]:
    folded: Counter = Counter()
    left: Counter = Counter()
    for pad in list(graph.nodes):
        if pad.op != "Pad" or not pad.outputs or not pad.inputs:
            continue
        x, y = pad.inputs[0], pad.outputs[0]
        readers = list(y.outputs)
        if _is_graph_output(graph, y) or not readers:
            left["its output is a graph output" if readers else "unread"] += 1
            continue
        ranks = {_reader_rank(r) if r.op in ("Conv", "AveragePool", "MaxPool") else None
                 for r in readers}
        rank = ranks.pop() if len(ranks) == 1 else None
        if rank is None:
            left["read by an op other than Conv or a pool"] += 1
            continue
        amounts = _pad_amounts(pad, rank)
        if isinstance(amounts, str):
            left[amounts] += 1
            continue
        begins, ends = amounts
        if not all(_can_take(graph, r, y, x, begins, ends) for r in readers):
            left["a reader cannot take the pads exactly"] += 1
            continue
        spatial = rank - 2
        for reader in readers:
            own = [int(p) for p in reader.attrs.get("pads", [])] or [0] * (2 * spatial)
            if _attr_str(reader, "auto_pad", "NOTSET") == "VALID":
                own = [0] * (2 * spatial)
            reader.attrs["pads"] = [own[i] + begins[i + 2] for i in range(spatial)] + [
                own[i + spatial] + ends[i + 2] for i in range(spatial)]
            if "auto_pad" in reader.attrs:
                reader.attrs["auto_pad"] = "NOTSET"
            if reader.op == "AveragePool":
                reader.attrs["count_include_pad"] = 1
            _replace_input(reader, y, x)
        folded["/".join(sorted({r.op for r in readers}))] += 1
        _detach(pad)
    return folded, left


# -- 4. MatMul + Add of a bias into Gemm -----------------------------------------------------
def _matmul_add_to_gemm(graph: gs.Graph, namer: Callable[[str], str]) -> int:
    """MatMul(A, B) + C -> Gemm(A, B, C), between Reshapes to rows and back when A has
    more than 2 dims (rule 4 of the module docstring); the number fused."""
    fused = 0
    for matmul in list(graph.nodes):
        if matmul.op != "MatMul" or len(matmul.inputs) != 2 or len(matmul.outputs) != 1:
            continue
        a, b, y = matmul.inputs[0], matmul.inputs[1], matmul.outputs[0]
        weight = const_value(b)
        if (weight is None or weight.ndim != 2 or isinstance(a, gs.Constant)
                or not np.issubdtype(weight.dtype, np.floating)):
            continue
        rows = _rows_shape(a)
        if rows is None:
            continue
        if _is_graph_output(graph, y) or len(y.outputs) != 1 or y.outputs[0].op != "Add":
            continue
        add = y.outputs[0]
        if len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
            continue
        other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        bias = const_value(other)
        m = int(weight.shape[1])
        if (bias is None or bias.dtype != weight.dtype or bias.ndim > 2
                or (bias.ndim == 2 and bias.shape[0] != 1)
                or (bias.ndim >= 1 and bias.shape[-1] not in (1, m))):
            continue
        base = matmul.name or "gemm"
        c = gs.Constant(namer(f"{base}.bias_canonical"),
                        np.ascontiguousarray(np.broadcast_to(bias.reshape(-1), (m,))))
        out = add.outputs[0]
        if rows:  # [D..., K]: Gemm on [prod(D), K], then back to [D..., M]
            flat = gs.Variable(namer(f"{base}.rows"), dtype=a.dtype)
            product = gs.Variable(namer(f"{base}.gemm"), dtype=a.dtype)
            graph.nodes.append(gs.Node("Reshape", namer(f"{base}_rows"), inputs=[
                a, gs.Constant(namer(f"{base}.rows_shape"),
                               np.asarray([-1, int(weight.shape[0])], np.int64))],
                outputs=[flat]))
            graph.nodes.append(gs.Node("Gemm", namer(f"{base}_gemm"), inputs=[flat, b, c],
                                       outputs=[product]))
            graph.nodes.append(gs.Node("Reshape", namer(f"{base}_unrows"), inputs=[
                product, gs.Constant(namer(f"{base}.unrows_shape"),
                                     np.asarray([*rows, m], np.int64))],
                outputs=[out]))
        else:
            graph.nodes.append(gs.Node("Gemm", namer(f"{base}_gemm"), inputs=[a, b, c],
                                       outputs=[out]))
        _detach(add)
        _detach(matmul)
        fused += 1
    return fused


def _rows_shape(a: gs.Tensor) -> list[int] | None:
    """[] when `a` is known to be 2-D; for [D1, ..., K] with K and all leading dims but
    at most one known (the batch, wherever it is), the leading dims with -1 for the
    unknown one (the first if all are known); None otherwise."""
    if a.shape is None or len(a.shape) < 2:
        return None
    if len(a.shape) == 2:
        return []

    def known(d: object) -> bool:
        return isinstance(d, (int, np.integer)) and int(d) > 0

    leading = list(a.shape[:-1])
    if not known(a.shape[-1]) or sum(not known(d) for d in leading) > 1:
        return None
    dims = [int(d) if known(d) else -1 for d in leading]
    if -1 not in dims:
        dims[0] = -1
    return dims


# -- 5. zero initial states of recurrent nodes -----------------------------------------------
def _drop_zero_states(graph: gs.Graph) -> int:
    """An LSTM / GRU / RNN initial state made by ConstantOfShape of 0 (exporters build it
    at run time from the batch size) is the state the op starts from when the input is
    absent: the input is dropped, and with it the shape computation."""
    dropped = 0
    slots = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
    for node in graph.nodes:
        for index in slots.get(node.op, ()):
            if index >= len(node.inputs) or is_empty_input(node.inputs[index]):
                continue
            state = node.inputs[index]
            maker = state.inputs[0] if isinstance(state, gs.Variable) and state.inputs else None
            if maker is None or not fills_zeros(maker) or _is_graph_output(graph, state):
                continue
            node.inputs[index] = gs.Variable.empty()
            dropped += 1
    return dropped
