"""Weights refitted from calibration data, for rewrites that change the function.

An architecture change (fused-IBN, pruning, depth multiplier) lists the nodes whose weights
no longer fit in `model.changes.refit`; the best a linear fit can do for each is reproduce
the original model's tensor of the same name (its pre-activation output; restricted to the
channels the rewrite kept, `changes.kept_channels`) from the node's input in the REWRITTEN
model. Nodes are fitted in topological order, each on inputs computed with the earlier
refits in place, so a layer corrects what the layers before it got wrong instead of
inheriting it (channel pruning with least-squares reconstruction).

The fit: unfold a conv's input into im2col patches (one row per output position, Cin*Kh*Kw
columns in ONNX weight order; a Gemm/MatMul's rows are its input rows), centre features and
targets (the bias is free), and solve ridge least squares
    W = argmin ||X W' - Y||^2 + penalty * ||W||^2 = (X'X + penalty*I)^-1 X'Y,
penalty = (lam + SCARCITY * (F/R)^2) * mean feature energy. The F/R term matters where the
calibration data are thin (a 3x3 map late in a network, a Gemm after a global pool: few
rows per feature): there an unregularised fit reproduces the fitting inputs and fails on
others. Measured on the zoo's MobileNetV2 0.5/96 with 16 random inputs (fuse-ibn, pruning,
depth multipliers), this beat a fixed penalty and ridge towards the pre-refit weights on
held-out inputs, and was as good as 2-fold cross-validation of the penalty without its
extra solves; squared, the term vanishes where rows are plentiful (a conv that can be
recovered exactly is). A grouped or depthwise conv is fitted group by group
(its block-diagonal structure kept). Rows are subsampled, the same positions in both
models: at most ROWS_PER_FEATURE per feature (MIN_ROWS at least), and rows * (features +
outputs) * 8 bytes under ROW_BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from threadpoolctl import ThreadpoolController

from rewriter.errors import BadInputError, UnsupportedError
from rewriter.graph_io import Model
from rewriter.graph_query import ConvInfo, const_value, conv_info, is_empty_input
from rewriter.passes.base import Namer, constant
from rewriter.staged import Batches, StagedRun, sample_count, stream

ROW_BYTES = 200_000_000  # bound on the float64 design and target matrices of one fit
ROWS_PER_FEATURE = 64  # rows beyond this many per feature barely change a fit, but cost
MIN_ROWS = 4096
SCARCITY = 0.3  # ridge added per squared feature/row ratio (see the module docstring)
_BLAS = ThreadpoolController()


# -- the math -------------------------------------------------------------------------
def output_size(info: ConvInfo, height: int, width: int) -> tuple[int, int]:
    top, left, bottom, right = info.pads
    (kh, kw), (sh, sw), (dh, dw) = info.kernel, info.strides, info.dilations
    return ((height + top + bottom - dh * (kh - 1) - 1) // sh + 1,
            (width + left + right - dw * (kw - 1) - 1) // sw + 1)


def im2col(x: np.ndarray, info: ConvInfo, rows: np.ndarray | None = None) -> np.ndarray:
    """[N, C, H, W] -> patches [R, C*Kh*Kw] in ONNX weight order (c, kh, kw), one row per
    output position (n, h', w') in `rows` (flat indices; all positions when None)."""
    n, c, height, width = x.shape
    hout, wout = output_size(info, height, width)
    if rows is None:
        rows = np.arange(n * hout * wout)
    top, left, bottom, right = info.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    sample, oh, ow = np.unravel_index(rows, (n, hout, wout))
    (kh, kw), (sh, sw), (dh, dw) = info.kernel, info.strides, info.dilations
    cols = np.empty((len(rows), c, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = padded[sample, :, oh * sh + i * dh, ow * sw + j * dw]
    return cols.reshape(len(rows), c * kh * kw)


def solve_ridge(features: np.ndarray, targets: np.ndarray, lam: float = 1e-3,
                intercept: bool = True, scarcity: float | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Ridge least squares for g independent groups at once.

    features [g, R, F], targets [g, R, O] -> weights [g, O, F], bias [g, O] (zeros
    without `intercept`). The bias is free: features and targets are centred first. The
    penalty is (lam + scarcity * (F/R)^2) times the mean feature energy (scarcity defaults
    to SCARCITY), so it is negligible where rows are plentiful and keeps weights small where
    they are not. With fewer rows than features the dual form W = X'(XX' + penalty*I)^-1 Y
    is solved (R x R, cheaper).
    """
    rows, width = features.shape[1], features.shape[2]
    if intercept:
        x_mean = features.mean(axis=1, keepdims=True, dtype=np.float64)
        y_mean = targets.mean(axis=1, keepdims=True, dtype=np.float64)
        x, y = features - x_mean, targets - y_mean
    else:
        x, y = features.astype(np.float64), targets.astype(np.float64)
    energy = np.einsum("grf,grf->g", x, x) / max(width, 1)
    scarce = (SCARCITY if scarcity is None else scarcity) * (width / max(rows, 1)) ** 2
    penalty = np.maximum((lam + scarce) * energy, 1e-12)
    xt = x.transpose(0, 2, 1)
    size = min(rows, width)
    # One BLAS thread: on the 2-core machines this runs on, threaded BLAS sped the largest
    # fits up less than it slowed everything down whenever other work shared the cores
    # (MobileNetV2 1.0/224 fuse-ibn refit 3.5 s single- vs 6.4 s multi-threaded then).
    with _BLAS.limit(limits=1, user_api="blas"):
        system = x @ xt if rows < width else xt @ x
        system[:, np.arange(size), np.arange(size)] += penalty[:, None]
        solution = np.linalg.solve(system, y if rows < width else xt @ y)
        weights = xt @ solution if rows < width else solution
    bias = (y_mean - x_mean @ weights)[:, 0] if intercept else np.zeros(
        (weights.shape[0], weights.shape[2]))
    return weights.transpose(0, 2, 1), bias


def fit_conv(patches: np.ndarray, targets: np.ndarray, info: ConvInfo, lam: float = 1e-3,
             scarcity: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Conv weights [Cout, Cin/g, Kh, Kw] and bias [Cout] from patches [R, Cin*Kh*Kw] and
    targets [R, Cout]; a grouped conv keeps its groups (group k reads input channels and
    writes output channels of block k only)."""
    groups = info.groups
    rows, cout = targets.shape
    x = patches.reshape(rows, groups, -1).transpose(1, 0, 2)
    y = targets.reshape(rows, groups, cout // groups).transpose(1, 0, 2)
    weights, bias = solve_ridge(x, y, lam, scarcity=scarcity)
    return weights.reshape(cout, -1, *info.kernel), bias.reshape(cout)


# -- refitting a rewritten model --------------------------------------------------------
@dataclass
class _Layer:
    """A node to refit: where its features and target come from, and how many rows."""

    node: gs.Node
    index: int  # position in the rewritten model's sorted nodes
    conv: ConvInfo | None  # None for Gemm/MatMul
    keep: np.ndarray  # the original output's channels the node still writes
    rows_per_sample: int  # bound from ROW_BYTES

    @property
    def output(self) -> str:
        return self.node.outputs[0].name

    @property
    def data(self) -> str:
        return self.node.inputs[0].name

    def rows(self, samples: int, count: int, batch: int) -> np.ndarray:
        """Which of a batch's `count` output positions to fit on: the same in both models
        (seeded by batch and layer), all of them when they fit in the budget."""
        wanted = self.rows_per_sample * samples
        if wanted >= count:
            return np.arange(count)
        rng = np.random.default_rng([batch, self.index])
        return np.sort(rng.choice(count, wanted, replace=False))


def refit(original: Model, model: Model, batches: Batches, ridge: float = 1e-3,
          progress: bool = False) -> Model:
    """A copy of `model` with every node in `model.changes.refit` refitted, in topological
    order, from the rewritten model's inputs to the original's outputs of the same name
    (restricted to `changes.kept_channels`); `changes.refit` of the copy is empty."""
    new = model.copy()
    if not new.changes.refit:
        return new
    if not batches:
        raise BadInputError("refit needs calibration inputs (at least one batch)")
    samples = sample_count(batches)
    runner = StagedRun(new.to_onnx(infer_shapes=False), batches)  # slices carry no shapes
    layers = _layers(new, runner, samples)
    targets = _targets(original, batches, layers)
    namer = Namer(new.graph)
    if progress:
        from tqdm import tqdm

        layers = tqdm(layers, desc="refit", unit="layer", leave=False)
    for layer in layers:
        runner.run_until(layer.index)  # the rewritten model up to this node, refits in place
        features = _features(layer, runner.tensor(layer.data))
        replaced = _fit(layer, features, targets.pop(layer.output), ridge, namer)
        runner.replace_constants(layer.node.name, replaced)
    new.changes.refit = []
    return new


def _layers(model: Model, runner: StagedRun, samples: int) -> list[_Layer]:
    nodes = {node.name: node for node in model.graph.nodes}
    layers = []
    for name in model.changes.refit:
        node = nodes.get(name)
        if node is None:
            raise UnsupportedError(f"refit: node {name!r} is not in the rewritten model")
        info = conv_info(node)
        weight = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if (info is None and node.op not in ("Gemm", "MatMul") or weight is None
                or not is_empty_input(bias) and const_value(bias) is None):
            raise UnsupportedError(f"refit: cannot refit {node.op} node {name!r} (a Conv, "
                                   "Gemm or MatMul with constant weights and bias)")
        outputs = weight.shape[0] if info else _outputs(node, weight)
        features = weight.size // outputs * (info.groups if info else 1)
        total = min(ROW_BYTES // (8 * (features + 1 + outputs)),
                    max(MIN_ROWS, ROWS_PER_FEATURE * (features + 1)))
        rows = max(1, total // max(samples, 1))
        keep = model.changes.kept(node.outputs[0].name, outputs)
        if len(keep) != outputs:
            raise UnsupportedError(
                f"refit: {name!r} writes {outputs} channels but {len(keep)} channels of "
                f"'{node.outputs[0].name}' are recorded as kept")
        layers.append(_Layer(node, runner.index(name), info, keep, rows))
    return sorted(layers, key=lambda layer: layer.index)


def _outputs(node: gs.Node, weight: np.ndarray) -> int:
    """Output width of a Gemm/MatMul from its weight B."""
    transposed = node.op == "Gemm" and node.attrs.get("transB", 0)
    return int(weight.shape[0] if transposed else weight.shape[-1])


def _rows_of(layer: _Layer, value: np.ndarray) -> np.ndarray:
    """An output (or Gemm input) as rows [positions, channels]."""
    if value.ndim == 4:
        return value.transpose(0, 2, 3, 1).reshape(-1, value.shape[1])
    if value.ndim != 2:
        raise UnsupportedError(f"refit: {layer.node.op} {layer.node.name!r} on a rank-"
                               f"{value.ndim} tensor (2-D products only)")
    return value


def _targets(original: Model, batches: Batches, layers: list[_Layer]) -> dict[str, np.ndarray]:
    """The original's output of every layer on its sampled rows and kept channels, from
    one run of the original (reduced batch by batch, so memory stays bounded)."""
    proto = original.to_onnx(infer_shapes=False)  # onnxruntime infers shapes itself
    known = {t.name for node in original.graph.nodes for t in node.outputs}
    missing = [layer.output for layer in layers if layer.output not in known]
    if missing:
        raise UnsupportedError(f"refit: the original model has no tensor {missing[0]!r} to "
                               "fit to (passes must keep tensor names)")
    by_name = {layer.output: layer for layer in layers}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in by_name}
    for batch, values in enumerate(stream(proto, batches, list(by_name))):
        for name, layer in by_name.items():
            rows = _rows_of(layer, values[name])
            if batch == 0 and layer.keep.max(initial=-1) >= rows.shape[1]:
                raise UnsupportedError(
                    f"refit: '{name}' has {len(layer.keep)} channels, more than the "
                    f"original's {rows.shape[1]}: a pass added channels (align-channels-up) "
                    "before the refit; apply the architecture changes first")
            chosen = layer.rows(len(values[name]), len(rows), batch)
            parts[name].append(rows[chosen][:, layer.keep])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _features(layer: _Layer, inputs: list[np.ndarray]) -> np.ndarray:
    """The layer's input on the same sampled rows as its target, batch by batch."""
    chunks = []
    for batch, x in enumerate(inputs):
        if layer.conv is not None:
            hout, wout = output_size(layer.conv, x.shape[2], x.shape[3])
            chosen = layer.rows(len(x), len(x) * hout * wout, batch)
            chunks.append(im2col(x, layer.conv, chosen))
        else:
            if layer.node.op == "Gemm" and layer.node.attrs.get("transA", 0):
                x = x.T
            rows = _rows_of(layer, x)
            chunks.append(rows[layer.rows(len(rows), len(rows), batch)])
    return np.concatenate(chunks)


def _fit(layer: _Layer, features: np.ndarray, target: np.ndarray, lam: float,
         namer: Namer) -> dict[int, tuple[str, np.ndarray]]:
    """Fit and write the layer's weights into its node; returns the new constants."""
    node, info = layer.node, layer.conv
    weight = const_value(node.inputs[1])
    if info is not None:
        w, b = fit_conv(features, target, info, lam)
        values = {1: w, 2: b}
    else:  # Gemm: Y = alpha * A B + beta * C; MatMul: no bias
        transposed = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
        alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
        beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 0.0
        w, b = solve_ridge(features[None], target[None], lam, intercept=beta != 0.0)
        w, b = w[0] / alpha, b[0] / (beta or 1.0)
        values = {1: w if transposed else w.T}
        if beta != 0.0:
            old = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
            values[2] = b.reshape(old.shape) if old is not None and old.size == b.size else b
    replaced = {}
    for index, array in values.items():
        array = np.ascontiguousarray(array, dtype=weight.dtype)
        tensor = constant(namer, f"{node.name}.{'weight' if index == 1 else 'bias'}_refit",
                          array)
        if index < len(node.inputs) and not is_empty_input(node.inputs[index]):
            node.inputs[index] = tensor
        else:
            while len(node.inputs) > index:  # an empty optional input ('') is replaced
                node.inputs.pop()
            node.inputs.append(tensor)
        replaced[index] = (tensor.name, array)
    return replaced
