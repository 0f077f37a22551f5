"""Write a measurement kit: small static-shape, batch-1 ONNX models to time on any device.

``rewriter cost kit -o KIT/`` writes ``KIT/models/*.onnx``, ``KIT/manifest.csv`` (the
columns: `rewriter.cost.kit_manifest`) and ``KIT/README.md`` (how to time the models and
what CSV to return). The models, in manifest order, which is the order to time them in
(any prefix is a useful kit):

1. two baselines, chains of 1 and 101 Relus on a 1x8x4x4 tensor: what one inference costs
   beyond its kernels, and what one more kernel costs (`kit_import` removes it);
2. with ``--models``, every kernel of those models and of their candidate rewrites (each
   model with every site of fuse-ibn, dw-to-dense, dw-to-grouped, fuse-linear-conv and
   align-channels-up applied, BatchNorm folded first), as `cost.kernels.decompose` cuts
   them, the largest first (by estimated time on ``--like``, else by work: MACs plus
   vector ops) and then each the farthest from those before it in kind and size
   (`spread`), so that any prefix covers them;
3. the trades the rewrites make: depthwise KxK convs and their dense replacements (one-op
   models sharing a `pair` tag), and the kernels of inverted bottlenecks (1x1 expand +
   depthwise KxK + 1x1 project) and of their fused-IBN form (dense KxK + 1x1 project);
4. jittered neighbours of the models' kernels (channels and map sides scaled by up to
   x0.67-x1.5), one per kernel in order;
5. ops drawn from the sampling spaces (``--space``, `cost.sampling.sample_specs` with the
   kit's seed and P, so a kit reproduces a measurement CSV drawn with the same ones);
6. the IBN and fused-IBN blocks themselves, each a model of several kernels.

``-n N`` bounds the one-op models of steps 2, 4 and 5; the pairs, blocks and baselines come
on top. Every one-op model is `cost.one_op.one_op_model` of its kernel, kept only when
`decompose` gives back exactly that kernel (so a manifest row is what the estimator sees);
a resize is built without the layout helper onnxruntime needs, its time being the kernel's
on any device; onnxruntime's layout conversions ("reorder") are never in a kit, and a
vector kernel never carries an activation (`decompose` gives them none).

Blocks are not fitted on: `kit_import` checks the fitted target against them (each block's
time against the sum of its kernels' estimates, and for each pair whether the estimate
ranks the two sides as the device does), since they are what a rewrite trades.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from rewriter.cost.kernels import decompose
from rewriter.cost.kit_manifest import (
    BASELINE_MANY,
    BASELINE_ONE,
    MANIFEST,
    KitEntry,
    KitError,
    write_manifest,
)
from rewriter.cost.measurements import MeasurementError
from rewriter.cost.one_op import OPSET, one_op_model, relu_chain
from rewriter.cost.opspec import KINDS, MAC_KINDS, OpSpec, vector_ops
from rewriter.cost.sampling import sample_specs
from rewriter.errors import BadInputError
from rewriter.graph_io import Model, model_from_proto

MODELS_DIR = "models"
README = "README.md"
DEFAULT_N = 500
JITTER = math.log(1.5)  # neighbours: sizes scaled by exp(U(-JITTER, JITTER)), x0.67-x1.5
# The passes whose every-site form shows the kernels a search would price.
REWRITES = ("fuse-ibn", "dw-to-dense", "dw-to-grouped", "fuse-linear-conv", "align-channels-up")
# Inverted bottlenecks as MobileNetV2 has them at 224x224: (in, expanded, out channels,
# input side, depthwise kernel, stride); and depthwise convs (channels, side, kernel,
# stride) to set against their dense replacement.
IBN_BLOCKS = ((16, 96, 24, 112, 3, 2), (24, 144, 24, 56, 3, 1), (32, 192, 64, 28, 3, 2),
              (64, 384, 64, 14, 3, 1), (96, 576, 160, 14, 5, 2), (160, 960, 160, 7, 5, 1))
DW_PAIRS = ((16, 112, 3, 1), (32, 56, 3, 1), (64, 28, 3, 1), (96, 14, 3, 1),
            (144, 28, 3, 2), (256, 7, 3, 1))
BLOCK_ACT = "relu6"
# a one-op model's source -> how the kit's summary counts it
_LABELS = {"model": "model kernels", "rewrite": "rewrite kernels", "pair": "pair ops",
           "block": "block kernels", "near": "neighbours", "space": "sampled ops"}


@dataclass
class KitSummary:
    entries: list[KitEntry]
    skipped: int = 0  # kernels no one-op model stands for exactly (see `kit_model`)
    counts: dict[str, int] = field(default_factory=dict)  # source -> models
    protos: dict[str, onnx.ModelProto] = field(default_factory=dict, repr=False)  # id -> model

    def text(self) -> str:
        parts = ", ".join(f"{count} {source}" for source, count in self.counts.items())
        skipped = (f"; {self.skipped} kernels left out (no one-op model decomposes back to "
                   "them)") if self.skipped else ""
        return f"{len(self.entries)} models: {parts}{skipped}"


# ----------------------------------------------------------------------------- models

def kit_spec(spec: OpSpec) -> OpSpec | None:
    """The kernel a kit measures for `spec`: no layout, no activation on a vector kind
    (`decompose` gives them none); None for a layout conversion, which only onnxruntime's
    CPU provider inserts."""
    if spec.kind == "reorder":
        return None
    return replace(spec, layout="", act=spec.act if spec.kind in MAC_KINDS else "")


def kit_model(spec: OpSpec) -> onnx.ModelProto | None:
    """The one-op model of `spec`, or None when none decomposes back to exactly `spec`."""
    # an unblocked resize has no layout helper conv in front (cost.one_op.one_op_model)
    built = replace(spec, layout="nchw") if spec.kind == "resize" else spec
    try:
        proto = one_op_model(built)
        kernels = decompose(model_from_proto(proto))
    except (MeasurementError, BadInputError):
        return None
    return proto if [k.spec for k in kernels] == [spec] else None


def ibn_block(cin: int, expanded: int, cout: int, side: int, kernel: int, stride: int,
              fused: bool, seed: int = 0) -> onnx.ModelProto:
    """An inverted bottleneck (1x1 expand + act, depthwise KxK + act, 1x1 project), or with
    `fused` its fused-IBN form (dense KxK cin -> expanded + act, 1x1 project), as the
    fuse-ibn pass writes it (built by the zoo's builder, BatchNorm folded, batch 1)."""
    from rewriter.zoo._builder import _NetBuilder

    net = _NetBuilder(seed=seed, opset=OPSET, batch=1)
    y = net.input("x0", cin, side)
    if fused:
        y = net.act(net.conv(y, expanded, "expand", kernel=kernel, stride=stride), BLOCK_ACT,
                    "expand.act")
    else:
        y = net.act(net.conv(y, expanded, "expand"), BLOCK_ACT, "expand.act")
        y = net.act(net.conv(y, expanded, "dw", kernel=kernel, stride=stride, group=expanded),
                    BLOCK_ACT, "dw.act")
    y = net.conv(y, cout, "project", gain=1.0)
    return net.build({"y": y}, "fused_ibn" if fused else "ibn")


def model_inputs(proto: onnx.ModelProto) -> tuple[tuple[str, tuple[int, ...]], ...]:
    initializers = {i.name for i in proto.graph.initializer}
    return tuple((v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim))
                 for v in proto.graph.input if v.name not in initializers)


# ----------------------------------------------------------------------------- choosing

def work(spec: OpSpec) -> int:
    return spec.macs + vector_ops(spec)


def _rewritten(model: Model, multiple: int) -> list[tuple[str, Model]]:
    """The model (BatchNorm folded) and its every-site rewrites."""
    from rewriter.passes import get_pass
    from rewriter.rewrite import apply_pass

    folded = apply_pass(model, get_pass("fold-bn")).model
    out = [("model", folded)]
    for name in REWRITES:
        step = apply_pass(folded, get_pass(name, multiple))
        if step.applied:
            out.append(("rewrite", step.model))
    return out


def _coordinates(spec: OpSpec, size: float) -> np.ndarray:
    """Where a kernel sits for `spread`: its size (log ms or log work), channels, map side
    and kernel area on log scales, and its kind far from every other kind's."""
    kinds = [3.0 * (spec.kind == k) for k in KINDS]
    return np.array([math.log1p(size), math.log(spec.cin), math.log(spec.cout),
                     math.log(spec.h_out * spec.w_out) / 2, math.log(spec.kh * spec.kw), *kinds])


def spread(specs: Sequence[OpSpec], size: Callable[[OpSpec], float]) -> list[int]:
    """An order of `specs` that covers them early: the largest first (by `size(spec)`),
    then each time the one farthest from all taken (farthest-point sampling). A prefix
    then spans the kinds and sizes the kernels have, which is what a regressor fitted on
    it needs: with the largest kernels first, 100 timings left the zoo models of
    benchmarks/kit_fewshot.py 40% off (their small kernels all extrapolated), with this
    order 3%."""
    if not specs:
        return []
    sizes = [size(s) for s in specs]
    points = np.array([_coordinates(s, z) for s, z in zip(specs, sizes)])
    first = int(np.argmax(sizes))
    order, distance = [first], np.linalg.norm(points - points[first], axis=1)
    distance[first] = -1.0
    while len(order) < len(specs):
        pick = int(np.argmax(distance))
        order.append(pick)
        distance = np.minimum(distance, np.linalg.norm(points - points[pick], axis=1))
        distance[order] = -1.0
    return order


def guided_specs(models: Sequence[Model], multiple: int,
                 time_of: Callable[[OpSpec], float] | None = None) -> list[tuple[OpSpec, str]]:
    """(kernel, "model" or "rewrite") of `models` and their rewrites, distinct, in `spread`
    order (sized by `time_of(spec)` in ms when given, else by work)."""
    found: dict[tuple, tuple[OpSpec, str]] = {}
    for model in models:
        for source, variant in _rewritten(model, multiple):
            for kernel in decompose(variant):
                spec = kit_spec(kernel.spec)
                if spec is not None:
                    found.setdefault(spec.signature(), (spec, source))
    items = sorted(found.values(), key=lambda item: item[0].signature())
    order = spread([spec for spec, _ in items], time_of or work)
    return [items[i] for i in order]


def jittered(spec: OpSpec, rng: np.random.Generator) -> OpSpec | None:
    """A neighbour of `spec`: channels and map sides scaled by up to x0.67-x1.5 (groups
    kept whole), the output map in proportion; None when no valid spec results."""
    def scaled(c: int) -> int:
        return max(1, round(c * math.exp(rng.uniform(-JITTER, JITTER))))

    k = spec.kind
    fields: dict[str, int] = {}
    if k == "dwconv":
        c = scaled(spec.cin)
        fields = {"cin": c, "cout": c * (spec.cout // spec.cin), "groups": c}
    elif k == "groupconv":
        g = spec.groups
        fields = {"cin": max(1, scaled(spec.cin) // g) * g,
                  "cout": max(1, scaled(spec.cout) // g) * g}
    elif k == "concat":
        if spec.n_inputs < 2:
            return None
        cin, part = scaled(spec.cin), scaled((spec.cout - spec.cin) // (spec.n_inputs - 1))
        fields = {"cin": cin, "cout": cin + part * (spec.n_inputs - 1)}
    elif spec.cin == spec.cout and k not in ("conv", "conv1x1", "gemm"):
        fields = {"cin": (c := scaled(spec.cin)), "cout": c}
    else:
        fields = {"cin": scaled(spec.cin), "cout": scaled(spec.cout)}
    if k not in ("gemm", "gap") and spec.h_in * spec.w_in > 1:
        f = math.exp(rng.uniform(-JITTER, JITTER))
        for size_in, size_out in (("h_in", "h_out"), ("w_in", "w_out")):
            old = getattr(spec, size_in)
            new = max(1, round(old * f))
            fields[size_in] = new
            fields[size_out] = max(1, round(getattr(spec, size_out) * new / old))
    elif k == "gap" and spec.h_in * spec.w_in > 1:
        f = math.exp(rng.uniform(-JITTER, JITTER))
        fields.update(h_in=max(1, round(spec.h_in * f)), w_in=max(1, round(spec.w_in * f)))
    try:
        return replace(spec, **fields)
    except ValueError:
        return None


class _Chooser:
    """The kit's one-op models, distinct by signature, in the order chosen."""

    def __init__(self) -> None:
        self.entries: list[KitEntry] = []
        self.protos: dict[str, onnx.ModelProto] = {}
        self.ids: dict[tuple, str] = {}
        self.skipped = 0

    def add(self, spec: OpSpec, source: str, pair: str = "") -> str | None:
        """The id of `spec`'s model (added now, or already there, then tagged with `pair`
        if it has no pair yet); None when it cannot be built as exactly one kernel."""
        key = spec.signature()
        if key in self.ids:
            ident = self.ids[key]
            if pair:
                at = next(i for i, e in enumerate(self.entries) if e.id == ident)
                if not self.entries[at].pair:
                    self.entries[at] = replace(self.entries[at], pair=pair)
            return ident
        proto = kit_model(spec)
        if proto is None:
            self.skipped += 1
            return None
        ident = f"op-{len(self.ids) + 1:04d}"
        self.ids[key] = ident
        self._keep(KitEntry(ident, f"{MODELS_DIR}/{ident}.onnx", spec, model_inputs(proto),
                            "op", source, pair), proto)
        return ident

    def add_model(self, ident: str, proto: onnx.ModelProto, role: str, source: str,
                  pair: str = "", kernels: tuple[str, ...] = ()) -> None:
        self._keep(KitEntry(ident, f"{MODELS_DIR}/{ident}.onnx", None, model_inputs(proto),
                            role, source, pair, kernels), proto)

    def _keep(self, entry: KitEntry, proto: onnx.ModelProto) -> None:
        self.entries.append(entry)
        self.protos[entry.id] = proto


def _space_specs(n: int, spaces: Sequence[str], seed: int, parallelism: int
                 ) -> list[tuple[OpSpec, str]]:
    """(kit kernel, space) of `n` draws from each space, interleaved; all `n` are drawn,
    so the draws do not depend on how many the kit has room for."""
    drawn = [sample_specs(n, seed, parallelism, space) for space in spaces]
    out = []
    for group in zip(*drawn):
        for sampled, space in zip(group, spaces):
            spec = kit_spec(sampled)
            if spec is not None:
                out.append((spec, space))
    return out


def choose(*, models: Sequence[Model] = (), n: int = DEFAULT_N,
           spaces: Sequence[str] = ("default",), parallelism: int = 32, seed: int = 0,
           time_of: Callable[[OpSpec], float] | None = None) -> KitSummary:
    """Every model of a kit, in manifest order (see the module docstring)."""
    if n < 0:
        raise KitError(f"-n must be 0 or more, got {n}")
    chooser = _Chooser()
    chooser.add_model(BASELINE_ONE, relu_chain(1), "baseline", "chain-1")
    chooser.add_model(BASELINE_MANY, relu_chain(101), "baseline", "chain-101")
    budget = n  # one-op models of the guided, near and space steps

    guided = guided_specs(models, parallelism, time_of) if models else []
    for spec, source in guided:
        if budget and chooser.add(spec, source):
            budget -= 1
    for i, (channels, side, kernel, stride) in enumerate(DW_PAIRS, 1):
        dw = OpSpec.conv2d(channels, channels, side, kernel, stride, channels, BLOCK_ACT)
        chooser.add(dw, "pair", f"dw-{i}")
        chooser.add(replace(dw, kind="conv", groups=1), "pair", f"dw-{i}")
    blocks = []
    for i, shape in enumerate(IBN_BLOCKS, 1):
        for fused in (False, True):
            proto = ibn_block(*shape, fused=fused, seed=seed)
            ids = tuple(chooser.add(k.spec, "block") for k in decompose(model_from_proto(proto)))
            if None not in ids:
                blocks.append((f"blk-{i}{'f' if fused else ''}", proto,
                               "fused-ibn" if fused else "ibn", f"ibn-{i}", ids))
    for spec, _ in guided:
        if not budget:
            break
        # a neighbour of its own seed: the same whatever the order of the kernels
        rng = np.random.default_rng([seed, zlib.crc32(repr(spec.signature()).encode())])
        near = jittered(spec, rng)
        if near is not None and near.signature() not in chooser.ids and chooser.add(near, "near"):
            budget -= 1
    if budget:
        for spec, space in _space_specs(n, spaces, seed, parallelism):
            if not budget:
                break
            if spec.signature() not in chooser.ids and chooser.add(spec, f"space:{space}"):
                budget -= 1
    for ident, proto, source, pair, ids in blocks:
        chooser.add_model(ident, proto, "block", source, pair, ids)
    counts: dict[str, int] = {}
    for e in chooser.entries:
        key = _LABELS[e.source.split(":")[0]] if e.role == "op" else f"{e.role}s"
        counts[key] = counts.get(key, 0) + 1
    return KitSummary(chooser.entries, chooser.skipped, counts, chooser.protos)


# ----------------------------------------------------------------------------- writing

def write_kit(out: str | Path, summary: KitSummary) -> None:
    """The models, the README and then the manifest (last, so a kit cut short by an error
    has none) into `out`, which must be new or empty."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KitError(f"{out}: exists and is not an empty folder; choose a new one")
    from rewriter.atomic import atomic_write, atomic_write_text

    try:
        (out / MODELS_DIR).mkdir(parents=True, exist_ok=True)
        for entry in summary.entries:
            proto = summary.protos[entry.id]
            atomic_write(out / entry.file, lambda tmp, proto=proto: onnx.save(proto, str(tmp)))
        atomic_write_text(out / README, readme(summary))
    except OSError as exc:
        raise KitError(f"cannot write the kit to {out}: {exc.strerror or exc}") from None
    write_manifest(out / MANIFEST, summary.entries)


def readme(summary: KitSummary) -> str:
    first = next(e for e in summary.entries if e.role == "op")
    return f"""# A rewriter measurement kit

{summary.text()}.

Each file in `models/` is a small float32 ONNX model with static shapes and batch 1;
`manifest.csv` lists them (`id`, `file`, then the kernel each one-op model stands for, its
inputs, and for blocks the ids of their kernels). Time them on your device, in manifest
order if you cannot time them all: the first rows matter most.

## Timing

Report for each model the median latency of one inference, in milliseconds, after a few
warm-up runs, with inputs of the shapes in `manifest.csv` (any values).

- **onnxruntime, any execution provider** (CPU, CUDA, TensorRT, OpenVINO, CoreML, QNN, ...),
  on a machine with Python and rewriter installed:

      rewriter cost run-kit KIT/ --provider CUDAExecutionProvider -o timings.csv

- **A vendor benchmark tool**: convert or compile each model as you deploy models (say
  `trtexec --onnx=models/{first.id}.onnx` for TensorRT, or your SDK's converter and its
  on-device benchmark), and take its median or mean latency per inference.
- **A hosted profiler**: upload the models as a batch of profiling jobs and collect the
  per-inference latency of each.

Time the baselines `{BASELINE_ONE}` and `{BASELINE_MANY}` the same way: their times are what
one inference costs besides its kernels, which the import removes from every other timing.
A model the device cannot run is simply left out.

## What to return

A CSV with a header and one row per timed model:

    id,latency_ms
    {BASELINE_ONE},0.0123
    {first.id},0.4567

then, on a machine with rewriter:

    rewriter cost import KIT/ timings.csv -o my-device.toml [--like npu-p32]
    rewriter estimate model.onnx --target my-device.toml

Importing again with more timings (of this kit or another) adds them to those imported
before; a later timing of the same model replaces the earlier one.
"""
