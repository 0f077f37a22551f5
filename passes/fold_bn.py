"""fold-bn: fold an inference-mode BatchNormalization into the Conv before it (exact).

Rule: Conv (or ConvTranspose, group 1) whose output is read only by a BatchNormalization.
Math: s = gamma / sqrt(var + eps); W' = W * s along the output-channel axis (axis 0 for
Conv, axis 1 for ConvTranspose); b' = (b - mean) * s + beta (b = 0 if the conv had none).
The BN node disappears; the conv writes the BN's output tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rewriter.graph_io import Model
from rewriter.graph_query import const_value, is_empty_input, only_consumer
from rewriter.passes.base import Namer, Pass, Site, constant, finish


class FoldBatchNorm(Pass):
    name = "fold-bn"
    exact = True
    summary = "fold BatchNormalization into the preceding Conv (scale weights, shift bias)"
    canonical = True  # free on targets fusing BN into the conv, so the search starts after it

    def canonical_note(self, applied: Sequence[Site]) -> str | None:
        return "BatchNormalization folded into the convs (exact; free on targets that fuse BN)"

    def sites(self, model: Model) -> list[Site]:
        found = []
        for node in model.graph.nodes:
            if node.op not in ("Conv", "ConvTranspose") or const_value(node.inputs[1]) is None:
                continue
            if node.op == "ConvTranspose" and int(node.attrs.get("group", 1)) != 1:
                continue
            if len(node.inputs) > 2 and not is_empty_input(node.inputs[2]) and const_value(
                    node.inputs[2]) is None:
                continue
            bn = only_consumer(node.outputs[0], model.graph.outputs)
            if bn is None or bn.op != "BatchNormalization" or len(bn.outputs) != 1:
                continue
            if any(const_value(t) is None for t in bn.inputs[1:5]):
                continue
            found.append(Site(self.name, node.name, (node.name, bn.name),
                              f"fold {bn.name} into {node.name}"))
        return found

    def apply(self, model: Model, site: Site) -> Model:
        new = model.copy()
        conv, bn = new.node(site.nodes[0]), new.node(site.nodes[1])
        gamma, beta, mean, var = (const_value(t).astype(np.float64) for t in bn.inputs[1:5])
        eps = float(bn.attrs.get("epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        weight = const_value(conv.inputs[1])
        axis = 0 if conv.op == "Conv" else 1
        shape = [1] * weight.ndim
        shape[axis] = -1
        channels = weight.shape[axis]
        has_bias = len(conv.inputs) > 2 and not is_empty_input(conv.inputs[2])
        bias = const_value(conv.inputs[2]).astype(np.float64) if has_bias else np.zeros(channels)
        namer = Namer(new.graph)
        new_w = (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype)
        new_b = ((bias - mean) * scale + beta).astype(weight.dtype)
        conv.inputs[1] = constant(namer, f"{conv.name}.weight_bnfold", new_w)
        bias_t = constant(namer, f"{conv.name}.bias_bnfold", new_b)
        if len(conv.inputs) > 2:
            conv.inputs[2] = bias_t
        else:
            conv.inputs.append(bias_t)
        out = bn.outputs[0]
        bn.outputs.clear()
        bn.inputs.clear()
        conv.outputs[0] = out
        return finish(new)
