"""Seeded samples of the op space (OpSpecs) to measure, in named spaces (`SPACES`).

``rewriter cost measure -n 3000 --seed 0 --threads 1 -o FILE.csv`` samples, times and
writes a measurement set; ``--space wide|oblong|stem|layout ... --append`` adds rows from
other corners of the op space (the bundled cost/data/cpu-ort.csv was made this way, see
its profile).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from rewriter.cost.opspec import (
    CONV_KINDS,
    OpSpec,
    ceil_div,
)


def _channels(rng: np.random.Generator, p: int, lo: int = 8, hi: int = 512) -> int:
    """Channel counts: multiples of P, P +- 1, and arbitrary values in [lo, hi]."""
    r = rng.random()
    if r < 0.4:
        c = int(rng.integers(1, hi // p + 1)) * p
    elif r < 0.6:
        c = int(rng.integers(1, hi // p + 1)) * p + int(rng.choice([-1, 1]))
    else:
        c = int(rng.integers(lo, hi + 1))
    return min(hi, max(lo, c))


_KIND_WEIGHTS = {"conv": 0.22, "conv1x1": 0.2, "dwconv": 0.2, "groupconv": 0.08, "gemm": 0.05,
                 "pool": 0.06, "gap": 0.04, "elementwise": 0.09, "resize": 0.03, "concat": 0.03}
_ACTS = ("", "", "relu", "relu6", "hardswish", "sigmoid", "silu")
MAX_MACS = 250_000_000
MAX_ELEMENTS = 3_300_000


def _sampled_conv(rng: np.random.Generator, kind: str, cin: int, cout: int, size: int,
                  kernel: int, stride: int, act: str) -> OpSpec:
    """A conv of `kind`: depthwise with multiplier 1 or 2, grouped with 2, 4 or 8 groups."""
    groups = 1
    if kind == "dwconv":
        groups, cout = cin, cin * int(rng.choice([1, 1, 1, 2]))
    elif kind == "groupconv":
        groups = int(rng.choice([2, 4, 8]))
        cin, cout = (max(2, c // groups) * groups for c in (cin, cout))
    return OpSpec.conv2d(cin, cout, size, kernel, stride, groups, act)


# (scale, taps): one draw of four, so the draws after it are those of the nearest-only
# sampler before linear resizes were added (the ZigZag data's MAC layers stay reproducible).
_RESIZES = ((2.0, 1), (2.0, 2), (4.0, 2), (0.5, 1))


def _sample_one(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    common = rng.random() < 0.7
    size = int(rng.choice([7, 14, 28, 56, 112])) if common else int(rng.integers(7, 113))
    stride = int(rng.choice([1, 2], p=[0.75, 0.25]))
    act = str(rng.choice(_ACTS))
    cin, cout = _channels(rng, p), _channels(rng, p)
    if kind in CONV_KINDS:
        kernel = 1 if kind == "conv1x1" else int(rng.choice([3, 5], p=[0.8, 0.2]))
        return _sampled_conv(rng, kind, cin, cout, size, kernel, stride, act)
    if kind == "gemm":
        return OpSpec("gemm", cin=_channels(rng, p, 16, 2048), cout=_channels(rng, p, 16, 2048),
                      act=act)
    if kind == "pool":
        kernel = int(rng.choice([2, 3]))  # 2x2 stride 2 unpadded, or 3x3 padded by 1
        stride, pad = (2, 0) if kernel == 2 else (stride, 1)
        out = (size + 2 * pad - kernel) // stride + 1
        return OpSpec("pool", cin=cin, cout=cin, h_in=size, w_in=size, h_out=out, w_out=out,
                      kh=kernel, kw=kernel, stride=stride)
    if kind == "gap":
        return OpSpec("gap", cin=cin, cout=cin, h_in=size, w_in=size)
    if kind == "resize":  # upsampling x2 (nearest or linear), x4 (linear); nearest /2
        scale, taps = _RESIZES[int(rng.integers(len(_RESIZES)))]
        size = min(size, 56) // 2 * 2  # even, so /2 is exact
        out = int(size * scale)
        return OpSpec("resize", cin=cin, cout=cin, h_in=size, w_in=size, h_out=out, w_out=out,
                      kh=taps, kw=taps)
    n_inputs = int(rng.choice([2, 2, 3]))
    if kind == "concat":
        part = max(1, cin // n_inputs)
        return OpSpec("concat", cin=part, cout=part * n_inputs, h_in=size, w_in=size,
                      h_out=size, w_out=size, n_inputs=n_inputs)
    if rng.random() < 0.3:  # a standalone activation ('' is built as a Relu)
        return OpSpec("elementwise", cin=cin, cout=cin, h_in=size, w_in=size, h_out=size,
                      w_out=size, act=str(rng.choice(_ACTS[1:])))
    return OpSpec("elementwise", cin=cin, cout=cin, h_in=size, w_in=size, h_out=size,
                  w_out=size, n_inputs=n_inputs, act=act if rng.random() < 0.3 else "")


def _modest(spec: OpSpec) -> bool:
    return (spec.macs <= MAX_MACS and spec.input_elements <= MAX_ELEMENTS
            and spec.output_elements <= MAX_ELEMENTS)


_WIDE_SIZES = (1, 1, 2, 3, 4, 7, 10, 14, 20, 24, 28, 40, 48, 56, 80, 112)


def _log_channels(rng: np.random.Generator, p: int, hi: int = 1280, snap: float = 0.4
                  ) -> int:
    """Log-uniform over 8-`hi`, rounded to a multiple of P with probability `snap`."""
    c = int(round(math.exp(rng.uniform(math.log(8), math.log(hi)))))
    return max(p, round(c / p) * p) if rng.random() < snap else c


def _sample_wide(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """A MAC layer from the corners the default space samples thinly: maps from 1x1 (a
    squeeze-excite conv) to 112x112, channels log-uniform over 8-1280 (few input channels
    at large maps, 576-1280 channels at small ones)."""
    size = int(rng.choice(_WIDE_SIZES))
    stride = 1 if size < 4 else int(rng.choice([1, 2], p=[0.75, 0.25]))
    act = str(rng.choice(_ACTS))
    cin, cout = _log_channels(rng, p), _log_channels(rng, p)
    if kind == "gemm":
        return OpSpec("gemm", cin=cin, cout=cout, act=act)
    kernel = 1 if kind == "conv1x1" or size == 1 else int(rng.choice([3, 5], p=[0.8, 0.2]))
    return _sampled_conv(rng, kind, cin, cout, size, kernel, stride, act)


_WIDE_KIND_WEIGHTS = {"conv": 0.3, "conv1x1": 0.4, "dwconv": 0.2, "groupconv": 0.05,
                      "gemm": 0.05}
_OBLONG_SIDES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 80, 96, 160, 320)


def _widened(square: OpSpec, width: int) -> OpSpec:
    """A square conv spec on a map `width` wide ('same' padding, its stride)."""
    return replace(square, w_in=width, w_out=ceil_div(width, square.stride))


def _sample_oblong(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """A MAC layer of a shape the square spaces never draw: a gemm over 2-512 rows (a
    MatMul over a sequence, as in a text recogniser's head) or a conv on a non-square map
    (text lines such as 12x80, 1xN sequences); channels log-uniform over 8-1280."""
    act = str(rng.choice(_ACTS))
    cin, cout = _log_channels(rng, p), _log_channels(rng, p)
    if kind == "gemm":
        rows = int(round(math.exp(rng.uniform(math.log(2), math.log(512)))))
        return OpSpec("gemm", n=rows, cin=cin, cout=cout, act=act)
    height, width = (int(side) for side in rng.choice(_OBLONG_SIDES, size=2, replace=False))
    stride = 1 if min(height, width) < 4 else int(rng.choice([1, 2], p=[0.75, 0.25]))
    kernel = 1 if kind == "conv1x1" else int(rng.choice([3, 5], p=[0.8, 0.2]))
    return _widened(_sampled_conv(rng, kind, cin, cout, height, kernel, stride, act), width)


_OBLONG_KIND_WEIGHTS = {"conv": 0.25, "conv1x1": 0.25, "dwconv": 0.15, "gemm": 0.35}
_STEM_SIDES = (32, 48, 64, 80, 96, 128, 160, 192, 224, 256, 320, 384, 512, 640)


def _sample_stem(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """The first conv of an image model, which no other space draws (they start at 8 input
    channels): 1, 3 or 4 input channels (grey, RGB, RGBA) on a 32-640 pixel image, square
    or not, 3x3 to 7x7 mostly at stride 2, 8-64 output channels."""
    act = str(rng.choice(_ACTS))
    cin = int(rng.choice([1, 3, 3, 3, 4]))
    cout = _log_channels(rng, p, hi=64, snap=0.5)
    height = int(rng.choice(_STEM_SIDES))
    width = height if rng.random() < 0.6 else int(rng.choice(_STEM_SIDES))
    stride = int(rng.choice([1, 2, 2, 2]))
    kernel = int(rng.choice([3, 3, 3, 5, 7]))
    return _widened(OpSpec.conv2d(cin, cout, height, kernel, stride, 1, act), width)


_STEM_KIND_WEIGHTS = {"conv": 1.0}
_LAYOUT_SIDES = (2, 3, 4, 6, 7, 10, 14, 20, 28, 40, 56, 80, 112, 160, 224, 320)


def _reorder(channels: int, size: int, layout: str) -> OpSpec:
    return OpSpec("reorder", cin=channels, cout=channels, h_in=size, w_in=size, h_out=size,
                  w_out=size, layout=layout)


def _upsampling(rng: np.random.Generator, channels: int, size: int, scale: int) -> OpSpec:
    """`size` x `scale`, nearest or linear, blocked or left in NCHW (drawn in that order)."""
    taps = int(rng.choice([1, 2]))
    return OpSpec("resize", cin=channels, cout=channels, h_in=size, w_in=size,
                  h_out=size * scale, w_out=size * scale, kh=taps, kw=taps,
                  layout=str(rng.choice(["", "nchw"])))


def _sample_layout(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """What a runtime with a blocked layout adds between kernels, and the upsampling a
    segmentation or detection head runs: a layout conversion of one tensor (out of the
    blocked layout, or into it: channels a multiple of 8, at least 16, as onnxruntime
    blocks them), or a nearest or linear x2, x4 or x8 upsampling, blocked or left in NCHW;
    channels log-uniform over 8-1280."""
    channels = _log_channels(rng, p)
    size = int(rng.choice(_LAYOUT_SIDES))
    if kind == "reorder":
        layout = str(rng.choice(["", "nchw"]))
        if layout == "":
            channels = max(16, round(channels / 8) * 8)
        return _reorder(channels, size, layout)
    scale = int(rng.choice([2, 4, 8]))
    return _upsampling(rng, channels, max(1, size // scale), scale)


_LAYOUT_KIND_WEIGHTS = {"reorder": 0.6, "resize": 0.4}


def _sample_head(rng: np.random.Generator, p: int, kind: str) -> OpSpec:
    """The output end of a segmentation or detection head, which the layout space draws
    few of (its channels start at 8 and its largest factor is x8): a class map of 1-64
    channels (log-uniform) upsampled x2-x16, nearest or linear, blocked or left in NCHW, to
    a 48-512 pixel image; or that map's conversion out of the blocked layout."""
    classes = int(round(math.exp(rng.uniform(0.0, math.log(64)))))
    image = int(rng.integers(3, 33)) * 16
    if kind == "reorder":
        return _reorder(classes, image, "nchw")
    scale = int(rng.choice([2, 4, 8, 16]))
    return _upsampling(rng, classes, image // scale, scale)


_HEAD_KIND_WEIGHTS = {"resize": 0.7, "reorder": 0.3}
# name -> (kind weights, sampler)
SPACES = {"default": (_KIND_WEIGHTS, _sample_one), "wide": (_WIDE_KIND_WEIGHTS, _sample_wide),
          "oblong": (_OBLONG_KIND_WEIGHTS, _sample_oblong),
          "stem": (_STEM_KIND_WEIGHTS, _sample_stem),
          "layout": (_LAYOUT_KIND_WEIGHTS, _sample_layout),
          "head": (_HEAD_KIND_WEIGHTS, _sample_head)}


def sample_specs(n: int, seed: int, parallelism: int = 32, space: str = "default"
                 ) -> list[OpSpec]:
    """`n` random specs over the op space, each at most MAX_MACS MACs and MAX_ELEMENTS
    elements per tensor (a few ms on one CPU core); deterministic for a seed.
    space="wide", "oblong" and "stem": MAC layers only, from the corners the default space
    samples thinly or never (see `_sample_wide`, `_sample_oblong`, `_sample_stem`);
    "layout": layout conversions and upsampling (`_sample_layout`); "head": a head's
    class map upsampled to the image (`_sample_head`); all to add to a measurement set."""
    if space not in SPACES:
        raise ValueError(f"unknown sample space {space!r}")
    kinds, sample = SPACES[space]
    rng = np.random.default_rng(seed)
    weights = np.array(list(kinds.values()))
    specs: list[OpSpec] = []
    for kind in rng.choice(list(kinds), size=n, p=weights / weights.sum()):
        spec = sample(rng, parallelism, str(kind))
        while not _modest(spec):  # redraw the shape, keeping the kind mix
            spec = sample(rng, parallelism, str(kind))
        specs.append(spec)
    return specs
