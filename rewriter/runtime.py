"""Running models in onnxruntime, with its errors turned into one-line user errors."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from rewriter.errors import UnsupportedError

# onnxruntime's own warnings (graph-optimizer notes and the like) are not the user's
# business: the tool's sessions, and onnxruntime's default logger, log errors only.
ort.set_default_logger_severity(3)


def session(proto: onnx.ModelProto, threads: int = 0, optimize: bool = True, *,
            profile_prefix: str | None = None, optimized_path: str | None = None,
            provider: str = "CPUExecutionProvider") -> ort.InferenceSession:
    """A session on `provider` (with the CPU for the ops it lacks); `threads` 0 is
    onnxruntime's default; `profile_prefix` turns its profiler on; `optimized_path` is
    where it writes the graph it optimized."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    try:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=list(
            dict.fromkeys([provider, "CPUExecutionProvider"])))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedError(f"onnxruntime cannot load the model: {first}") from None


def with_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `proto` that also returns the (intermediate) tensors `names`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    return probe


def run_model(
    proto: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    output_names: Sequence[str] | None = None,
    optimize: bool = True,
) -> dict[str, np.ndarray]:
    sess = session(proto, optimize=optimize)
    names = list(output_names) if output_names else [o.name for o in sess.get_outputs()]
    return run_session(sess, feeds, names)


def run_session(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
                names: Sequence[str]) -> dict[str, np.ndarray]:
    """Run an open session (reused across batches), errors as one-line user errors."""
    try:
        values = sess.run(list(names), dict(feeds))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedError(f"onnxruntime failed to run the model: {first}") from None
    return dict(zip(names, values))
