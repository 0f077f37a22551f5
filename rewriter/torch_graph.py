"""An ONNX graph run by PyTorch, node by node, so that its weights can be trained.

`TorchGraph(model)` is an `nn.Module` that interprets the model's (topologically sorted)
nodes with torch ops. The float initializers that are weights — of Conv, ConvTranspose,
Gemm, MatMul, LayerNormalization, the scale and bias of BatchNormalization, PRelu slopes,
and the constant bias an exporter Adds after a MatMul/Gemm — become `nn.Parameter`s; every
other initializer is a buffer (it moves with `.to()` but is not trained). BatchNormalization
always runs in inference mode (its running statistics are buffers, never updated): the
trained module computes exactly what the ONNX graph computes, in train() and eval() alike.

`write_back(model)` returns a copy of the model with the trained values written into the
same initializers. The graph itself is never re-exported from torch: the rewritten model
keeps its exact node list, names and op set, and only numbers change, so nothing an
exporter does differently (op choices, constant folding, names) can creep in.

Ops are interpreted by their ONNX definitions, not by the nearest torch module: Resize,
for one, computes its source coordinates by the ONNX formula for every
coordinate_transformation_mode and gathers, because torch's interpolate agrees with ONNX
only for some of them. An op this module does not know raises `UnsupportedError` naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.errors import MissingExtraError, UnsupportedError
from rewriter.graph_io import Model

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without the [train] extra
    raise MissingExtraError(
        "distillation needs PyTorch: pip install 'rewriter[train]'") from None

__all__ = ["PARAMETER_SLOTS", "SUPPORTED_OPS", "TorchGraph"]

# Which inputs of which ops are trainable weights (when they are float initializers).
PARAMETER_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "PRelu": (1,),
    "LayerNormalization": (1, 2),
}
# An Add of a constant right after one of these is the layer's bias (exporters write
# MatMul + Add for nn.Linear), so it is trained with the layer.
_BIAS_PRODUCERS = ("MatMul", "Gemm")

_ONNX_TO_TORCH_INT = {
    2: torch.uint8, 3: torch.int8, 4: torch.int32, 5: torch.int16, 12: torch.int64,
    13: torch.int64, 6: torch.int32, 7: torch.int64, 9: torch.bool,
}


@dataclass
class _Node:
    op: str
    name: str
    inputs: list[str]  # "" marks an omitted optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


def _is_float_array(values: np.ndarray) -> bool:
    return np.issubdtype(values.dtype, np.floating)


def _ints(value: "torch.Tensor | Sequence[int] | None") -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def _floats(value: "torch.Tensor | Sequence[float]") -> list[float]:
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.reshape(-1).tolist()]
    return [float(v) for v in value]


class TorchGraph(nn.Module):
    """`model`'s graph as a torch module; see the module docstring.

    forward(*inputs) or forward(**inputs) takes the graph inputs (tensors or arrays, by
    position in graph-input order or by name) and returns {output name: tensor} in
    graph-output order. Float inputs are cast to the module's float dtype, so after
    `.to(torch.float64)` the whole graph runs in float64 (a reference run).
    trainable=False makes every initializer a buffer (a frozen teacher).
    """

    def __init__(self, model: Model, trainable: bool = True,
                 dtype: "torch.dtype" = torch.float32) -> None:
        super().__init__()
        graph = model.graph.copy()
        graph.toposort()
        self.opset = int(model.opset)
        self.input_names = [t.name for t in graph.inputs]
        self.output_names = [t.name for t in graph.outputs]
        self.taps: list[str] = []  # intermediate tensors forward() also returns
        # tensors replaced by given values (teacher forcing): the nodes after one read the
        # given tensor; a tap of a forced name still returns what this graph computed
        self.forced: Mapping[str, torch.Tensor] = {}
        self.nodes: list[_Node] = []
        constants: dict[str, gs.Constant] = {}
        producers: dict[str, str] = {}
        for node in graph.nodes:
            inputs = []
            for tensor in node.inputs:
                inputs.append(tensor.name if tensor is not None else "")
                if isinstance(tensor, gs.Constant):
                    constants[tensor.name] = tensor
            outputs = [t.name for t in node.outputs]
            for name in outputs:
                producers[name] = node.op
            self.nodes.append(_Node(node.op, node.name, inputs, outputs, dict(node.attrs)))
        unknown = sorted({n.op for n in self.nodes if n.op not in _OPS})
        if unknown:
            where = next(n.name for n in self.nodes if n.op == unknown[0])
            raise UnsupportedError(
                f"TorchGraph cannot run op{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)} (node '{where}')")

        weights: set[str] = set()
        if trainable:
            for node in self.nodes:
                for slot in PARAMETER_SLOTS.get(node.op, ()):
                    if slot < len(node.inputs) and node.inputs[slot] in constants:
                        weights.add(node.inputs[slot])
                if node.op == "Add" and len(node.inputs) == 2:
                    a, b = node.inputs
                    for const, other in ((a, b), (b, a)):
                        if const in constants and producers.get(other) in _BIAS_PRODUCERS:
                            weights.add(const)

        # Keys of ParameterDict / buffers cannot contain dots; ONNX names map to p<i>/c<i>.
        self.params = nn.ParameterDict()
        self._const_keys: dict[str, str] = {}
        self._param_keys: dict[str, str] = {}
        self._onnx_dtypes: dict[str, np.dtype] = {}
        for index, (name, tensor) in enumerate(sorted(constants.items())):
            values = np.asarray(tensor.values)
            self._onnx_dtypes[name] = values.dtype
            if _is_float_array(values):
                value = torch.from_numpy(np.array(values, dtype=np.float64)).to(dtype)
            else:
                value = torch.from_numpy(np.array(values))
            if name in weights and _is_float_array(values):
                key = f"p{index}"
                self.params[key] = nn.Parameter(value)
                self._param_keys[name] = key
            else:
                key = f"c{index}"
                self.register_buffer(key, value)
                self._const_keys[name] = key
        # the float dtype and device of the module, even when it has no float weights
        self.register_buffer("_probe", torch.zeros((), dtype=dtype))
        # last use of each tensor, so intermediates are dropped as soon as they are read
        self._last_use: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            for name in node.inputs:
                self._last_use[name] = index
        for name in self.output_names:
            self._last_use[name] = len(self.nodes)

    # -- parameters ------------------------------------------------------------------
    def onnx_parameters(self) -> dict[str, "nn.Parameter"]:
        """{initializer name: parameter} for every trainable initializer."""
        return {name: self.params[key] for name, key in self._param_keys.items()}

    def node_parameters(self, nodes: Iterable[str]) -> list["nn.Parameter"]:
        """The trainable initializers read by the named nodes, each once."""
        wanted = set(nodes)
        keys = dict.fromkeys(self._param_keys[name] for node in self.nodes
                             if node.name in wanted for name in node.inputs
                             if name in self._param_keys)
        return [self.params[key] for key in keys]

    def write_back(self, model: Model) -> Model:
        """A copy of `model` (the one this module was built from, or a copy of it) with
        the current parameter values written into the same initializers, in their
        original dtypes. Nothing else changes."""
        result = model.copy()
        tensors = result.graph.tensors()
        for name, param in self.onnx_parameters().items():
            tensor = tensors.get(name)
            if not isinstance(tensor, gs.Constant):
                raise UnsupportedError(f"write_back: the model has no initializer '{name}'")
            values = param.detach().to("cpu", torch.float64).numpy()
            if tuple(np.asarray(tensor.values).shape) != values.shape:
                raise UnsupportedError(
                    f"write_back: initializer '{name}' is {np.asarray(tensor.values).shape} "
                    f"in the model but {values.shape} in the module")
            tensor.values = np.ascontiguousarray(values.astype(self._onnx_dtypes[name]))
        result.invalidate()
        return result

    # -- running ---------------------------------------------------------------------
    @property
    def float_dtype(self) -> "torch.dtype":
        return self._probe.dtype

    def _value(self, name: str) -> "torch.Tensor":
        key = self._param_keys.get(name)
        if key is not None:
            return self.params[key]
        return self._buffers[self._const_keys[name]]  # type: ignore[return-value]

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, "torch.Tensor"]:
        if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
            kwargs = dict(args[0])
            args = ()
        feeds = dict(zip(self.input_names, args))
        feeds.update(kwargs)
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"missing graph inputs {missing}")
        probe = self._probe
        env: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            value = torch.as_tensor(feeds[name], device=probe.device)
            if value.is_floating_point():
                value = value.to(probe.dtype)
            env[name] = value
        for name in self._const_keys:
            env[name] = self._value(name)
        for name in self._param_keys:
            env[name] = self._value(name)
        computed: dict[str, torch.Tensor] = {}
        for index, node in enumerate(self.nodes):
            inputs = [env[n] if n else None for n in node.inputs]
            try:
                outputs = _OPS[node.op](self, node, inputs)
            except UnsupportedError:
                raise
            except Exception as exc:
                raise UnsupportedError(
                    f"TorchGraph: {node.op} node '{node.name}' failed: {exc}") from exc
            for name, value in zip(node.outputs, outputs):
                if name:
                    if name in self.forced:
                        computed[name] = value
                        value = self.forced[name]
                    env[name] = value
            for name in node.inputs:
                if name and self._last_use.get(name) == index and name not in self._param_keys \
                        and name not in self._const_keys and name not in self.taps:
                    env.pop(name, None)
        return {name: computed.get(name, env[name])
                for name in [*self.output_names, *self.taps]}


# -- op implementations -----------------------------------------------------------------
_OPS: dict[str, Callable[[TorchGraph, _Node, list[Any]], list[Any]]] = {}


def _op(*names: str) -> Callable:
    def register(fn: Callable) -> Callable:
        for name in names:
            _OPS[name] = fn
        return fn
    return register


def _unsupported(node: _Node, what: str) -> UnsupportedError:
    return UnsupportedError(f"TorchGraph: {node.op} node '{node.name}': {what} is not supported")


def _spatial_pads(node: _Node, x: "torch.Tensor", kernel: Sequence[int],
                  strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """ONNX pads [b1.., e1..] for the spatial axes, auto_pad resolved against x's shape."""
    rank = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", ""):
        pads = list(node.attrs.get("pads", [0] * (2 * rank)))
        return pads if pads else [0] * (2 * rank)
    if auto == "VALID":
        return [0] * (2 * rank)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise _unsupported(node, f"auto_pad {auto}")
    begins, ends = [], []
    for axis in range(rank):
        size = x.shape[2 + axis]
        out = -(-size // strides[axis])
        total = max(0, (out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1
                    - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else large)
        ends.append(large if auto == "SAME_UPPER" else small)
    return begins + ends


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] -> F.pad's (last axis first) [b_n, e_n, ...]."""
    rank = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(rank)):
        out += [int(pads[axis]), int(pads[axis + rank])]
    return out


def _conv_fn(rank: int, transpose: bool = False) -> Callable:
    if transpose:
        return {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]


@_op("Conv")
def _conv(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    rank = w.dim() - 2
    if rank not in (1, 2, 3):
        raise _unsupported(node, f"a {rank}-D conv")
    kernel = list(node.attrs.get("kernel_shape", w.shape[2:]))
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    pads = _spatial_pads(node, x, kernel, strides, dilations)
    group = int(node.attrs.get("group", 1))
    if pads[:rank] == pads[rank:]:
        padding: Any = pads[:rank]
    else:  # torch pads symmetrically only; asymmetric zero padding goes first
        x = F.pad(x, _torch_pad(pads))
        padding = 0
    return [_conv_fn(rank)(x, w, b, strides, padding, dilations, group)]


@_op("ConvTranspose")
def _conv_transpose(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    rank = w.dim() - 2
    if "output_shape" in node.attrs:
        raise _unsupported(node, "output_shape")
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        raise _unsupported(node, f"auto_pad {auto}")
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    pads = list(node.attrs.get("pads", [0] * (2 * rank))) or [0] * (2 * rank)
    if auto in ("VALID", b"VALID"):
        pads = [0] * (2 * rank)
    out_pad = list(node.attrs.get("output_padding", [0] * rank)) or [0] * rank
    group = int(node.attrs.get("group", 1))
    y = _conv_fn(rank, True)(x, w, None, strides, 0, 0, group, dilations)
    # ONNX: output = full transposed conv, extended by output_padding at the end, then
    # cropped by pads; with the bias added everywhere (also in the output_padding cells).
    if any(out_pad):
        y = F.pad(y, _torch_pad([0] * rank + out_pad))
    if any(pads):
        y = F.pad(y, _torch_pad([-p for p in pads]))
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * rank))
    return [y]


@_op("BatchNormalization")
def _batch_norm(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    if int(node.attrs.get("training_mode", 0)):
        raise _unsupported(node, "training_mode=1")
    x, scale, bias, mean, var = ins[:5]
    eps = float(node.attrs.get("epsilon", 1e-5))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x - mean.reshape(shape)) * (scale / torch.sqrt(var + eps)).reshape(shape) \
        + bias.reshape(shape)
    return [y]


@_op("LayerNormalization")
def _layer_norm(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = int(node.attrs.get("axis", -1)) % x.dim()
    eps = float(node.attrs.get("epsilon", 1e-5))
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * scale
    if bias is not None:
        y = y + bias
    return [y]


# elementwise ------------------------------------------------------------------------
def _unary(fn: Callable) -> Callable:
    return lambda g, node, ins: [fn(ins[0])]


for _name, _fn in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs,
    "Neg": torch.neg, "Reciprocal": torch.reciprocal, "Floor": torch.floor,
    "Ceil": torch.ceil, "Softplus": F.softplus, "Sin": torch.sin, "Cos": torch.cos,
    "Not": torch.logical_not, "Sign": torch.sign,
}.items():
    _OPS[_name] = _unary(_fn)


@_op("Identity", "Dropout")
def _identity(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    outs = [ins[0]]
    if node.op == "Dropout" and len(node.outputs) > 1:
        outs.append(torch.ones_like(ins[0], dtype=torch.bool))
    return outs


@_op("LeakyRelu")
def _leaky(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    return [F.leaky_relu(ins[0], float(node.attrs.get("alpha", 0.01)))]


@_op("Elu")
def _elu(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    return [F.elu(ins[0], float(node.attrs.get("alpha", 1.0)))]


@_op("Gelu")
def _gelu(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    approx = node.attrs.get("approximate", "none")
    return [F.gelu(ins[0], approximate="tanh" if approx in ("tanh", b"tanh") else "none")]


@_op("PRelu")
def _prelu(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x, slope = ins
    return [torch.where(x >= 0, x, x * slope)]


@_op("HardSigmoid")
def _hard_sigmoid(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    alpha = float(node.attrs.get("alpha", 0.2))
    beta = float(node.attrs.get("beta", 0.5))
    return [torch.clamp(ins[0] * alpha + beta, 0.0, 1.0)]


@_op("HardSwish")
def _hard_swish(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    return [x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)]


@_op("Clip")
def _clip(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    low = ins[1] if len(ins) > 1 else None
    high = ins[2] if len(ins) > 2 else None
    if low is None and "min" in node.attrs:
        low = float(node.attrs["min"])
    if high is None and "max" in node.attrs:
        high = float(node.attrs["max"])
    if isinstance(low, torch.Tensor):
        low = low.to(x.dtype).reshape(())
    if isinstance(high, torch.Tensor):
        high = high.to(x.dtype).reshape(())
    if low is None and high is None:
        return [x]
    return [torch.clamp(x, low, high)]


def _binary(fn: Callable) -> Callable:
    def run(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
        a, b = ins
        if a.is_floating_point() != b.is_floating_point():  # a float scalar meets an int
            if a.is_floating_point():
                b = b.to(a.dtype)
            else:
                a = a.to(b.dtype)
        return [fn(a, b)]
    return run


def _div(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


for _name, _fn in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt,
    "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or,
}.items():
    _OPS[_name] = _binary(_fn)


@_op("Pow")
def _pow(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x, y = ins
    if y.is_floating_point() and not x.is_floating_point():
        y = y.to(torch.float64)
    return [torch.pow(x, y.to(x.dtype) if x.is_floating_point() else y).to(x.dtype)]


@_op("Max", "Min", "Sum", "Mean")
def _variadic(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    fn = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add,
          "Mean": torch.add}[node.op]
    result = ins[0]
    for other in ins[1:]:
        result = fn(result, other)
    if node.op == "Mean":
        result = result / len(ins)
    return [result]


@_op("Where")
def _where(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    return [torch.where(ins[0].bool(), ins[1], ins[2])]


# linear -----------------------------------------------------------------------------
@_op("Gemm")
def _gemm(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if int(node.attrs.get("transA", 0)):
        a = a.t()
    if int(node.attrs.get("transB", 0)):
        b = b.t()
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


@_op("MatMul")
def _matmul(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    return [torch.matmul(ins[0], ins[1])]


# pooling and reductions -------------------------------------------------------------
@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    dims = tuple(range(2, x.dim()))
    if node.op == "GlobalAveragePool":
        return [x.mean(dim=dims, keepdim=True)]
    return [x.amax(dim=dims, keepdim=True)]


@_op("MaxPool", "AveragePool")
def _pool(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    kernel = list(node.attrs["kernel_shape"])
    rank = len(kernel)
    if rank not in (1, 2, 3):
        raise _unsupported(node, f"{rank}-D pooling")
    strides = list(node.attrs.get("strides", [1] * rank)) or [1] * rank
    dilations = list(node.attrs.get("dilations", [1] * rank)) or [1] * rank
    pads = _spatial_pads(node, x, kernel, strides, dilations)
    ceil = bool(node.attrs.get("ceil_mode", 0))
    if len(node.outputs) > 1 and node.outputs[1]:
        raise _unsupported(node, "the Indices output")
    if node.op == "MaxPool":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        if pads[:rank] == pads[rank:] and all(2 * p <= k for p, k in zip(pads, kernel)):
            return [fn(x, kernel, strides, pads[:rank], dilations, ceil_mode=ceil)]
        x = F.pad(x, _torch_pad(pads), value=-math.inf)
        return [fn(x, kernel, strides, 0, dilations, ceil_mode=ceil)]
    if any(d != 1 for d in dilations):
        raise _unsupported(node, "dilated AveragePool")
    include = bool(node.attrs.get("count_include_pad", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    if not any(pads):
        return [fn(x, kernel, strides, 0, ceil_mode=ceil)]
    if ceil:
        raise _unsupported(node, "padded AveragePool with ceil_mode")
    # sum over the window divided by the count of cells that count, exact for any pads
    padded = F.pad(x, _torch_pad(pads))
    total = fn(padded, kernel, strides, 0) * math.prod(kernel)
    if include:
        return [total / math.prod(kernel)]
    ones = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device),
                 _torch_pad(pads))
    count = fn(ones, kernel, strides, 0) * math.prod(kernel)
    return [total / count]


def _reduce_axes(g: TorchGraph, node: _Node, ins: list[Any], rank: int) -> list[int] | None:
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(
        node.attrs.get("axes", []))
    if not axes:
        return None
    return [a % rank for a in axes]


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
     "ReduceSumSquare")
def _reduce(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    keep = bool(node.attrs.get("keepdims", 1))
    if node.op == "ReduceSum" and g.opset < 13:  # axes moved from attribute to input
        axes = [a % x.dim() for a in node.attrs.get("axes", [])] or None
    else:
        axes = _reduce_axes(g, node, ins, x.dim())
    if axes is None:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return [x]
        axes = list(range(x.dim()))
    dims = tuple(axes)
    if node.op == "ReduceMean":
        return [x.mean(dim=dims, keepdim=keep)]
    if node.op == "ReduceSum":
        return [x.sum(dim=dims, keepdim=keep)]
    if node.op == "ReduceSumSquare":
        return [(x * x).sum(dim=dims, keepdim=keep)]
    if node.op == "ReduceL2":
        return [torch.sqrt((x * x).sum(dim=dims, keepdim=keep))]
    if node.op == "ReduceMax":
        return [x.amax(dim=dims, keepdim=keep)]
    if node.op == "ReduceMin":
        return [x.amin(dim=dims, keepdim=keep)]
    y = x
    for d in sorted(dims, reverse=True):
        y = y.prod(dim=d, keepdim=keep)
    return [y]


@_op("Softmax", "LogSoftmax")
def _softmax(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    fn = torch.softmax if node.op == "Softmax" else torch.log_softmax
    if g.opset >= 13:
        return [fn(x, int(node.attrs.get("axis", -1)))]
    # before opset 13 the input is coerced to 2-D at `axis` (default 1)
    axis = int(node.attrs.get("axis", 1)) % x.dim()
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return [fn(flat, 1).reshape(x.shape)]


# shape ops --------------------------------------------------------------------------
@_op("Reshape")
def _reshape(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    shape = _ints(ins[1])
    if not int(node.attrs.get("allowzero", 0)):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@_op("Flatten")
def _flatten(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    axis = int(node.attrs.get("axis", 1)) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@_op("Concat")
def _concat(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    parts = [t for t in ins if t is not None]
    dtype = parts[0].dtype
    return [torch.cat([p.to(dtype) for p in parts], dim=int(node.attrs["axis"]))]


@_op("Split")
def _split(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    axis = int(node.attrs.get("axis", 0)) % x.dim()
    sizes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(
        node.attrs.get("split", []))
    count = len(node.outputs)
    if not sizes:
        total = x.shape[axis]
        num = int(node.attrs.get("num_outputs", count))
        chunk = -(-total // num)
        sizes = [chunk] * (num - 1) + [total - chunk * (num - 1)]
    return list(torch.split(x, sizes, dim=axis))


@_op("Slice")
def _slice(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    if len(ins) == 1:  # opset < 10: attributes
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(
            range(len(starts)))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        size = x.shape[axis]
        # Python's slice clamping is ONNX's (negative values count from the end)
        first, stop, stride = slice(start, end, step).indices(size)
        if stride > 0:
            index = [slice(None)] * axis + [slice(first, stop, stride)]
            x = x[tuple(index)]
        else:
            picks = torch.arange(first, stop, stride, device=x.device)
            x = x.index_select(axis, picks)
    return [x]


@_op("Transpose")
def _transpose(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    perm = list(node.attrs.get("perm", reversed(range(x.dim()))))
    return [x.permute(perm)]


@_op("Squeeze")
def _squeeze(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(
        node.attrs.get("axes", []))
    if not axes:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = sorted({a % x.dim() for a in axes})
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]


@_op("Unsqueeze")
def _unsqueeze(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(
        node.attrs.get("axes", []))
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@_op("Expand")
def _expand(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x, shape = ins[0], _ints(ins[1])
    rank = max(x.dim(), len(shape))
    shape = [1] * (rank - len(shape)) + shape
    xs = [1] * (rank - x.dim()) + list(x.shape)
    target = [max(a, b) if b != 1 else a for a, b in zip(xs, shape)]
    target = [b if a == 1 else a for a, b in zip(xs, target)]
    return [x.reshape(xs).expand(target)]


@_op("Tile")
def _tile(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    return [ins[0].repeat(_ints(ins[1]))]


@_op("Shape")
def _shape(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    dims = list(ins[0].shape)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    dims = dims[start:] if end is None else dims[start:int(end)]
    return [torch.tensor(dims, dtype=torch.int64, device=ins[0].device)]


@_op("Size")
def _size(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    return [torch.tensor(ins[0].numel(), dtype=torch.int64, device=ins[0].device)]


@_op("Gather")
def _gather(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x, index = ins
    axis = int(node.attrs.get("axis", 0)) % x.dim()
    index = index.long()
    index = torch.where(index < 0, index + x.shape[axis], index)
    picked = x.index_select(axis, index.reshape(-1))
    return [picked.reshape([*x.shape[:axis], *index.shape, *x.shape[axis + 1:]])]


@_op("Cast")
def _cast(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    to = int(node.attrs["to"])
    if to == 1:  # FLOAT follows the module's float dtype, so a float64 run stays float64
        return [ins[0].to(g.float_dtype)]
    if to == 11:
        return [ins[0].to(torch.float64)]
    if to in (10, 16):
        return [ins[0].to(torch.float16 if to == 10 else torch.bfloat16)]
    if to not in _ONNX_TO_TORCH_INT:
        raise _unsupported(node, f"Cast to ONNX type {to}")
    return [ins[0].to(_ONNX_TO_TORCH_INT[to])]


@_op("ConstantOfShape")
def _constant_of_shape(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    shape = _ints(ins[0])
    value = node.attrs.get("value")
    array = np.asarray(value.values if isinstance(value, gs.Constant) else
                       (value if value is not None else np.zeros(1, np.float32)))
    fill = torch.from_numpy(array.reshape(-1)[:1].copy())
    if fill.is_floating_point():
        fill = fill.to(g.float_dtype)
    return [fill.to(g._probe.device).reshape(()).expand(shape).clone()]


@_op("Range")
def _range(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    start, limit, delta = ins
    if start.is_floating_point():
        return [torch.arange(float(start), float(limit), float(delta),
                             dtype=start.dtype, device=start.device)]
    return [torch.arange(int(start), int(limit), int(delta), dtype=start.dtype,
                         device=start.device)]


@_op("Pad")
def _pad(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    mode = node.attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if len(ins) > 1 and ins[1] is not None:
        pads = _ints(ins[1])
        value = float(ins[2].reshape(-1)[0]) if len(ins) > 2 and ins[2] is not None else 0.0
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    else:
        pads = list(node.attrs["pads"])
        value = float(node.attrs.get("value", 0.0))
        axes = None
    rank = x.dim()
    if axes is not None:
        full = [0] * (2 * rank)
        for i, axis in enumerate(axes):
            full[axis % rank] = pads[i]
            full[axis % rank + rank] = pads[i + len(axes)]
        pads = full
    # F.pad pads trailing axes; drop leading axes without padding
    lead = 0
    while lead < rank and pads[lead] == 0 and pads[lead + rank] == 0:
        lead += 1
    spatial = pads[lead:rank] + pads[rank + lead:]
    if not spatial:
        return [x]
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
                  "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise _unsupported(node, f"mode {mode}")
    if torch_mode == "constant":
        return [F.pad(x, _torch_pad(spatial), value=value)]
    return [F.pad(x, _torch_pad(spatial), mode=torch_mode)]


# Resize -----------------------------------------------------------------------------
def _source_coords(node: _Node, mode: str, out: int, size: int, scale: float,
                   device: Any, dtype: Any) -> "torch.Tensor":
    x = torch.arange(out, device=device, dtype=torch.float64)
    if mode == "half_pixel":
        coords = (x + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        coords = (x + 0.5) / scale - 0.5 if out > 1 else torch.zeros_like(x)
    elif mode == "align_corners":
        coords = x * ((size - 1) / (out - 1)) if out > 1 else torch.zeros_like(x)
    elif mode == "asymmetric":
        coords = x / scale
    elif mode == "tf_half_pixel_for_nn":
        coords = (x + 0.5) / scale
    elif mode == "half_pixel_symmetric":
        adjust = out / (scale * size)
        center = size / 2 * (1 - adjust)
        coords = center + (x + 0.5) / scale - 0.5
    else:
        raise _unsupported(node, f"coordinate_transformation_mode {mode}")
    return coords


@_op("Resize")
def _resize(g: TorchGraph, node: _Node, ins: list[Any]) -> list[Any]:
    x = ins[0]
    rank = x.dim()
    attr = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in node.attrs.items()}
    mode = attr.get("mode", "nearest")
    coord_mode = attr.get("coordinate_transformation_mode", "half_pixel")
    nearest_mode = attr.get("nearest_mode", "round_prefer_floor")
    if int(attr.get("antialias", 0)):
        raise _unsupported(node, "antialias")
    if attr.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise _unsupported(node, "keep_aspect_ratio_policy other than stretch")
    if coord_mode == "tf_crop_and_resize":
        raise _unsupported(node, "coordinate_transformation_mode tf_crop_and_resize")
    axes = [a % rank for a in attr.get("axes", range(rank))]
    scales_in = ins[2] if len(ins) > 2 and ins[2] is not None and ins[2].numel() else None
    sizes_in = ins[3] if len(ins) > 3 and ins[3] is not None and ins[3].numel() else None
    scales = [1.0] * rank
    sizes = list(x.shape)
    if sizes_in is not None:
        for axis, size in zip(axes, _ints(sizes_in)):
            sizes[axis] = size
            scales[axis] = size / x.shape[axis]
    elif scales_in is not None:
        for axis, scale in zip(axes, _floats(scales_in)):
            scales[axis] = scale
            sizes[axis] = int(math.floor(x.shape[axis] * scale))
    else:
        raise _unsupported(node, "Resize without scales or sizes")
    if mode not in ("nearest", "linear"):
        raise _unsupported(node, f"mode {mode}")
    y = x
    for axis in range(rank):
        if sizes[axis] == x.shape[axis] and scales[axis] == 1.0:
            continue
        size = x.shape[axis]
        coords = _source_coords(node, coord_mode, sizes[axis], size, scales[axis],
                                x.device, x.dtype)
        if mode == "nearest":
            if nearest_mode == "round_prefer_floor":
                index = torch.ceil(coords - 0.5)
            elif nearest_mode == "round_prefer_ceil":
                index = torch.floor(coords + 0.5)
            elif nearest_mode == "floor":
                index = torch.floor(coords)
            elif nearest_mode == "ceil":
                index = torch.ceil(coords)
            else:
                raise _unsupported(node, f"nearest_mode {nearest_mode}")
            index = index.clamp(0, size - 1).long()
            y = y.index_select(axis, index)
            continue
        # linear: separable, the two neighbours of each source coordinate, clamped to the
        # edge (as the ONNX reference and onnxruntime do)
        coords = coords.clamp(0, size - 1) if coord_mode != "asymmetric" else coords.clamp(
            max=size - 1)
        low = torch.floor(coords)
        frac = (coords - low).to(x.dtype)
        low_i = low.long().clamp(0, size - 1)
        high_i = (low_i + 1).clamp(0, size - 1)
        shape = [1] * rank
        shape[axis] = -1
        frac = frac.reshape(shape)
        y = y.index_select(axis, low_i) * (1 - frac) + y.index_select(axis, high_i) * frac
    return [y]


SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_OPS))
