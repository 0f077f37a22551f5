"""rewriter's exact mode against the usual ONNX graph optimisers, on the same zoo models.

    pip install -e '.[bench]'      # the peers: onnxsim, onnxslim, onnxoptimizer
    python benchmarks/peers.py [--quick]

Every tool (a function ModelProto -> ModelProto) runs on every model; the table gives,
per (model, tool): the estimated latency on npu-p32 and npu-p16 (ms, with the change vs
the original), the parameter and peak-activation bytes (npu-p32 estimate), the measured
CPU latency (onnxruntime, 1 intra-op thread, median of 30 runs) and "match", the largest
relative error of any output vs the original model in onnxruntime (max|y - y0| / max|y0|).
rewriter-exact is optimized separately for each target: its npu-p16 column uses the
npu-p16-optimized model, every other column the npu-p32 one. ort-basic/ort-extended are
onnxruntime's offline graph optimisation (the model it writes to
``optimized_model_filepath``). A tool that is not installed, or fails on a model, gets
"n/a" cells and a footnote with the reason; the script never stops on one.

Models: mobilenetv2, mobilenetv3, ssdlite, lraspp at width 1.0, resolution 224
(--quick: mobilenetv2 and lraspp at width 0.5, resolution 128).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from rewriter import zoo
from rewriter.cost.estimate import estimate
from rewriter.cost.measure import wall_time
from rewriter.graph_io import model_from_proto
from rewriter.runtime import run_model
from rewriter.search import optimize
from rewriter.tables import human_bytes, table

TARGETS = ("npu-p32", "npu-p16")
Tool = Callable[[onnx.ModelProto], onnx.ModelProto]


def original(proto: onnx.ModelProto) -> onnx.ModelProto:
    return proto


def onnxsim(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    model, ok = onnxsim.simplify(proto)
    if not ok:
        raise RuntimeError("onnxsim's check of the simplified model failed")
    return model


def onnxslim(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(proto)


def onnxoptimizer(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxoptimizer

    passes = [*onnxoptimizer.get_fuse_and_elimination_passes(), "fuse_bn_into_conv"]
    return onnxoptimizer.optimize(proto, list(dict.fromkeys(passes)))


def _ort_offline(proto: onnx.ModelProto, level: ort.GraphOptimizationLevel) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "optimized.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = level
        options.optimized_model_filepath = path
        ort.InferenceSession(proto.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return onnx.load(path)


def ort_basic(proto: onnx.ModelProto) -> onnx.ModelProto:
    return _ort_offline(proto, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)


def ort_extended(proto: onnx.ModelProto) -> onnx.ModelProto:
    return _ort_offline(proto, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)


def rewriter_exact(proto: onnx.ModelProto, target: str = "npu-p32") -> onnx.ModelProto:
    return optimize(model_from_proto(proto), target).model.to_onnx()


TOOLS: dict[str, Tool] = {
    "original": original,
    "onnxsim": onnxsim,
    "onnxslim": onnxslim,
    "onnxoptimizer": onnxoptimizer,
    "ort-basic": ort_basic,
    "ort-extended": ort_extended,
    "rewriter-exact": rewriter_exact,
}
# Tools optimizing for a target: the model used for that target's estimate column.
PER_TARGET: dict[str, dict[str, Tool]] = {
    "rewriter-exact": {"npu-p16": lambda proto: rewriter_exact(proto, "npu-p16")},
}


def reason(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, ImportError):
        return f"{exc.name or first} is not installed (pip install -e '.[bench]')"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Notes:
    """Footnotes: each distinct reason gets a number, which its failed cells show."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def cell(self, tool: str, model: str, fn: Callable[[], object],
             fmt: Callable[[object], str]) -> tuple[object | None, str]:
        try:
            value = fn()
        except Exception as exc:  # a missing package is noted once, not once per model
            where = tool if isinstance(exc, ImportError) else f"{tool} on {model}"
            note = f"{where}: {reason(exc)}"
            return None, f"n/a [{self.numbers.setdefault(note, len(self.numbers) + 1)}]"
        return value, fmt(value)

    def __str__(self) -> str:
        return "\n".join(f"[{n}] {note}" for note, n in self.numbers.items())


def max_rel_error(proto: onnx.ModelProto, feeds, reference: list[np.ndarray]) -> float:
    outputs = list(run_model(proto, feeds).values())
    if len(outputs) != len(reference):
        raise ValueError(f"{len(outputs)} outputs, the original has {len(reference)}")
    return max(float(np.max(np.abs(y - y0)) / np.max(np.abs(y0)))
               for y, y0 in zip(outputs, reference))


def tool_row(tool: str, name: str, proto: onnx.ModelProto, feeds, reference,
             baseline: dict[str, float], notes: Notes) -> list[str]:
    """The cells of one (model, tool); the original (first) fills `baseline`."""
    optimized, failed = notes.cell(tool, name, lambda: TOOLS[tool](proto), str)
    if optimized is None:
        return [failed] * 6
    cells, estimates = [], []
    shared = functools.cache(lambda: model_from_proto(optimized))  # loaded once, if it loads
    for target in TARGETS:
        variant = PER_TARGET.get(tool, {}).get(target)
        model = (lambda: model_from_proto(variant(proto))) if variant else shared
        est, text = notes.cell(tool, name, lambda: estimate(model(), target),
                               lambda e: f"{e.latency_ms:.3f}")
        if est is not None and tool == "original":
            baseline[target] = est.latency_ms
        elif est is not None and target in baseline:
            text += f" ({100 * (est.latency_ms / baseline[target] - 1):+.1f}%)"
        estimates.append(est)
        cells.append(text)
    first = estimates[0]  # params and activations: the npu-p32 estimate
    cells += ([human_bytes(first.param_bytes), human_bytes(first.peak_activation_bytes)]
              if first else [cells[0]] * 2)
    cells.append(notes.cell(tool, name, lambda: wall_time(optimized, feeds, repeats=30,
                                                          threads=1),
                            lambda ms: f"{ms:.2f}")[1])
    cells.append(notes.cell(tool, name, lambda: max_rel_error(optimized, feeds, reference),
                            lambda err: f"{err:.1e}")[1])
    return cells


def model_rows(name: str, proto: onnx.ModelProto, resolution: int, notes: Notes
               ) -> list[list[str]]:
    feeds = {"input": np.random.default_rng(0).standard_normal(
        (1, 3, resolution, resolution), dtype=np.float32)}
    reference = list(run_model(proto, feeds).values())
    baseline: dict[str, float] = {}
    pad = max(map(len, TOOLS))  # left-aligned in a right-aligned column
    return [[name if i == 0 else "", tool.ljust(pad),
             *tool_row(tool, name, proto, feeds, reference, baseline, notes)]
            for i, tool in enumerate(TOOLS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="mobilenetv2 and lraspp at width 0.5, resolution 128")
    args = parser.parse_args()
    names, width, resolution = ((("mobilenetv2", "lraspp"), 0.5, 128) if args.quick
                                else (zoo.NAMES, 1.0, 224))
    start = time.perf_counter()
    notes, rows = Notes(), []
    for name in names:
        proto = zoo.build(name, width=width, resolution=resolution)
        rows += model_rows(name, proto, resolution, notes)
    print(f"zoo models at width {width}, resolution {resolution}; cpu: onnxruntime "
          f"{ort.__version__}, 1 thread, median of 30 runs\n")
    print(table(["model", "tool", "npu-p32 ms", "npu-p16 ms", "params", "peak act",
                 "cpu ms", "match"], rows))
    if notes.numbers:
        print(f"\n{notes}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
