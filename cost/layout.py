"""Layout conversions that a blocked-layout runtime inserts between kernels.

onnxruntime's CPU provider runs convs, pooling and Resize in its blocked NCHWc layout and
converts tensors out of it and back (ReorderOutput / ReorderInput) around the ops it cannot
run blocked: an SE block's Mul, a spelled-out activation, a Concat, a ConvTranspose. Which
ops it fuses first (a residual Add or a HardSigmoid into the conv) decides where the
conversions fall, so rather than re-implement its fusion rules we ask it: onnxruntime
writes the graph it will run, and every Reorder node in it is a conversion of a tensor of
our model, a "reorder" kernel of that tensor's shape (layout "nchw" out of the blocked
layout, "" into it). The same graph says which Resize nodes it leaves in plain NCHW (an
upsampling whose input comes from an op it cannot block), 2-4x slower than the blocked
Upsample it runs otherwise. And it names every node it runs on its own: a BN or an
activation we count as fused into the conv before it (a spelled-out hard-swish,
x * Clip(x + 3, 0, 6) / 6) that it leaves as separate elementwise passes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from rewriter.cost.kernels import nchw
from rewriter.cost.measure import REORDERS
from rewriter.cost.opspec import OpSpec
from rewriter.graph_io import Model
from rewriter.runtime import session


@dataclass(frozen=True)
class RuntimeLayout:
    reorders: list[tuple[str, OpSpec]]  # (tensor, reorder spec) per conversion
    unblocked: frozenset[str]  # names of our Resize nodes that run in plain NCHW
    ran: dict[str, str]  # name -> op type of every node onnxruntime runs under its own name


def onnxruntime_layout(model: Model, threads: int = 1) -> RuntimeLayout:
    """The conversions onnxruntime inserts into `model`, and the resizes it leaves NCHW."""
    shapes = model.shapes
    with tempfile.TemporaryDirectory(prefix="rewriter-layout-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        # onnxruntime infers the shapes it needs itself
        session(model.to_onnx(infer_shapes=False), threads, optimized_path=str(path))
        optimized = onnx.load(str(path), load_external_data=False)
    ours = {node.name for node in model.graph.nodes if node.op == "Resize"}
    reorders = []
    unblocked = set()
    for node in optimized.graph.node:
        if node.op_type == "Resize" and node.domain in ("", "ai.onnx") and node.name in ours:
            unblocked.add(node.name)
        if node.op_type not in REORDERS:
            continue
        tensor = next((t for t in (*node.output, *node.input) if t in shapes), None)
        if tensor is None:
            continue
        n, c, h, w = nchw(shapes[tensor])
        reorders.append((tensor, OpSpec(kind="reorder", n=n, cin=c, cout=c, h_in=h, w_in=w,
                                        h_out=h, w_out=w, layout=REORDERS[node.op_type])))
    return RuntimeLayout(reorders, frozenset(unblocked),
                         {node.name: node.op_type for node in optimized.graph.node})
