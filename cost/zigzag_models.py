"""Whole models on the ZigZag simulator: the emulator that stands in for a device.

`simulate_model_ms` decomposes a model into kernels (`cost.kernels.decompose`), simulates
every MAC kernel (conv, conv1x1, dwconv, groupconv, gemm) on a ZigZag accelerator through
the cached per-spec path (`cost.zigzag.measure_zigzag`) and sums; every other kernel costs
0, as it does in ZigZag, which turns each non-Conv/Gemm/MatMul node into a zero-cost dummy.
A kernel's fused activation is dropped before simulating (a dummy node too), so a layer
shared by two models with different activations is simulated once.

Does the per-layer sum equal what ZigZag reports for the whole ONNX model
(``get_hardware_performance_zigzag`` on the full graph, `whole_model_cycles`)? ZigZag's
whole-model total is its SumStage: the sum over layers of each layer's best mapping, every
layer mapped and costed on its own with its operands starting and ending in DRAM (the
inter-layer data-locality stages are off unless asked for). So it charges nothing between
layers that the per-layer sum misses. Checked with zigzag-dse 3.9.1:

- MobileNetV2 0.35/96 (53 layers): equal, 431,178 cycles on edge_tpu_like and 1,907,907
  on tpu_like; PP-OCR cls at 48x192 on tpu_like: equal, 5,072,745; the tiny model of
  tests/test_cost_zigzag_models.py: equal.
- PP-OCR rec at 48x320 on tpu_like: 47,338,268 against ZigZag's 47,339,382 (-0.002%). The
  two attention MatMuls of two activations (scores x values) cost 2,287 cycles each here
  and 2,844 there: `decompose` cannot tell a second activation from weights, so they are
  simulated as gemms with constant weights, while ZigZag maps the second operand as an
  activation with batch dims. Too small to model.
- PP-OCR det at 64x96 on tpu_like: 1,581,487 against 1,544,934 (+2.4%), exactly its two
  ConvTranspose layers (7,344 + 29,209 cycles): ZigZag has no ConvTranspose parser and
  makes them free dummies. Here they are simulated as `decompose` describes them, a conv
  over the zero-inserted input, which is how an accelerator without a transposed-conv
  mode runs them and what the targets estimate; not charging them would be ZigZag's gap,
  not the accelerator's.

Two layer shapes needed fixes to get there: an anisotropic stride (PP-OCR's (2, 1)) is
built from the layer's sizes (`cost.one_op.one_op_model`), and a layer that fits the
array in one step no longer crashes ZigZag's mapping printout (`cost.zigzag`).

ZigZag reads a symbolic dim as 0 (a Gemm of batch 0 divides by zero), so `whole_model_cycles`
gives it the model with every tensor at its concrete shape (batch 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Callable

import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from rewriter.cost.estimate import Target
from rewriter.cost.kernels import Kernel, decompose
from rewriter.cost.measurements import MeasurementError
from rewriter.cost.opspec import OpSpec
from rewriter.cost.validate import (
    Case,
    GainReport,
    Pair,
    ValidationReport,
    validate_by,
    validate_gains,
)
from rewriter.cost.zigzag import SUPPORTED_KINDS, ZigZagError, measure_zigzag, simulate_cycles
from rewriter.graph_io import Model
from rewriter.parallel import Executor


def target_accelerator(target: Target) -> str:
    """The ZigZag accelerator `target` was fitted on; ZigZagError if it was not."""
    accelerator = target.profile.accelerator
    if accelerator is None:
        raise ZigZagError(f"target {target.name} is not fitted on ZigZag (its profile names no "
                          "accelerator); use edge-tpu-zz or tpu-zz, or add accelerator = "
                          "\"NAME\" to a profile measured with --backend zigzag")
    return accelerator


def simulated_spec(kernel: Kernel) -> OpSpec | None:
    """What ZigZag simulates of a kernel: its MAC layer without the (free) activation."""
    return replace(kernel.spec, act="") if kernel.spec.kind in SUPPORTED_KINDS else None


def simulate_kernels_ms(models: Sequence[Model], accelerator: str, *, clock_hz: float = 1e9,
                        progress: bool = False,
                        cache_dir: Path | None = None,
                        executor: Executor | None = None) -> list[list[tuple[Kernel, float]]]:
    """Per model, every kernel with its simulated latency in ms (0 for non-MAC kernels).

    The layers of all `models` are simulated in one batch, so one executor (`executor`;
    default: a local pool of as many processes as cores) serves every uncached layer.
    """
    kernels = [decompose(m) for m in models]
    specs = {s.signature(): s for ks in kernels for k in ks
             if (s := simulated_spec(k)) is not None}
    try:
        rows = measure_zigzag(specs.values(), accelerator, clock_hz=clock_hz,
                              cache_dir=cache_dir, progress=progress,
                              executor=executor)
    except MeasurementError as exc:
        raise ZigZagError(f"cannot build a layer for ZigZag: {exc}") from None
    ms = {r.spec.signature(): r.latency_ms for r in rows}
    return [[(k, 0.0 if (s := simulated_spec(k)) is None else ms[s.signature()]) for k in ks]
            for ks in kernels]


def simulate_models_ms(models: Sequence[Model], accelerator: str, *, clock_hz: float = 1e9,
                       progress: bool = False,
                       cache_dir: Path | None = None,
                       executor: Executor | None = None) -> list[float]:
    """Simulated latency (ms at `clock_hz`) of each model: the sum over its MAC kernels."""
    per_model = simulate_kernels_ms(models, accelerator, clock_hz=clock_hz,
                                    progress=progress, cache_dir=cache_dir, executor=executor)
    return [sum(ms for _, ms in kernels) for kernels in per_model]


def simulate_model_ms(model: Model, accelerator: str, clock_hz: float = 1e9,
                      progress: bool = False,
                      cache_dir: Path | None = None, executor: Executor | None = None) -> float:
    """Latency of `model` on ZigZag `accelerator` in ms at `clock_hz` (1 GHz: 1 ms = 1e6
    cycles): the sum of its MAC layers' simulated cycles, each layer simulated once ever
    (cached in ``~/.cache/rewriter/zigzag``). Raises ZigZagError when ZigZag is missing or
    the accelerator unknown."""
    return simulate_models_ms([model], accelerator, clock_hz=clock_hz,
                              progress=progress, cache_dir=cache_dir, executor=executor)[0]


_ZIGZAG_LAYERS = ("Conv", "Gemm", "MatMul")  # the ONNX ops ZigZag's parser simulates


def static_onnx(model: Model) -> onnx.ModelProto:
    """`model` as ONNX with every tensor at its concrete shape (symbolic dims at 1)."""
    proto = model.to_onnx(infer_shapes=False)  # no value_info: only the layers' is set below
    shapes = model.shapes
    for vi in (*proto.graph.input, *proto.graph.output):
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape
            dims.Clear()
            for size in shapes[vi.name]:
                dims.dim.add().dim_value = size
    # ZigZag reads the shapes of its layers' tensors only, and they are float (an exporter
    # often leaves their type unset, which is why it is not read off the graph)
    outer = {vi.name for vi in (*proto.graph.input, *proto.graph.output)}
    layer_tensors = {t.name for node in model.graph.nodes if node.op in _ZIGZAG_LAYERS
                     for t in (*node.inputs, *node.outputs) if isinstance(t, gs.Variable)}
    for name in sorted(layer_tensors - outer):
        if name in shapes:
            proto.graph.value_info.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shapes[name])))
    return proto


def whole_model_cycles(model: Model, accelerator: str) -> float:
    """ZigZag's own total for the whole model (every layer simulated again, uncached)."""
    return simulate_cycles(static_onnx(model), accelerator)


def validate_with_zigzag(original: Model, optimized: Model, target: Target, *,
                         progress: bool = False,
                         cache_dir: Path | None = None,
                         executor: Executor | None = None) -> dict[str, object]:
    """Simulate both models on the ZigZag accelerator `target` was fitted on.

    Returns {"target", "accelerator", "zigzag_original_ms", "zigzag_optimized_ms",
    "zigzag_gain_pct", "estimated_original_ms", "estimated_optimized_ms",
    "estimated_gain_pct", "sign_agrees"}; a gain is 100 * (original - optimized) /
    original, positive when the optimized model is faster. Raises ZigZagError (one line)
    when `target` is not ZigZag-fitted, ZigZag is missing or a layer cannot be simulated.
    """
    (row,) = gains_on_zigzag(target, [Pair("model", "optimized", original, optimized)],
                             progress=progress, cache_dir=cache_dir,
                             executor=executor).rows
    return {"target": target.name, "accelerator": target_accelerator(target),
            "zigzag_original_ms": row.measured_before_ms,
            "zigzag_optimized_ms": row.measured_after_ms,
            "zigzag_gain_pct": 100 * row.measured_gain,
            "estimated_original_ms": row.estimated_before_ms,
            "estimated_optimized_ms": row.estimated_after_ms,
            "estimated_gain_pct": 100 * row.estimated_gain, "sign_agrees": row.sign_agrees}


def zigzag_measure(target: Target, *, progress: bool = False,
                   cache_dir: Path | None = None, executor: Executor | None = None
                   ) -> Callable[[Sequence[Model]], list[float]]:
    """The "device" of a ZigZag-fitted target for `cost.validate`: models -> simulated ms."""
    accelerator = target_accelerator(target)

    def measure(models: Sequence[Model]) -> list[float]:
        return simulate_models_ms(models, accelerator, clock_hz=target.profile.clock_hz,
                                  progress=progress, cache_dir=cache_dir,
                                  executor=executor)

    return measure


def validate_on_zigzag(target: Target, cases: Sequence[Case], *, progress: bool = False,
                       cache_dir: Path | None = None,
                       executor: Executor | None = None) -> ValidationReport:
    """Every case simulated whole on ZigZag against `target`'s estimate."""
    measure = zigzag_measure(target, progress=progress, cache_dir=cache_dir,
                             executor=executor)
    return validate_by(target, cases, measure)


def gains_on_zigzag(target: Target, pairs: Sequence[Pair], *, progress: bool = False,
                    cache_dir: Path | None = None, executor: Executor | None = None) -> GainReport:
    """Every rewrite's gain simulated on ZigZag against `target`'s estimated gain."""
    measure = zigzag_measure(target, progress=progress, cache_dir=cache_dir,
                             executor=executor)
    return validate_gains(target, pairs, measure)
