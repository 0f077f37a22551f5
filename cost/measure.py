"""Time single ops in onnxruntime (the harness behind `rewriter cost measure`).

`measure_specs` times each model on the CPUExecutionProvider (``intra_op_num_threads`` =
threads, 0 meaning onnxruntime's default, ``inter_op_num_threads`` = 1, default graph
optimisation): `warmup` runs, then the median of `repeats` runs, in milliseconds, of the
op's own kernel time as onnxruntime's profiler reports it. Wall time of a one-op model
would be wrong for estimating whole models: onnxruntime runs a whole CNN in its blocked
NCHWc layout, converting once at the input and once at the output, but a one-op model pays
both conversions (ReorderInput/ReorderOutput) around its single op, which inflated sums
over a model's kernels by 1.4-1.7x. The profiler's per-node times exclude those reorders;
the per-kernel dispatch cost that a whole model does pay is the profile's `overhead_s`.

The one-op models are built by `rewriter.cost.one_op`, sampled by `rewriter.cost.sampling`
and stored by `rewriter.cost.measurements`.
"""

from __future__ import annotations

import bisect
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from rewriter.cost.measurements import Measurement, MeasurementError
from rewriter.cost.one_op import LAYOUT_HELPER, one_op_model, relu_chain
from rewriter.cost.opspec import OpSpec
from rewriter.runtime import session


def device_name() -> str:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} / onnxruntime {ort.__version__} CPU"


def _inputs(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _session(model: onnx.ModelProto, threads: int, profile: bool):
    prefix = str(Path(tempfile.gettempdir()) / "rewriter-measure") if profile else None
    return session(model, threads, profile_prefix=prefix)


# onnxruntime's layout conversions -> the layout each converts to (into the blocked one:
# "", out of it: "nchw"); cost.layout reads them from the graph onnxruntime runs
REORDERS = {"ReorderInput": "", "ReorderOutput": "nchw"}
MIN_MS = 1e-4  # 0.1 us


def time_model(model: onnx.ModelProto, *, repeats: int = 20, warmup: int = 3,
               threads: int = 1, node_floor_ms: float = 0.0,
               only: str | None = None) -> float:
    """Median per-run kernel time of `model`'s ops (layout reorders and LAYOUT_HELPER
    nodes excluded; with `only`, the nodes of that onnxruntime op alone, which must run),
    in ms.

    `node_floor_ms` is subtracted from every profiled node (never below zero): the
    profiler's own cost per node, which a run without profiling does not pay. One kernel
    can be several nodes in a one-op model (x * HardSigmoid(x) when it is not fused), so
    the floor belongs to nodes, not to kernels.
    """
    session = _session(model, threads, profile=True)
    feeds = _inputs(model, np.random.default_rng(0))
    for _ in range(warmup + repeats):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session"
                  and e.get("name") == "model_run")
    per_run = [0.0] * len(runs)
    seen = 0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name")
        if (op == only if only else
                op not in REORDERS and not e["name"].startswith(LAYOUT_HELPER)):
            index = bisect.bisect_right(runs, e["ts"]) - 1
            if index >= 0:
                per_run[index] += max(e["dur"] / 1e3 - node_floor_ms, 0.0)
                seen += 1
    if only and not seen:
        raise MeasurementError(f"onnxruntime ran no {only} node in this model")
    timed = per_run[warmup:] or per_run
    # The profiler counts whole microseconds; an op below its resolution still costs > 0.
    return max(statistics.median(timed), MIN_MS)


def reorder_op(spec: OpSpec) -> str | None:
    """The onnxruntime node a reorder spec is timed by (None for other kinds)."""
    if spec.kind != "reorder":
        return None
    return next(op for op, layout in REORDERS.items() if layout == spec.layout)


FLOOR_ROUNDS = 5


def profiler_floor_ms(threads: int = 1, repeats: int = 300) -> float:
    """The profiled kernel time of one trivial op, which is almost all the profiler's own
    cost per node: measure_specs removes it from every profiled node. The lowest median of
    FLOOR_ROUNDS rounds: one burst of load during a single round read 5 us here instead of
    3, and every op of that sitting then came out 2 us fast (a third of a small one)."""
    return min(time_model(relu_chain(1), repeats=max(1, repeats // FLOOR_ROUNDS),
                          threads=threads) for _ in range(FLOOR_ROUNDS))


def calibrate(threads: int = 1, repeats: int = 300) -> tuple[float, float]:
    """(in-model dispatch cost per node, the profiler's floor per node), in seconds.

    Dispatch: wall time of a chain of 101 trivial ops minus a chain of 1, per extra op
    (no profiler): a measured profile's overhead_s. Floor: `profiler_floor_ms`.
    """
    feeds = {"x": np.zeros((1, 8, 4, 4), np.float32)}
    one = wall_time(relu_chain(1), feeds, repeats=repeats, threads=threads)
    many = wall_time(relu_chain(101), feeds, repeats=repeats, threads=threads)
    return max(many - one, 0.0) / 100 / 1e3, profiler_floor_ms(threads, repeats) / 1e3


def wall_time(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None, *,
              repeats: int = 20, warmup: int = 3, threads: int = 1) -> float:
    """Median wall time of one run of a whole model, in ms (what a user sees)."""
    feeds = feeds if feeds is not None else _inputs(model, np.random.default_rng(0))
    return session_wall_time(_session(model, threads, profile=False), feeds,
                             repeats=repeats, warmup=warmup)


def session_wall_time(session, feeds: dict[str, np.ndarray], *, repeats: int = 20,
                      warmup: int = 3) -> float:
    """`wall_time` of a model whose onnxruntime session is already open."""
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure_specs(specs: Iterable[OpSpec], *, repeats: int = 20, warmup: int = 3,
                  threads: int = 1, progress: bool = True,
                  floor_ms: float | None = None) -> list[Measurement]:
    """Time every spec as a one-op model, the profiler's per-node floor removed (`floor_ms`,
    measured here when not given: `profiler_floor_ms`)."""
    specs = list(specs)
    device = device_name()
    if floor_ms is None:
        floor_ms = profiler_floor_ms(threads)
    rows = []
    for spec in tqdm(specs, desc="measuring ops", unit="op", disable=not progress):
        ms = time_model(one_op_model(spec), repeats=repeats, warmup=warmup, threads=threads,
                        node_floor_ms=floor_ms, only=reorder_op(spec))
        rows.append(Measurement(spec, ms, device, threads, repeats))
    return rows
