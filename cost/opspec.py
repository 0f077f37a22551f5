"""`OpSpec`: the shape-level description of one kernel (an op plus its fused activation).

Every cost model in `rewriter.cost` works on an `OpSpec`, never on a graph. Shapes are NCHW;
`kh, kw, stride, groups` only matter for the conv kinds and pools, except that a resize's
`kh = kw` is the interpolation's taps per axis: 1 nearest, 2 linear, 4 cubic
(`RESIZE_TAPS`).

A "reorder" is a runtime's layout conversion of one tensor (onnxruntime's ReorderInput /
ReorderOutput between plain NCHW and its blocked NCHWc layout). `layout` names the layout
an op runs in where that is not the runtime's usual one for it: "nchw" for a resize that
onnxruntime leaves unblocked (its input comes from an op it cannot block), and for a
reorder the layout it converts to ("nchw": out of the blocked layout; "": into it).

Work, for a conv of any kind (``cin/groups`` input channels per output channel)::

    macs = n * h_out * w_out * cout * (cin / groups) * kh * kw        # gemm: n*cin*cout

Ideal cycles on a ``pin x pout`` MAC array (one cycle multiplies a ``pin``-channel slice of
the input by a ``pin x pout`` block of weights), `mac_cycles`::

    dense (conv, conv1x1, gemm): n*h_out*w_out*kh*kw * ceil(cin/pin) * ceil(cout/pout)
    grouped:   groups * n*h_out*w_out*kh*kw * ceil(cin_g/pin) * ceil(cout_g/pout)
    depthwise: n*h_out*w_out*kh*kw * ceil(cout/pout)    (one input lane per channel)

so channel counts are tiled: 33 channels cost as much as 64 at P=32. An array that also
unrolls the output map (``ox`` columns by ``oy`` rows of pixels per cycle, as ZigZag's
edge_tpu_like does with 4 x 4) tiles the map too: ``h_out*w_out`` becomes
``ceil(h_out/oy) * ceil(w_out/ox)``, so a 6x6 map costs as much as 8x8 there.

Tensor sizes in elements, `tensor_elements` (channel dims rounded up to a multiple of
``pin`` for inputs, ``pout`` for outputs, as in a channel-tiled layout; 1 gives raw sizes):
inputs ``n_inputs * n*cin*h_in*w_in`` (concat: the concatenated output), weights
``cout*(cin/groups)*kh*kw + cout`` (bias) for conv kinds and gemm, 0 otherwise, output
``n*cout*h_out*w_out``. The ``*_bytes`` properties multiply the raw sizes by `dtype_bytes`.

Vector work (`vector_ops`, for kinds that run on a vector unit): elementwise
``out * max(1, n_inputs - 1)``, pool and resize ``out * kh*kw``, gap ``input``, concat and
reorder ``out``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from math import log

KINDS: tuple[str, ...] = (
    "conv", "conv1x1", "dwconv", "groupconv", "gemm",
    "pool", "gap", "elementwise", "resize", "concat", "reorder",
)
MAC_KINDS = frozenset({"conv", "conv1x1", "dwconv", "groupconv", "gemm"})
CONV_KINDS = frozenset({"conv", "conv1x1", "dwconv", "groupconv"})
VECTOR_KINDS = frozenset(KINDS) - MAC_KINDS
# Activations the measurement harness can build; any other name is still a valid `act`.
KNOWN_ACTIVATIONS: tuple[str, ...] = ("relu", "relu6", "hardswish", "sigmoid", "silu", "tanh")

LAYOUTS: tuple[str, ...] = ("", "nchw")
# Kinds with a one-hot feature: all but the layout conversion, added later. A column for it
# would change the random feature draws of every regressor fitted before it (the ZigZag
# targets' among them); rows of it are fitted by a model of their own anyway.
ONE_HOT_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k != "reorder")
# Resize mode -> interpolation taps per axis (a resize's kh = kw).
RESIZE_TAPS: dict[str, int] = {"nearest": 1, "linear": 2, "cubic": 4}

INT_FIELDS: tuple[str, ...] = (
    "n", "cin", "cout", "h_in", "w_in", "h_out", "w_out", "kh", "kw", "stride", "groups",
    "n_inputs", "dtype_bytes",
)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, multiple: int) -> int:
    return ceil_div(a, multiple) * multiple


@dataclass(frozen=True)
class OpSpec:
    kind: str
    n: int = 1
    cin: int = 1
    cout: int = 1
    h_in: int = 1
    w_in: int = 1
    h_out: int = 1
    w_out: int = 1
    kh: int = 1
    kw: int = 1
    stride: int = 1
    groups: int = 1
    act: str = ""
    n_inputs: int = 1
    dtype_bytes: int = 4
    layout: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown op kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"OpSpec.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.act, str):
            raise ValueError(f"OpSpec.act must be a string, got {self.act!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"OpSpec.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.kind in CONV_KINDS and (self.cin % self.groups or self.cout % self.groups):
            raise ValueError(f"OpSpec: cin={self.cin} and cout={self.cout} must be multiples "
                             f"of groups={self.groups}")

    @staticmethod
    def conv2d(cin: int, cout: int, size: int, kernel: int = 3, stride: int = 1,
               groups: int = 1, act: str = "", n: int = 1) -> OpSpec:
        """A square conv with 'same' padding (h_out = ceil(size / stride)); kind inferred."""
        out = ceil_div(size, stride)
        return OpSpec(conv_kind(cin, cout, kernel, groups), n=n, cin=cin, cout=cout,
                      h_in=size, w_in=size, h_out=out, w_out=out, kh=kernel, kw=kernel,
                      stride=stride, groups=groups, act=act)

    @property
    def cin_per_group(self) -> int:
        return self.cin // self.groups if self.kind in CONV_KINDS else self.cin

    @property
    def macs(self) -> int:
        if self.kind == "gemm":
            return self.n * self.h_out * self.w_out * self.cin * self.cout
        if self.kind in CONV_KINDS:
            return (self.n * self.h_out * self.w_out * self.cout * self.cin_per_group
                    * self.kh * self.kw)
        return 0

    @property
    def input_elements(self) -> int:
        return tensor_elements(self)[0]

    @property
    def weight_elements(self) -> int:
        return tensor_elements(self)[1]

    @property
    def output_elements(self) -> int:
        return tensor_elements(self)[2]

    @property
    def input_bytes(self) -> int:
        return self.input_elements * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return self.weight_elements * self.dtype_bytes

    @property
    def output_bytes(self) -> int:
        return self.output_elements * self.dtype_bytes

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.weight_bytes + self.output_bytes

    def signature(self) -> tuple:
        """Hashable key identifying the spec (all fields, in declaration order)."""
        # Not dataclasses.astuple: it deep-copies, and the search calls this per kernel.
        return (self.kind, self.n, self.cin, self.cout, self.h_in, self.w_in, self.h_out,
                self.w_out, self.kh, self.kw, self.stride, self.groups, self.act,
                self.n_inputs, self.dtype_bytes, self.layout)


SPEC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(OpSpec))


def conv_kind(cin: int, cout: int, kernel: int, groups: int) -> str:
    """The OpSpec kind of a conv: dwconv, groupconv, conv1x1 or conv."""
    if groups > 1 and groups == cin and cout % cin == 0:
        return "dwconv"
    if groups > 1:
        return "groupconv"
    return "conv1x1" if kernel == 1 else "conv"


def tensor_elements(spec: OpSpec, pin: int = 1, pout: int = 1) -> tuple[int, int, int]:
    """(input, weight, output) element counts, channel dims rounded up to pin / pout."""
    cin, cout = round_up(spec.cin, pin), round_up(spec.cout, pout)
    out = spec.n * cout * spec.h_out * spec.w_out
    if spec.kind == "concat":
        inp = out
    else:
        inp = spec.n_inputs * spec.n * cin * spec.h_in * spec.w_in
    if spec.kind == "gemm":
        weight = cin * cout + cout
    elif spec.kind in CONV_KINDS:
        weight = cout * spec.cin_per_group * spec.kh * spec.kw + cout
    else:
        weight = 0
    return inp, weight, out


def mac_cycles(spec: OpSpec, pin: int, pout: int, ox: int = 1, oy: int = 1) -> int:
    """Cycles on a pin x pout MAC array (times ox x oy output pixels, when it unrolls the
    map) at 100% efficiency (0 for vector kinds)."""
    pixels = (spec.n * ceil_div(spec.h_out, oy) * ceil_div(spec.w_out, ox)
              * spec.kh * spec.kw)
    if spec.kind in ("conv", "conv1x1", "gemm"):
        return pixels * ceil_div(spec.cin, pin) * ceil_div(spec.cout, pout)
    if spec.kind == "groupconv":
        cout_g = spec.cout // spec.groups
        return spec.groups * pixels * ceil_div(spec.cin_per_group, pin) * ceil_div(cout_g, pout)
    if spec.kind == "dwconv":
        return pixels * ceil_div(spec.cout, pout)
    return 0


def vector_ops(spec: OpSpec) -> int:
    """Element operations of a vector-unit kind (0 for MAC kinds)."""
    inp, _, out = tensor_elements(spec)
    if spec.kind == "elementwise":
        return out * max(1, spec.n_inputs - 1)
    if spec.kind in ("pool", "resize"):
        return out * spec.kh * spec.kw
    if spec.kind == "gap":
        return inp
    if spec.kind in ("concat", "reorder"):
        return out
    return 0


def features(spec: OpSpec, parallelism: int, ox: int = 1, oy: int = 1) -> dict[str, float]:
    """Regressor features of a spec for an accelerator / SIMD width of `parallelism` lanes
    (and an array that unrolls ox x oy output pixels, if it does).

    Raw shape fields, work (macs, vector ops, bytes and their logs), channel tiles
    ceil(c/P), remainders c mod P, channel_fill = cin*cout / (cin, cout rounded up to P),
    padded_macs = mac_cycles(P, P) * P * P (MACs with channels rounded up to the
    array), array utilisation macs / padded_macs, log_ideal_cycles = log mac_cycles(P, P,
    ox, oy) (the map tiled too), spatial_fill = h_out*w_out / (the map rounded up to
    oy x ox), and one-hot kind (`ONE_HOT_KINDS`) and activation. The layout is no feature:
    the regressor fits each (kind, layout) on its own rows.
    """
    p = parallelism
    ideal = mac_cycles(spec, p, p, ox, oy)
    tiled_map = ceil_div(spec.h_out, oy) * oy * ceil_div(spec.w_out, ox) * ox
    inp, weight, out = tensor_elements(spec)
    padded = mac_cycles(spec, p, p) * p * p
    vec = vector_ops(spec)
    feats: dict[str, float] = {name: float(getattr(spec, name)) for name in INT_FIELDS}
    feats.update(
        cin_per_group=float(spec.cin_per_group),
        cout_per_group=float(spec.cout // spec.groups if spec.kind in CONV_KINDS else spec.cout),
        macs=float(spec.macs),
        log_macs=log(1.0 + spec.macs),
        padded_macs=float(padded),
        log_padded_macs=log(1.0 + padded),
        utilisation=spec.macs / padded if padded else 0.0,
        tiles_in=float(ceil_div(spec.cin, p)),
        tiles_out=float(ceil_div(spec.cout, p)),
        cin_mod_p=float(spec.cin % p),
        cout_mod_p=float(spec.cout % p),
        channel_fill=spec.cin * spec.cout / (round_up(spec.cin, p) * round_up(spec.cout, p)),
        vector_ops=float(vec),
        log_vector_ops=log(1.0 + vec),
        input_bytes=float(spec.input_bytes),
        weight_bytes=float(spec.weight_bytes),
        output_bytes=float(spec.output_bytes),
        log_bytes=log(1.0 + spec.total_bytes),
        log_work=log(1.0 + spec.macs + vec),
        out_pixels=float(spec.n * spec.h_out * spec.w_out),
        log_out_elements=log(1.0 + out),
        log_in_elements=log(1.0 + inp),
        log_weight_elements=log(1.0 + weight),
        log_ideal_cycles=log(1.0 + ideal),
        spatial_fill=spec.h_out * spec.w_out / tiled_map,
    )
    for kind in ONE_HOT_KINDS:
        feats[f"kind_{kind}"] = float(spec.kind == kind)
    for act in KNOWN_ACTIVATIONS:
        feats[f"act_{act}"] = float(spec.act == act)
    feats["act_other"] = float(spec.act not in ("", *KNOWN_ACTIVATIONS))
    return feats


FEATURE_NAMES: tuple[str, ...] = tuple(features(OpSpec("conv"), 1))
