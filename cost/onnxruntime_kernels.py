"""Kernels that onnxruntime's CPU provider runs otherwise than their `OpSpec` says.

`decompose` describes every op as an accelerator without special modes would run it. A
target measured in onnxruntime (1.32, CPUExecutionProvider; `blocked_layout = true`) is
estimated by the route each kernel takes there, `onnxruntime_parts`, given the graph
onnxruntime says it runs (`layout.onnxruntime_layout`):

- **A Resize it leaves in plain NCHW** (an upsampling whose input comes from an op it
  cannot block) is priced as an NCHW one (layout "nchw"), 2-4x slower than its blocked
  Upsample.
- **A BN or activation we fuse into a kernel that it runs on its own** (PaddleOCR's
  spelled-out hard-swish, x * Clip(x + 3, 0, 6) / 6) is an elementwise pass of its own,
  and the kernel is priced without the activation.
- **ConvTranspose** is a GEMM and a col2im. For each group, the weights
  ``[cin/g, cout/g * kh * kw]`` multiply the input's ``cin/g x (h_in * w_in)`` matrix into
  a column buffer, which col2im adds into the output map (and the bias on top). So it is
  timed as a 1x1 conv ``cin -> cout * kh * kw`` over the *input* map (the same MACs,
  ``h_in * w_in * cin/g * cout * kh * kw``) plus one pass over the output. `decompose`'s
  conv over the zero-inserted input has ``kh * kw`` times those MACs at the output size,
  a shape the conv measurements never hold: PP-OCR det's two ConvTransposes (24->24
  80->160 and 24->1 160->320, both k2 s2) were estimated at 2.34 ms and ran in 0.68 ms;
  as GEMM + col2im they are 0.59 ms.
- **A nearest upsampling that copies pixels.** The measured nearest resizes take
  onnxruntime's general path, whatever the layout asked for: with half-pixel coordinates
  it never blocks a nearest Resize, so the helper conv of `one_op_model` does not help.
  Two nearest resizes are plain copies of each input pixel into a block instead:
  - an upsampling by integer factors that onnxruntime runs blocked (its NCHWc Upsample,
    which it uses for "asymmetric" coordinates: the resize's layout is "" here);
  - exactly x2 in H and W with "asymmetric" coordinates and "floor" rounding (what
    PyTorch exports for ``nn.Upsample(scale_factor=2)``) left in plain NCHW, which has a
    kernel of its own.
  96 channels 40x40 -> 80x80 took 416 us on the general path, 128 us plain x2 and 110 us
  blocked; x4 to 160x160 blocked, 390 us against 1707 us. Both are timed as one pass over
  the output (an elementwise op of its shape), which reads them 1.4-2x slow: closer than
  the 3-4x of the general path.
"""

from __future__ import annotations

from dataclasses import replace

import onnx_graphsurgeon as gs

from rewriter.cost.kernels import Kernel, Part, nchw
from rewriter.cost.layout import RuntimeLayout
from rewriter.cost.opspec import OpSpec, conv_kind

# ops onnxruntime fuses an activation into: one we fuse after them and it names runs inside
_MAC_OPS = {"Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}


def onnxruntime_parts(kernel: Kernel, layout: RuntimeLayout, nodes: dict[str, gs.Node],
                      shapes: dict[str, tuple[int, ...]]) -> list[Part]:
    """Each pass onnxruntime runs for `kernel` (`nodes`: the model's nodes by name), the
    first covering the kernel's nodes."""
    spec = kernel.spec
    if kernel.name in layout.unblocked:
        spec = replace(spec, layout="nchw")
    separate = _run_separately(kernel, layout, nodes, shapes)
    if separate:
        spec = replace(spec, act="")
    node = nodes[kernel.name]
    if node.op == "ConvTranspose":
        gemm, col2im = _conv_transpose(spec)
        main = [(kernel.name, kernel.op_type, kernel.nodes, gemm),
                (f"{kernel.name}:col2im", kernel.op_type, (), col2im)]
    elif node.op == "Resize" and _copies_pixels(spec, node):
        main = [(kernel.name, kernel.op_type, kernel.nodes, _output_pass(spec))]
    else:
        main = [(kernel.name, kernel.op_type, kernel.nodes, spec)]
    return main + separate


def _run_separately(kernel: Kernel, layout: RuntimeLayout, nodes: dict[str, gs.Node],
                    shapes: dict[str, tuple[int, ...]]) -> list[Part]:
    """The BN and activation nodes we fuse into `kernel` that onnxruntime runs as passes of
    their own (`layout.ran` names them), each as an elementwise op of its output's shape
    (one input, or two where it combines two tensors of that shape)."""
    out = []
    for name in kernel.nodes[1:]:
        op_type = layout.ran.get(name)
        if op_type is None or op_type in _MAC_OPS:
            continue
        node = nodes[name]
        shape = shapes.get(node.outputs[0].name)
        if not shape:
            continue
        full = sum(1 for t in node.inputs if shapes.get(t.name) == shape)
        out.append((name, op_type, (name,), _elementwise(nchw(shape), max(1, full))))
    return out


def _conv_transpose(spec: OpSpec) -> tuple[OpSpec, OpSpec]:
    """(GEMM over the input map, col2im over the output) of a ConvTranspose's spec."""
    columns = spec.cout * spec.kh * spec.kw
    gemm = replace(spec, kind=conv_kind(spec.cin, columns, 1, spec.groups), cout=columns,
                   h_out=spec.h_in, w_out=spec.w_in, kh=1, kw=1, stride=1, act="",
                   n_inputs=1, layout="")
    return gemm, _output_pass(spec)


def _copies_pixels(spec: OpSpec, node: gs.Node) -> bool:
    if spec.kh != 1 or spec.cin != spec.cout:  # not nearest, or resizes channels
        return False
    fh, fw = spec.h_out // spec.h_in, spec.w_out // spec.w_in
    if spec.h_out != fh * spec.h_in or spec.w_out != fw * spec.w_in or min(fh, fw) < 1:
        return False
    if spec.layout == "":  # onnxruntime runs it blocked
        return max(fh, fw) > 1
    attrs = node.attrs
    return ((fh, fw) == (2, 2)
            and str(attrs.get("coordinate_transformation_mode", "half_pixel")) == "asymmetric"
            and str(attrs.get("nearest_mode", "round_prefer_floor")) == "floor")


def _output_pass(spec: OpSpec) -> OpSpec:
    """One pass over `spec`'s output (its activation, if any, applied on the way)."""
    return _elementwise((spec.n, spec.cout, spec.h_out, spec.w_out), 1, spec.act)


def _elementwise(dims: tuple[int, int, int, int], n_inputs: int, act: str = "") -> OpSpec:
    n, c, h, w = dims
    return OpSpec("elementwise", n=n, cin=c, cout=c, h_in=h, w_in=w, h_out=h, w_out=w,
                  n_inputs=n_inputs, act=act)
