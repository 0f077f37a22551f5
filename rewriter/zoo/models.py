"""The zoo's four networks, laid out as torchvision builds (and torch.onnx exports) them.

Backbones return their feature taps keyed by output stride, so the classifier, detector
and segmentation heads reuse one backbone definition each. Node names follow torchvision's
module paths: `features.<i>.<part>.<op>` in backbones (features.0 is the stem), then
`classifier.*` or `head.*`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rewriter.zoo._builder import Activation, Tensor, _NetBuilder, make_divisible

# torchvision MobileNetV2: (expansion t, channels c, repeats n, first stride s)
MOBILENETV2_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
    (6, 160, 3, 2), (6, 320, 1, 1))


@dataclass(frozen=True)
class Bneck:
    """One row of torchvision's mobilenet_v3_small table (channels before width scaling)."""

    kernel: int
    expanded: int
    out: int
    se: bool
    act: Activation
    stride: int


MOBILENETV3_SMALL_BLOCKS: tuple[Bneck, ...] = tuple(Bneck(*row) for row in (
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1), (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1), (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1), (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2), (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1)))

SSD_ANCHORS = 6


@dataclass(frozen=True)
class Features:
    """A backbone's output (`last`) and the last tensor at each output stride."""

    last: Tensor
    by_stride: dict[int, Tensor]


def mobilenetv2_features(b: _NetBuilder, x: Tensor, width: float, last_channels: int) -> Features:
    """Stem, the 17 inverted residual blocks, and the final 1x1 conv -> BN -> ReLU6."""
    cin = make_divisible(32 * width)
    x = b.conv_bn_act(x, cin, "features.0", "relu6", kernel=3, stride=2)
    stride, index = 2, 1
    taps: dict[int, Tensor] = {}
    for t, c, n, s in MOBILENETV2_BLOCKS:
        cout = make_divisible(c * width)
        for i in range(n):
            block_stride = s if i == 0 else 1
            x = b.inverted_residual(x, f"features.{index}", hidden=cin * t, cout=cout,
                                    kernel=3, stride=block_stride, act="relu6")
            stride *= block_stride
            taps[stride] = x
            cin, index = cout, index + 1
    x = b.conv_bn_act(x, last_channels, f"features.{index}", "relu6")
    taps[stride] = x
    return Features(last=x, by_stride=taps)


def mobilenetv3_features(b: _NetBuilder, x: Tensor, width: float) -> Features:
    """Stem (3x3 s2 + hardswish), the 11 bnecks of mobilenet_v3_small, and the last 1x1 conv
    to 6x the last block's channels + hardswish."""
    cin = make_divisible(16 * width)
    x = b.conv_bn_act(x, cin, "features.0", "hardswish", kernel=3, stride=2)
    stride = 2
    taps: dict[int, Tensor] = {}
    for index, row in enumerate(MOBILENETV3_SMALL_BLOCKS, start=1):
        hidden = make_divisible(row.expanded * width)
        cout = make_divisible(row.out * width)
        x = b.inverted_residual(
            x, f"features.{index}", hidden=hidden, cout=cout, kernel=row.kernel,
            stride=row.stride, act=row.act,
            se_channels=make_divisible(hidden // 4, 8) if row.se else None)
        stride *= row.stride
        taps[stride] = x
        cin = cout
    x = b.conv_bn_act(x, 6 * cin, f"features.{len(MOBILENETV3_SMALL_BLOCKS) + 1}", "hardswish")
    taps[stride] = x
    return Features(last=x, by_stride=taps)


def _classifier_input(b: _NetBuilder, x: Tensor) -> Tensor:
    return b.flatten(b.global_pool(x, "pool"), "flatten")


def mobilenetv2(b: _NetBuilder, x: Tensor, width: float, num_classes: int) -> dict[str, Tensor]:
    """torchvision mobilenet_v2: backbone, GAP, Flatten, Gemm -> 'logits'."""
    features = mobilenetv2_features(b, x, width, make_divisible(1280 * max(1.0, width)))
    logits = b.gemm(_classifier_input(b, features.last), num_classes, "classifier.gemm")
    return {"logits": logits}


def mobilenetv3(b: _NetBuilder, x: Tensor, width: float, num_classes: int) -> dict[str, Tensor]:
    """torchvision mobilenet_v3_small: backbone, GAP, Flatten, Gemm (1024*width) +
    hardswish, Gemm -> 'logits'."""
    features = mobilenetv3_features(b, x, width)
    hidden = b.gemm(_classifier_input(b, features.last), make_divisible(1024 * width),
                    "classifier.0.gemm", gain=2.0)
    hidden = b.act(hidden, "hardswish", "classifier.0.act")
    return {"logits": b.gemm(hidden, num_classes, "classifier.1.gemm")}


def _ssdlite_head(b: _NetBuilder, x: Tensor, cout: int, prefix: Tensor) -> Tensor:
    """SSDLite prediction: depthwise 3x3 -> BN -> ReLU6 -> 1x1 conv with bias."""
    y = b.conv_bn_act(x, x.channels, f"{prefix}.dw", "relu6", kernel=3,
                      group=x.channels)
    return b.conv(y, cout, f"{prefix}.pred", gain=1.0)


def ssdlite(b: _NetBuilder, x: Tensor, width: float, num_classes: int) -> dict[str, Tensor]:
    """SSDLite on a MobileNetV2 backbone: box and class heads on the last stride-16 block
    (96*width channels) and on the final 1x1 conv (640*width channels, stride 32)."""
    features = mobilenetv2_features(b, x, width, make_divisible(640 * width))
    outputs: dict[str, Tensor] = {}
    for i, fmap in enumerate((features.by_stride[16], features.last)):
        outputs[f"boxes_{i}"] = _ssdlite_head(b, fmap, SSD_ANCHORS * 4, f"head.box.{i}")
        outputs[f"scores_{i}"] = _ssdlite_head(b, fmap, SSD_ANCHORS * num_classes,
                                               f"head.cls.{i}")
    return outputs


def lraspp(b: _NetBuilder, x: Tensor, width: float, num_classes: int) -> dict[str, Tensor]:
    """LR-ASPP on a MobileNetV3-small backbone (high: the last 1x1 conv at stride 32, low:
    the 24*width stage at stride 8); full-resolution logits 'out'."""
    features = mobilenetv3_features(b, x, width)
    high, low = features.last, features.by_stride[8]
    inter = make_divisible(128 * width)
    branch = b.conv_bn_act(high, inter, "head.cbr", "relu")
    scale = b.conv(b.global_pool(high, "head.scale.pool"), inter, "head.scale.conv", gain=1.0)
    scale = b.act(scale, "sigmoid", "head.scale.sigmoid")
    up = b.resize(b.mul(branch, scale, "head.gate"), 4, "head.up")
    low_proj = b.act(b.conv(low, make_divisible(32 * width), "head.low.conv"), "relu",
                     "head.low.act")
    cat = b.concat([up, low_proj], "head.concat")
    logits = b.conv(cat, num_classes, "head.classifier", gain=1.0)
    return {"out": b.resize(logits, 8, "head.out_up")}
