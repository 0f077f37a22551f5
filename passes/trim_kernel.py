"""trim-kernel: drop the kernel rows and columns of a conv that only ever read padding (exact).

Rule: Conv with constant weights, explicit pads (auto_pad NOTSET or VALID) and static
spatial dims. Along a spatial axis with input size n, output size m, kernel k, stride s,
dilation d and pads (p, q), kernel tap j reads input index y*s - p + j*d for output index y;
it is dead when that index lies outside [0, n) for every y in [0, m): it only ever
multiplies the zero padding. The leading a and trailing b dead taps are removed:
W' = W[..., a:k-b] on that axis, pads (p - a*d, q - b*d). The output size is unchanged:
n + p' + q' - ((k'-1)*d + 1) = n + p + q - ((k-1)*d + 1) with k' = k - a - b. A trim that
would need a negative pad is made smaller (a dead tap inside the window stays).

This is the case wherever a map has shrunk below the kernel: text-line models whose height
is 2 or 3 rows by their last stages (a 5x5 depthwise conv on a 2-row map reads padding
with its first and last rows; 3x5 computes the same), detection heads' 3x3 convs on 1x1
and 2x2 maps (on a 1x1 map only the centre tap is live: a 1x1 conv). The rewritten conv
does fewer MACs and keeps fewer weights for the same output.

Exact at the model's input size, which the tool fixes for every model it writes
(`--input-shape`; a dynamic batch stays dynamic): at a larger input size the dropped taps
would read data. Canonical: applied everywhere before the search, like fold-bn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rewriter.graph_io import Model
from rewriter.graph_query import conv_info
from rewriter.passes.base import Pass, Site, conv_to_edit, finish, set_weight


@dataclass(frozen=True)
class AxisTrim:
    """Taps dropped from the start and the end of one spatial axis of a kernel."""

    start: int
    end: int


def live_taps(size: int, out: int, kernel: int, stride: int, dilation: int,
              pad: int) -> list[bool]:
    """Per tap of one axis: whether it reads the input (not the padding) for any output."""
    return [any(0 <= y * stride - pad + j * dilation < size for y in range(out))
            for j in range(kernel)]


def axis_trim(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int]
              ) -> AxisTrim | None:
    """The leading and trailing dead taps of one axis that can go without a negative pad;
    None when no tap of the axis reads the input (the conv's output is its bias: not a
    trim) or the output is empty."""
    begin, end = pads
    out = (size + begin + end - ((kernel - 1) * dilation + 1)) // stride + 1
    if out < 1:
        return None
    live = live_taps(size, out, kernel, stride, dilation, begin)
    if not any(live):
        return None
    start = live.index(True)
    stop = kernel - 1 - live[::-1].index(True)
    return AxisTrim(min(start, begin // dilation), min(kernel - 1 - stop, end // dilation))


class TrimKernel(Pass):
    name = "trim-kernel"
    exact = True
    summary = "drop kernel rows/columns that only ever read a conv's zero padding"
    canonical = True  # fewer MACs and weights for the same output, on every target

    def sites(self, model: Model) -> list[Site]:
        found = []
        for node in model.graph.nodes:
            info = conv_info(node)
            if info is None:
                continue
            try:
                shape = model.shape(node.inputs[0].name)
            except Exception:  # no shape analysis for it: nothing to decide on
                continue
            if len(shape) != 4 or not all(isinstance(v, int) for v in shape[2:]):
                continue
            trims = [axis_trim(int(shape[2 + axis]), info.kernel[axis], info.strides[axis],
                               info.dilations[axis], (info.pads[axis], info.pads[axis + 2]))
                     for axis in (0, 1)]
            if None in trims or not any(t.start or t.end for t in trims if t):
                continue
            (kh, kw), (th, tw) = info.kernel, trims
            assert th is not None and tw is not None
            new = (kh - th.start - th.end, kw - tw.start - tw.end)
            found.append(Site(
                self.name, node.name, (node.name,),
                f"{kh}x{kw} kernel -> {new[0]}x{new[1]} (the dropped taps only read padding "
                f"of its {shape[2]}x{shape[3]} input)",
                {"kernel": [kh, kw], "trimmed": list(new),
                 "taps": [th.start, th.end, tw.start, tw.end]},
            ))
        return found

    def canonical_note(self, applied: Sequence[Site]) -> str | None:
        if not applied:
            return None
        def size(kernel: object) -> str:
            return "x".join(str(v) for v in kernel)  # type: ignore[attr-defined]

        return ("kernel taps that only read padding dropped (exact at this input size): "
                + ", ".join(f"{s.id} {size(s.detail['kernel'])} -> {size(s.detail['trimmed'])}"
                            for s in applied))

    def apply(self, model: Model, site: Site) -> Model:
        new, node, info = conv_to_edit(model, site)
        top, bottom, left, right = (int(v) for v in site.detail["taps"])  # type: ignore[union-attr]
        kh, kw = info.kernel
        weight = info.weight[:, :, top:kh - bottom, left:kw - right]
        (dh, dw), pads = info.dilations, info.pads
        set_weight(new, node, "weight_trimmed", weight)
        node.attrs["pads"] = [pads[0] - top * dh, pads[1] - left * dw,
                              pads[2] - bottom * dh, pads[3] - right * dw]
        node.attrs["kernel_shape"] = list(weight.shape[2:])
        node.attrs.pop("auto_pad", None)
        return finish(new)
