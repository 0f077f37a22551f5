"""Layout conversions that a blocked-layout runtime inserts between kernels.

onnxruntime's CPU provider runs convs, pooling and Resize in its blocked NCHWc layout and
converts tensors out of it and back (ReorderOutput / ReorderInput) around the ops it cannot
run blocked: an SE block's Mul, a spelled-out activation, a Concat, a ConvTranspose. Which
ops it fuses first (a residual Add or a HardSigmoid into the conv) decides where the
conversions fall, so rather than re-implement its fusion rules we ask it: onnxruntime
writes the graph it will run, and every Reorder node in it is a conversion of a tensor of
our model, estimated as a copy of that tensor (an elementwise kernel of its size).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from rewriter.cost.opspec import OpSpec
from rewriter.graph_io import Model
from rewriter.runtime import session

REORDERS = {"ReorderInput", "ReorderOutput"}


def onnxruntime_reorders(model: Model, threads: int = 1) -> list[tuple[str, OpSpec]]:
    """(tensor, copy-sized OpSpec) for every layout conversion onnxruntime inserts."""
    shapes = model.shapes
    with tempfile.TemporaryDirectory(prefix="rewriter-layout-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        # onnxruntime infers the shapes it needs itself
        session(model.to_onnx(infer_shapes=False), threads, optimized_path=str(path))
        optimized = onnx.load(str(path), load_external_data=False)
    found = []
    for node in optimized.graph.node:
        if node.op_type not in REORDERS:
            continue
        tensor = next((t for t in (*node.output, *node.input) if t in shapes), None)
        if tensor is None:
            continue
        shape = shapes[tensor]
        n, c = shape[0], shape[1] if len(shape) > 1 else 1
        h = shape[2] if len(shape) > 2 else 1
        w = shape[3] if len(shape) > 3 else 1
        found.append((tensor, OpSpec(kind="elementwise", n=n, cin=c, cout=c, h_in=h, w_in=w,
                                     h_out=h, w_out=w)))
    return found
