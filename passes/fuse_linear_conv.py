"""fuse-linear-conv: a 1x1 conv feeding a KxK conv with nothing between becomes one conv (exact).

Rule: conv A (1x1, stride 1, no padding, weights W1 [M, Cin], bias b1) whose output is read
only by conv B (W2 [Cout, M/g, K, K], bias b2, any stride/padding/dilation/groups).
Math: B(A(x)) = conv(x, W') + B_map with W'[o, i] = sum_m W2d[o, m] * W1[m, i], where W2d
is B's weight made dense (block diagonal; for a depthwise B, W'[o, i] = W2[o, 0] * W1[o, i]).
The bias is not a per-channel constant at the borders: B convolves b1 everywhere inside the
image but zeros in its padding, so B_map = conv(zero-pad(b1 broadcast over H x W), W2) + b2
is an input-independent map [1, Cout, H', W']. Where b1 == 0 or B has no padding, B_map is
constant per channel and folds into the fused conv's bias; otherwise the fused conv is
followed by an Add of the constant map, which needs static H and W.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.conv_math import conv2d, grouped_to_dense
from rewriter.graph_io import Model
from rewriter.graph_query import ConvInfo, conv_attrs, conv_info, only_consumer
from rewriter.passes.base import (
    Effect,
    Fusion,
    Namer,
    Pass,
    SearchView,
    Site,
    constant,
    finish,
    kernel_claim,
)


class FuseLinearConv(Pass):
    name = "fuse-linear-conv"
    exact = True
    summary = "fuse a 1x1 conv into the KxK conv it feeds directly (exact border term)"
    order = 6
    precedence = 50

    def effect(self, site: Site, view: SearchView) -> Effect | None:
        """A's kernel is removed; B's becomes a dense KxK conv Cin -> Cout reading A's
        input (weights Cout*Cin*K*K instead of M*Cin + Cout*(M/g)*K*K); with a border
        term, an elementwise Add of a [Cout, H', W'] constant follows (Cout*H'*W' more
        weights). Claims both kernels."""
        fusion = Fusion.of(site, view, bool(site.detail.get("border_term", False)))
        if fusion is None:
            return None
        return Effect(fusion=fusion, claims=frozenset(
            {kernel_claim(fusion.first), kernel_claim(fusion.second)}))

    def sites(self, model: Model) -> list[Site]:
        found = []
        for node in model.graph.nodes:
            first = conv_info(node)
            if first is None or not first.is_pointwise:
                continue
            nxt = only_consumer(node.outputs[0], model.graph.outputs)
            second = conv_info(nxt) if nxt is not None else None
            if second is None or nxt.inputs[0] is not node.outputs[0]:
                continue
            border = first.bias is not None and bool(np.any(first.bias)) and any(second.pads)
            found.append(Site(
                self.name, node.name, (node.name, nxt.name),
                f"fuse 1x1 {node.name} ({first.cin}->{first.cout}) into "
                f"{second.kernel[0]}x{second.kernel[1]} {nxt.name} ({second.cin}->{second.cout}"
                f"{', group ' + str(second.groups) if second.groups > 1 else ''})",
                {"border_term": border},
            ))
        return found

    def apply(self, model: Model, site: Site) -> Model:
        new = model.copy()
        a, b = new.node(site.nodes[0]), new.node(site.nodes[1])
        first, second = conv_info(a), conv_info(b)
        assert first is not None and second is not None
        w1 = grouped_to_dense(first.weight, first.groups)[:, :, 0, 0].astype(np.float64)
        w2 = grouped_to_dense(second.weight, second.groups).astype(np.float64)
        fused_w = np.einsum("omhw,mi->oihw", w2, w1).astype(second.weight.dtype)
        bias_map = _bias_map(new, a, first, second)
        namer = Namer(new.graph)
        fused = gs.Node(
            "Conv", name=b.name,
            attrs=conv_attrs(second, groups=1),
            inputs=[a.inputs[0], constant(namer, f"{b.name}.weight_fused", fused_w)],
        )
        out = b.outputs[0]
        per_channel = bias_map[:, :, :1, :1]
        scale = max(float(np.max(np.abs(bias_map))), 1e-12)
        if np.allclose(bias_map, np.broadcast_to(per_channel, bias_map.shape),
                       rtol=0.0, atol=1e-7 * scale):
            fused.inputs.append(constant(namer, f"{b.name}.bias_fused",
                                         per_channel.reshape(-1).astype(second.weight.dtype)))
            fused.outputs = [out]
            nodes = [fused]
        else:
            inner = gs.Variable(namer(f"{b.name}.fused_out"), dtype=out.dtype)
            fused.outputs = [inner]
            add = gs.Node("Add", name=f"{b.name}.border_bias",
                          inputs=[inner, constant(namer, f"{b.name}.bias_map",
                                                  bias_map.astype(second.weight.dtype))],
                          outputs=[out])
            nodes = [fused, add]
        for old in (a, b):
            old.inputs.clear()
            old.outputs.clear()
        new.graph.nodes.extend(nodes)
        return finish(new)


def _bias_map(model: Model, a: gs.Node, first: ConvInfo, second: ConvInfo) -> np.ndarray:
    """What conv B outputs when fed conv A's bias alone: [1, Cout, H', W'] (float64)."""
    b1 = first.bias if first.bias is not None else np.zeros(first.cout)
    b2 = second.bias if second.bias is not None else np.zeros(second.cout)
    if not np.any(b1) or not any(second.pads):
        # Per-channel constant: every output position sees the full kernel over b1.
        w2 = grouped_to_dense(second.weight, second.groups).astype(np.float64)
        const = np.einsum("omhw,m->o", w2, b1.astype(np.float64)) + b2
        return const.reshape(1, -1, 1, 1)
    h, w = model.shape(a.outputs[0])[2:]
    image = np.broadcast_to(b1.astype(np.float64).reshape(1, -1, 1, 1), (1, first.cout, h, w))
    return conv2d(image, second.weight, b2, second.strides, second.pads, second.dilations,
                  second.groups)
