"""Hardware profiles, latency and memory models."""

from rewriter.cost.analytic import OpEstimate, estimate_op
from rewriter.cost.latency import op_latency_s
from rewriter.cost.opspec import KINDS, OpSpec, features
from rewriter.cost.profile import HardwareProfile, ProfileError, builtin_profiles, load_profile

# measure (onnxruntime) and regression (scikit-learn) are imported on first use.
_LAZY = {
    "Measurement": "measurements", "MeasurementError": "measurements",
    "measure_specs": "measure", "one_op_model": "one_op", "read_csv": "measurements",
    "sample_specs": "sampling", "write_csv": "measurements", "EstimatorError": "regression",
    "FitReport": "regression", "RegressionEstimator": "regression",
}


def user_errors() -> tuple[type[Exception], ...]:
    """The cost model's own one-line errors about its input (a profile, a measurement or
    timings file, an estimator, ZigZag): bad input, exit 2, wherever they are reported."""
    from rewriter.cost.measurements import MeasurementError
    from rewriter.cost.regression import EstimatorError
    from rewriter.cost.zigzag import ZigZagError

    return (ProfileError, MeasurementError, EstimatorError, ZigZagError)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"rewriter.cost.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'rewriter.cost' has no attribute {name!r}")


__all__ = [  # noqa: PLE0604 (the lazy names are strings too)
    "KINDS", "HardwareProfile", "OpEstimate", "OpSpec", "ProfileError", "builtin_profiles",
    "estimate_op", "features", "load_profile", "op_latency_s", *_LAZY,
]
