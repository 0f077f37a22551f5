"""Deterministic small CNNs built with onnx.helper, for the demo and the tests.

`build(name, ...)` returns an `onnx.ModelProto` laid out as torchvision builds and
torch.onnx exports the network: one float32 input "input" [batch, 3, R, R] with a symbolic
batch by default, every weight an initializer, every node uniquely named after its
torchvision module path (e.g. "features.3.expand.conv", "features.3.expand.bn",
"features.3.expand.act", "features.3.dw.conv", "features.3.project.conv", "features.3.add",
"classifier.gemm"). Weights are seeded (He-normal before ReLU-like activations, 1/fan_in
variance for linear layers) and BatchNormalization running statistics are set from a numpy
forward pass on a probe batch, as training would leave them, so that every output has a
healthy scale that depends on the input (see `_builder`). Small single-purpose test models,
built with the same builder, live with the tests (tests/fixture_models.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import onnx

from rewriter.zoo import models
from rewriter.zoo._builder import Tensor, _NetBuilder, check_batch, check_opset, make_divisible

__all__ = ["NAMES", "build", "make_divisible"]

NAMES: tuple[str, ...] = ("mobilenetv2", "mobilenetv3", "ssdlite", "lraspp")

MAX_WIDTH = 4.0
MIN_RESOLUTION = 32


@dataclass(frozen=True)
class _Spec:
    make: Callable[[_NetBuilder, Tensor, float, int], dict[str, Tensor]]
    fold_bn: bool  # BN folded into the convs by default (as a deployed export would be)
    num_classes: int
    resolution_multiple: int  # the resolution must be a multiple of this


_SPECS: dict[str, _Spec] = {
    "mobilenetv2": _Spec(models.mobilenetv2, fold_bn=False, num_classes=1000,
                         resolution_multiple=1),
    "mobilenetv3": _Spec(models.mobilenetv3, fold_bn=True, num_classes=1000,
                         resolution_multiple=1),
    "ssdlite": _Spec(models.ssdlite, fold_bn=False, num_classes=21, resolution_multiple=1),
    "lraspp": _Spec(models.lraspp, fold_bn=True, num_classes=21, resolution_multiple=32),
}
assert tuple(_SPECS) == NAMES


def build(name: str, *, width: float = 1.0, resolution: int = 224, seed: int = 0,
          fold_bn: bool | None = None, opset: int = 13, batch: str | int = "N",
          num_classes: int | None = None, static_padding: bool = False) -> onnx.ModelProto:
    """Build zoo model `name` (one of NAMES).

    width scales every channel count (torchvision's width_mult, rounded to multiples of 8);
    resolution is the input's height and width (>= 32; lraspp needs a multiple of 32);
    the same arguments always give byte-identical models. fold_bn=None keeps each model's
    default: BatchNormalization nodes for mobilenetv2 and ssdlite, BN folded into conv
    weights and biases for mobilenetv3 and lraspp. opset is 11..21 (default 13); batch is
    the batch dim: a name (symbolic, default "N") or a positive integer. num_classes
    defaults to 1000 for the classifiers and 21 for ssdlite and lraspp. static_padding
    writes every padded conv as an explicit zero Pad node on H/W (`<conv>.pad`) followed
    by the conv with pads 0, as ports of TF "SAME" padding (EfficientNet-Lite's PyTorch
    `static_padding`) export it; the function is the same, and loading folds the Pads
    back (rewriter.canonical).
    """
    model, _ = build_with_probe(name, width=width, resolution=resolution, seed=seed,
                                fold_bn=fold_bn, opset=opset, batch=batch,
                                num_classes=num_classes, static_padding=static_padding)
    return model


def build_with_probe(name: str, *, width: float = 1.0, resolution: int = 224, seed: int = 0,
                     fold_bn: bool | None = None, opset: int = 13, batch: str | int = "N",
                     num_classes: int | None = None, static_padding: bool = False
                     ) -> tuple[onnx.ModelProto, _NetBuilder]:
    """`build`, also returning the builder, whose `probe_inputs` and `probe_outputs` (a
    numpy reference of every output on them) serve tests."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(NAMES)}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (
            math.isfinite(width) and 0 < width <= MAX_WIDTH):
        raise ValueError(f"width must be a number in (0, {MAX_WIDTH:g}], got {width!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or (
            resolution < MIN_RESOLUTION):
        raise ValueError(f"resolution must be an integer >= {MIN_RESOLUTION}, "
                         f"got {resolution!r}")
    if resolution % spec.resolution_multiple:
        raise ValueError(f"{name} needs a resolution divisible by "
                         f"{spec.resolution_multiple}, got {resolution}")
    if num_classes is None:
        num_classes = spec.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    check_opset(opset)
    check_batch(batch)
    fold = spec.fold_bn if fold_bn is None else bool(fold_bn)

    if not isinstance(static_padding, bool):
        raise ValueError(f"static_padding must be a bool, got {static_padding!r}")
    builder = _NetBuilder(seed=seed, opset=opset, fold_bn=fold, batch=batch,
                          static_padding=static_padding)
    x = builder.input("input", 3, resolution)
    outputs = spec.make(builder, x, float(width), num_classes)
    metadata = {"zoo.name": name, "zoo.width": f"{width:g}",
                "zoo.resolution": str(resolution), "zoo.seed": str(seed),
                "zoo.fold_bn": str(fold).lower(), "zoo.num_classes": str(num_classes)}
    if static_padding:  # only then, so that default models stay byte-identical
        metadata["zoo.static_padding"] = "true"
    return builder.build(outputs, name, metadata), builder
