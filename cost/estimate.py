"""Whole-model latency and memory for a target: the sum over kernels of per-kernel estimates.

`Target` binds a hardware profile to the estimator that serves it: the analytic model for
profiles of kind "analytic", the regressor fitted on the profile's measurements for kind
"measured". Per-kernel estimates are cached by op signature, so estimating a candidate that
shares most kernels with the last one costs a few dictionary look-ups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rewriter.analysis.memory import memory_stats
from rewriter.cost.analytic import estimate_op, peak_s
from rewriter.cost.kernels import Part, decompose
from rewriter.cost.opspec import SPEC_FIELDS, OpSpec
from rewriter.cost.profile import HardwareProfile, ProfileError, load_profile
from rewriter.graph_io import Model


@dataclass(frozen=True)
class KernelEstimate:
    name: str
    op_type: str
    kind: str
    nodes: tuple[str, ...]
    latency_ms: float
    utilisation: float | None


@dataclass
class ModelEstimate:
    target: str
    latency_ms: float
    param_bytes: int
    peak_activation_bytes: int
    ops: list[KernelEstimate] = field(default_factory=list)

    @property
    def utilisation(self) -> float | None:
        """MAC-array utilisation over the whole model, latency-weighted."""
        timed = [(o.latency_ms, o.utilisation) for o in self.ops if o.utilisation is not None]
        total = sum(t for t, _ in timed)
        return sum(t * u for t, u in timed) / total if total else None

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "latency_ms": self.latency_ms,
            "param_bytes": self.param_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "utilisation": self.utilisation,
            "ops": [
                {"name": o.name, "op_type": o.op_type, "kind": o.kind, "nodes": list(o.nodes),
                 "latency_ms": o.latency_ms, "utilisation": o.utilisation}
                for o in self.ops
            ],
        }


def streaming_bandwidth(rows: list[tuple[OpSpec, float]], onchip_bytes: int,
                        source: object = "measurements") -> float:
    """Bytes per second at which measured batch-1 gemms whose weights exceed `onchip_bytes`
    ran (the median over them): the rate a kernel reads weights that are not in the core's
    own cache. Such a gemm does one multiply-add per weight, so it is bound by that rate."""
    rates = [spec.weight_bytes / (ms / 1e3) for spec, ms in rows
             if spec.kind == "gemm" and spec.n == 1 and spec.weight_bytes > onchip_bytes]
    if not rates:
        raise ProfileError(f"{source}: stream_weights needs measured gemms whose weights "
                           f"exceed onchip_memory_bytes ({onchip_bytes})")
    return float(np.median(rates))


class Target:
    """A named target: a profile plus the per-kernel latency model that serves it."""

    def __init__(self, profile: HardwareProfile) -> None:
        self.profile = profile
        self._cache: dict[tuple, tuple[float, float | None]] = {}
        self._regressor = None
        self._weights_bytes_per_ms: float | None = None
        self._reorders_measured = False
        # measured kernel times x this: how fast the machine runs now against when its ops
        # were measured (cost.retime), 1 as measured
        self.speed = 1.0
        # signature -> ms of kernels timed on this machine, used instead of the regressor
        self._kernel_times: dict[tuple, float] = {}
        if profile.kind == "measured":
            from rewriter.cost.latency import regression_for

            self._regressor = regression_for(profile)
            self._reorders_measured = self._regressor.covers("reorder")
            if profile.stream_weights:
                self._weights_bytes_per_ms = streaming_bandwidth(
                    self._regressor.rows, profile.onchip_memory_bytes, profile.source) / 1e3

    @classmethod
    def load(cls, name_or_path: str | Path) -> "Target":
        return cls(load_profile(name_or_path))

    @property
    def name(self) -> str:
        return self.profile.name

    def kernel(self, spec: OpSpec) -> tuple[float, float | None]:
        """(latency in ms, utilisation or None) of one kernel, cached by signature."""
        key = spec.signature()
        hit = self._cache.get(key)
        if hit is None:
            if spec.kind in self.profile.free_kinds:
                hit = (0.0, None)
            elif self._regressor is not None:
                # Measured kernel time (the profiler's own cost already removed, see
                # cost.measure), no less than its weights take to stream in when the
                # profile says they do, plus in-model dispatch. A kernel timed now
                # (set_kernel_times) is not scaled by the machine's speed.
                timed = self._kernel_times.get(key)
                ms = self.fitted_ms(spec) if timed is None else timed
                if self._weights_bytes_per_ms:
                    # a rate of the CSV's sitting, so at the machine's speed now
                    ms = max(ms, spec.weight_bytes / self._weights_bytes_per_ms * self.speed)
                ms += self.profile.overhead_s * 1e3
                if self.profile.floor_at_peak:
                    ms = max(ms, peak_s(spec, self.profile) * 1e3)
                hit = (max(ms, self.profile.overhead_s * 1e3), None)
            else:
                est = estimate_op(spec, self.profile)
                hit = (est.latency_s * 1e3, est.utilisation)
            self._cache[key] = hit
        return hit

    def set_speed(self, ratio: float) -> None:
        """Scale measured kernel times by `ratio` (cost.retime.machine_speed)."""
        if self._regressor is None:
            raise ProfileError(f"{self.name}: an analytic target has no measured times to "
                               "scale")
        if not (ratio > 0 and np.isfinite(ratio)):
            raise ValueError(f"speed ratio must be a positive number, got {ratio!r}")
        self.speed = float(ratio)
        self._cache.clear()

    def fitted_ms(self, spec: OpSpec) -> float:
        """A measured target's kernel time for `spec` as its regressor predicts it, at the
        machine's speed (`set_speed`): no dispatch cost, no weight-streaming floor."""
        if self._regressor is None:
            raise ProfileError(f"{self.name}: an analytic target has no fitted kernel times")
        return float(self._regressor.predict_ms(spec)) * self.speed

    def set_kernel_times(self, times: dict[tuple, float]) -> None:
        """Price the kernels in `times` (OpSpec.signature() -> ms, each timed as a one-op
        model on this machine now) by that time instead of the regressor's prediction; the
        rest of the pricing (weight streaming, dispatch) is unchanged. This separates the
        regressor's error from what a one-op timing misses of a kernel inside a model
        (benchmarks/cost_kernels.py); it is no way to score held-out models."""
        if self._regressor is None:
            raise ProfileError(f"{self.name}: an analytic target has no measured kernel times")
        bad = [ms for ms in times.values() if not (ms > 0 and np.isfinite(ms))]
        if bad:
            raise ValueError(f"kernel times must be positive numbers, got {bad[0]!r}")
        for key in times:
            try:  # a misspelt key would never be looked up
                OpSpec(**dict(zip(SPEC_FIELDS, key, strict=True)))
            except (TypeError, ValueError):
                raise ValueError(f"not an OpSpec signature: {key!r}") from None
        self._kernel_times = dict(times)
        self._cache.clear()

    def _reorder_spec(self, spec: OpSpec) -> OpSpec:
        """A layout conversion as measured, or as a copy of the tensor (an elementwise op of
        its size) for measurements that hold no conversions."""
        if self._reorders_measured:
            return spec
        return replace(spec, kind="elementwise", layout="")

    def total_ms(self, specs: Iterable[OpSpec]) -> float:
        """The summed prices of `specs`: with a model's `parts`, its estimated latency
        without asking onnxruntime for its layout again."""
        return sum(self.kernel(spec)[0] for spec in specs)

    def parts(self, model: Model) -> list[Part]:
        """Every pass this target prices for `model`: its kernels (on a `blocked_layout`
        target, each as onnxruntime runs it, `onnxruntime_parts`) and then the layout
        conversions onnxruntime inserts."""
        if not self.profile.blocked_layout:
            return [(k.name, k.op_type, k.nodes, k.spec) for k in decompose(model)]
        from rewriter.cost.layout import onnxruntime_layout
        from rewriter.cost.onnxruntime_kernels import onnxruntime_parts

        layout = onnxruntime_layout(model)
        nodes = {node.name: node for node in model.graph.nodes}
        parts = [part for k in decompose(model)
                 for part in onnxruntime_parts(k, layout, nodes, model.shapes)]
        return parts + [(f"reorder:{tensor}", "Reorder", (), self._reorder_spec(spec))
                        for tensor, spec in layout.reorders]

    def estimate(self, model: Model) -> ModelEstimate:
        ops = []
        for name, op_type, members, spec in self.parts(model):
            ms, util = self.kernel(spec)
            # a conversion stays one whatever it is priced as (`_reorder_spec`)
            kind = "reorder" if op_type == "Reorder" else spec.kind
            ops.append(KernelEstimate(name, op_type, kind, members, ms, util))
        mem = memory_stats(model)
        return ModelEstimate(
            target=self.name,
            latency_ms=sum(o.latency_ms for o in ops),
            param_bytes=mem.param_bytes,
            peak_activation_bytes=mem.peak_activation_bytes,
            ops=ops,
        )


def estimate(model: Model, target: str | Path | Target) -> ModelEstimate:
    """Estimate `model` on a built-in target name, a profile path, or a loaded Target."""
    resolved = target if isinstance(target, Target) else Target.load(target)
    return resolved.estimate(model)
