"""Whole-model latency and memory for a target: the sum over kernels of per-kernel estimates.

`Target` binds a hardware profile to the estimator that serves it: the analytic model for
profiles of kind "analytic", the regressor fitted on the profile's measurements for kind
"measured". Per-kernel estimates are cached by op signature, so estimating a candidate that
shares most kernels with the last one costs a few dictionary look-ups.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
import numpy as np

from rewriter.analysis.memory import memory_stats
from rewriter.cost.analytic import estimate_op, peak_s
from rewriter.cost.kernels import Kernel, decompose
from rewriter.cost.opspec import OpSpec
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
                # profile says they do, plus in-model dispatch.
                ms = float(self._regressor.predict_ms(spec))
                if self._weights_bytes_per_ms:
                    ms = max(ms, spec.weight_bytes / self._weights_bytes_per_ms)
                ms = ms * self.speed + self.profile.overhead_s * 1e3
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

    def _reorder_spec(self, spec: OpSpec) -> OpSpec:
        """A layout conversion as measured, or as a copy of the tensor (an elementwise op of
        its size) for measurements that hold no conversions."""
        if self._reorders_measured:
            return spec
        return replace(spec, kind="elementwise", layout="")

    def kernels_ms(self, kernels: list[Kernel]) -> float:
        return sum(self.kernel(k.spec)[0] for k in kernels)

    def estimate(self, model: Model) -> ModelEstimate:
        layout = None
        if self.profile.blocked_layout:
            from rewriter.cost.layout import onnxruntime_layout
            from rewriter.cost.onnxruntime_kernels import onnxruntime_parts

            layout = onnxruntime_layout(model)
            nodes = {node.name: node for node in model.graph.nodes}
        ops = []
        for k in decompose(model):
            parts = ([(k.name, k.op_type, k.nodes, k.spec)] if layout is None
                     else onnxruntime_parts(k, layout, nodes, model.shapes))
            for name, op_type, members, spec in parts:
                ms, util = self.kernel(spec)
                ops.append(KernelEstimate(name, op_type, spec.kind, members, ms, util))
        for tensor, spec in layout.reorders if layout is not None else ():
            ops.append(KernelEstimate(f"reorder:{tensor}", "Reorder", "reorder", (),
                                      self.kernel(self._reorder_spec(spec))[0], None))
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
