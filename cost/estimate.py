"""Whole-model latency and memory for a target: the sum over kernels of per-kernel estimates.

`Target` binds a hardware profile to the estimator that serves it: the analytic model for
profiles of kind "analytic", the regressor fitted on the profile's measurements for kind
"measured". Per-kernel estimates are cached by op signature, so estimating a candidate that
shares most kernels with the last one costs a few dictionary look-ups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rewriter.analysis.memory import memory_stats
from rewriter.cost.analytic import estimate_op, peak_s
from rewriter.cost.kernels import Kernel, decompose
from rewriter.cost.opspec import OpSpec
from rewriter.cost.profile import HardwareProfile, load_profile
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


class Target:
    """A named target: a profile plus the per-kernel latency model that serves it."""

    def __init__(self, profile: HardwareProfile) -> None:
        self.profile = profile
        self._cache: dict[tuple, tuple[float, float | None]] = {}
        self._regressor = None
        if profile.kind == "measured":
            from rewriter.cost.latency import regression_for

            self._regressor = regression_for(profile)

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
                # cost.measure) plus in-model dispatch.
                ms = float(self._regressor.predict_ms(spec)) + self.profile.overhead_s * 1e3
                if self.profile.floor_at_peak:
                    ms = max(ms, peak_s(spec, self.profile) * 1e3)
                hit = (max(ms, self.profile.overhead_s * 1e3), None)
            else:
                est = estimate_op(spec, self.profile)
                hit = (est.latency_s * 1e3, est.utilisation)
            self._cache[key] = hit
        return hit

    def kernels_ms(self, kernels: list[Kernel]) -> float:
        return sum(self.kernel(k.spec)[0] for k in kernels)

    def estimate(self, model: Model) -> ModelEstimate:
        kernels = decompose(model)
        ops = []
        for k in kernels:
            ms, util = self.kernel(k.spec)
            ops.append(KernelEstimate(k.name, k.op_type, k.spec.kind, k.nodes, ms, util))
        if self.profile.blocked_layout:
            from rewriter.cost.layout import onnxruntime_reorders

            for tensor, spec in onnxruntime_reorders(model):
                ops.append(KernelEstimate(f"reorder:{tensor}", "Reorder", "reorder", (),
                                          self.kernel(spec)[0], None))
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
