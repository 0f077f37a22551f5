"""Kernels that onnxruntime's CPU provider runs otherwise than their `OpSpec` says.

`decompose` describes every op as an accelerator without special modes would run it. Two
ops take another route in onnxruntime (1.32, CPUExecutionProvider), and a target measured
there (`blocked_layout = true`) is estimated by the route they take:

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

from rewriter.cost.kernels import Kernel
from rewriter.cost.opspec import OpSpec, conv_kind


def onnxruntime_parts(kernel: Kernel, spec: OpSpec, node: gs.Node
                      ) -> list[tuple[str, str, OpSpec]] | None:
    """(name, op type, spec) of each pass onnxruntime runs for `kernel` (whose first node
    is `node`, its spec as the layout left it), or None when it runs as `spec` says."""
    if node.op == "ConvTranspose":
        return _conv_transpose(kernel, spec)
    if node.op == "Resize" and _copies_pixels(spec, node):
        return [(kernel.name, kernel.op_type, _copy(spec))]
    return None


def _conv_transpose(kernel: Kernel, spec: OpSpec) -> list[tuple[str, str, OpSpec]]:
    columns = spec.cout * spec.kh * spec.kw
    gemm = replace(spec, kind=conv_kind(spec.cin, columns, 1, spec.groups), cout=columns,
                   h_out=spec.h_in, w_out=spec.w_in, kh=1, kw=1, stride=1, act="",
                   n_inputs=1, layout="")
    col2im = _copy(spec)
    return [(kernel.name, kernel.op_type, gemm),
            (f"{kernel.name}:col2im", kernel.op_type, col2im)]


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


def _copy(spec: OpSpec) -> OpSpec:
    """One pass over `spec`'s output: an elementwise op of its shape with one input."""
    return OpSpec("elementwise", n=spec.n, cin=spec.cout, cout=spec.cout, h_in=spec.h_out,
                  w_in=spec.w_out, h_out=spec.h_out, w_out=spec.w_out, act=spec.act)
