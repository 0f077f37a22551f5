"""Small single-purpose models for the pass tests, built like the zoo's networks.

Each returns an `onnx.ModelProto` with one float32 input "input" [N, C, R, R] (symbolic
batch "N"), seeded weights with a healthy output scale, unique node names, opset 13 by
default, and one output ("output", or "logits" after a Gemm).
"""

from __future__ import annotations

import onnx

from rewriter.zoo._builder import Tensor, _NetBuilder


def _finish(b: _NetBuilder, outputs: dict[str, Tensor], name: str) -> onnx.ModelProto:
    return b.build(outputs, name, {"zoo.fixture": name})


def linear_conv_pair(cin: int = 8, mid: int = 12, cout: int = 10, kernel: int = 3,
                     pads: int = 1, stride: int = 1, bias1: bool = True, bias2: bool = True,
                     depthwise2: bool = False, resolution: int = 16, seed: int = 0,
                     opset: int = 13) -> onnx.ModelProto:
    """A linear 1x1 conv (cin -> mid, bias ~ N(0, 0.5)) feeding a KxK conv directly
    (mid -> cout; with depthwise2, group = mid and cout = mid), then Relu -> "output".

    The 1x1 -> KxK fusion is exact only with the border term where the KxK conv pads.
    """
    b = _NetBuilder(seed=seed, opset=opset)
    x = b.input("input", cin, resolution)
    y = b.conv(x, mid, "conv1x1", bias=bias1, gain=1.0, bias_std=0.5)
    group = mid if depthwise2 else 1
    y = b.conv(y, mid if depthwise2 else cout, "conv_kxk", kernel=kernel, stride=stride,
               pads=pads, group=group, bias=bias2)
    return _finish(b, {"output": b.act(y, "relu", "relu")}, "linear_conv_pair")


def depthwise_multiplier(channels: int = 8, multiplier: int = 2, kernel: int = 3,
                         resolution: int = 16, seed: int = 0,
                         opset: int = 13) -> onnx.ModelProto:
    """1x1 conv 3 -> channels + Relu, a depthwise KxK conv with a channel multiplier
    (group = channels, weight [channels * multiplier, 1, K, K], bias) + Relu, then a 1x1
    conv -> 16 channels "output"."""
    b = _NetBuilder(seed=seed, opset=opset)
    x = b.input("input", 3, resolution)
    y = b.act(b.conv(x, channels, "pw.conv"), "relu", "pw.act")
    y = b.conv(y, channels * multiplier, "dw.conv", kernel=kernel, group=channels)
    y = b.act(y, "relu", "dw.act")
    return _finish(b, {"output": b.conv(y, 16, "project.conv", gain=1.0)},
                   "depthwise_multiplier")


def grouped_conv(cin: int = 16, cout: int = 24, groups: int = 4, kernel: int = 3,
                 resolution: int = 16, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """1x1 conv 3 -> cin + Relu, a grouped KxK conv cin -> cout (group = groups) + Relu,
    then a 1x1 conv -> 16 channels "output"."""
    b = _NetBuilder(seed=seed, opset=opset)
    x = b.input("input", 3, resolution)
    y = b.act(b.conv(x, cin, "pw1.conv"), "relu", "pw1.act")
    y = b.act(b.conv(y, cout, "grouped.conv", kernel=kernel, group=groups), "relu",
              "grouped.act")
    return _finish(b, {"output": b.conv(y, 16, "pw2.conv", gain=1.0)}, "grouped_conv")


def residual_concat(channels: int = 20, seed: int = 0, resolution: int = 16,
                    sigmoid_gate: bool = True, opset: int = 13) -> onnx.ModelProto:
    """Channel groups coupled across a residual Add and split by a Concat:

    stem 3x3 conv 3 -> channels -> BN -> Relu; branch a = 1x1 conv -> Relu;
    sum = Add(stem, a); d = depthwise 3x3(sum) -> Relu; b = 1x1 conv d -> 12 -> Relu
    (times a Sigmoid gate GAP -> 1x1 conv -> Sigmoid when sigmoid_gate);
    Concat(d, b) -> 1x1 conv -> 8 -> GAP -> Flatten -> Gemm -> 10 "logits".
    `channels` defaults to 20, deliberately not a multiple of 8, 16 or 32.
    """
    b = _NetBuilder(seed=seed, opset=opset, fold_bn=False)
    x = b.input("input", 3, resolution)
    stem = b.conv_bn_act(x, channels, "stem", "relu", kernel=3)
    branch = b.act(b.conv(stem, channels, "branch_a.conv"), "relu", "branch_a.act")
    total = b.add(stem, branch, "residual.add")
    dw = b.act(b.conv(total, channels, "dw.conv", kernel=3, group=channels), "relu", "dw.act")
    side = b.act(b.conv(dw, 12, "branch_b.conv"), "relu", "branch_b.act")
    if sigmoid_gate:
        gate = b.conv(b.global_pool(side, "branch_b.gate.pool"), 12, "branch_b.gate.conv",
                      gain=1.0)
        side = b.mul(side, b.act(gate, "sigmoid", "branch_b.gate.sigmoid"),
                     "branch_b.gate.mul")
    mixed = b.conv(b.concat([dw, side], "concat"), 8, "mix.conv", gain=1.0)
    pooled = b.flatten(b.global_pool(mixed, "pool"), "flatten")
    return _finish(b, {"logits": b.gemm(pooled, 10, "classifier.gemm")}, "residual_concat")


def se_block(channels: int = 16, squeeze: int = 8, out_channels: int = 24,
             resolution: int = 16, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """A MobileNetV3 block as paddle2onnx exports it: 3x3 conv 3 -> channels ->
    hardswish spelled Mul(x, Div(Clip(Add(x, 3), 0, 6), 6)), depthwise 3x3 -> the same
    hardswish, squeeze-excite (GAP, 1x1 conv, Relu, 1x1 conv, HardSigmoid, Mul), then a
    1x1 projection -> out_channels "output"."""
    b = _NetBuilder(seed=seed, opset=opset)
    x = b.input("input", 3, resolution)
    y = b.act(b.conv(x, channels, "stem.conv", kernel=3), "hardswish_paddle", "stem.act")
    y = b.conv(y, channels, "dw.conv", kernel=3, group=channels)
    y = b.squeeze_excite(b.act(y, "hardswish_paddle", "dw.act"), squeeze, "se")
    return _finish(b, {"output": b.conv(y, out_channels, "project.conv", gain=1.0)},
                   "se_block")
