"""fuse-ibn: an inverted bottleneck's 1x1 expand + act + KxK depthwise -> one KxK dense conv.

NOT exact: it changes the architecture (the activation between the two convs is dropped),
so it runs only when the user allows architecture changes, and the model it writes is
labelled "fine-tune before use".

Rule: conv E (1x1, stride 1, no padding, weights W_E [M, Cin], bias b_E), then an
activation, then a depthwise KxK conv D (M channels, multiplier 1, weights W_D [M, 1, K, K],
bias b_D), E's and the activation's outputs read by nothing else, BatchNormalization
already folded. Replacement: one dense KxK conv F (Cin -> M) with D's stride, padding and
dilation, writing D's output, so D's activation, the SE block and the projection follow
unchanged. This is the "fused-IBN" of EfficientNet-EdgeTPU: on accelerators a dense 3x3
conv over few input channels beats 1x1 + depthwise.

Initial weights compose the linear parts as if the activation were the identity:
W_F[o, i] = W_D[o, 0] * W_E[o, i] and b_F[o] = b_D[o] + sum(W_D[o, 0]) * b_E[o].
F takes E's node name (so channel groups, named after their first producer, keep their
ids) and is listed in `model.changes.refit`: rewriter.reconstruct.refit then fits its
weights from calibration data, by ridge least squares from im2col patches of F's input in
the rewritten model (so earlier refits' errors are accounted for, not piled up) to D's
output in the original model.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.analysis.blocks import follow_bn_act
from rewriter.graph_io import Model
from rewriter.graph_query import conv_attrs, conv_info
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


class FuseIBN(Pass):
    name = "fuse-ibn"
    exact = False
    summary = "fuse an IBN's 1x1 expand + act + KxK depthwise into one KxK dense conv"
    order = 3
    precedence = 40  # before fuse-linear-conv: it wins on a shared expansion conv

    def effect(self, site: Site, view: SearchView) -> Effect | None:
        """E's kernel is removed (E and the activation do not run); D's kernel becomes a
        dense KxK conv Cin -> M reading E's input, weights M*Cin*K*K instead of M*K*K +
        M*Cin. Claims both kernels."""
        fusion = Fusion.of(site, view)
        if fusion is None:
            return None
        return Effect(fusion=fusion, claims=frozenset(
            {kernel_claim(fusion.first), kernel_claim(fusion.second)}))

    def sites(self, model: Model) -> list[Site]:
        found = []
        for node in model.graph.nodes:
            expand = conv_info(node)
            if expand is None or not expand.is_pointwise or expand.groups != 1:
                continue
            chain = follow_bn_act(model, node.outputs[0])
            if chain.batchnorm or not chain.activation or len(chain.output.outputs) != 1:
                continue
            dw_node = chain.output.outputs[0]
            dw = conv_info(dw_node)
            if (dw is None or not dw.is_depthwise or dw.cout != dw.cin
                    or dw_node.inputs[0] is not chain.output or dw.cin != expand.cout):
                continue
            k = dw.kernel
            found.append(Site(
                self.name, node.name, (node.name, *(n.name for n in chain.nodes), dw_node.name),
                f"fuse 1x1 {node.name} ({expand.cin}->{expand.cout}) + {chain.activation} + "
                f"{k[0]}x{k[1]} depthwise {dw_node.name} into a {k[0]}x{k[1]} dense conv "
                f"{expand.cin}->{dw.cout}",
                {"cin": expand.cin, "channels": dw.cout, "kernel": k[0], "stride": dw.strides[0]},
            ))
        return found

    def apply(self, model: Model, site: Site) -> Model:
        new = model.copy()
        e_node, d_node = new.node(site.nodes[0]), new.node(site.nodes[-1])
        expand, dw = conv_info(e_node), conv_info(d_node)
        assert expand is not None and dw is not None
        w_e = expand.weight[:, :, 0, 0].astype(np.float64)
        b_e = expand.bias if expand.bias is not None else np.zeros(expand.cout)
        b_d = dw.bias if dw.bias is not None else np.zeros(dw.cout)
        weight = dw.weight[:, 0][:, None].astype(np.float64) * w_e[:, :, None, None]
        bias = b_d + dw.weight.reshape(dw.cout, -1).sum(1) * b_e
        x, y = e_node.inputs[0], d_node.outputs[0]
        namer = Namer(new.graph)
        dtype = dw.weight.dtype
        # The fused conv takes the expansion conv's name: channel groups are named after
        # their first producer, so the groups' ids (the channel passes' sites) stay valid.
        fused = gs.Node("Conv", name=e_node.name, attrs=conv_attrs(dw, groups=1),
                        inputs=[x, constant(namer, f"{d_node.name}.weight_fused_ibn",
                                            weight.astype(dtype)),
                                constant(namer, f"{d_node.name}.bias_fused_ibn",
                                         np.asarray(bias).astype(dtype))],
                        outputs=[y])
        for name in site.nodes:
            old = new.node(name)
            old.inputs.clear()
            old.outputs.clear()
        new.graph.nodes.append(fused)
        new.changes.replace_refit(list(site.nodes), fused.name)
        new.changes.passes.append(f"{self.name}@{site.id}")
        return finish(new)
