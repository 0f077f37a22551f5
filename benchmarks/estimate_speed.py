"""How long does estimating a MobileNetV2-size model take on each target?

    python benchmarks/estimate_speed.py

'first' includes shape inference, kernel decomposition and computing every kernel's
estimate; 'cached' is the search's case: the kernels are known and every per-kernel
estimate is cached by op signature, so an estimate is a sum of look-ups (goal: < 5 ms).
"""

from __future__ import annotations

import statistics
import time

from rewriter import zoo
from rewriter.cost.estimate import Target
from rewriter.cost.kernels import decompose
from rewriter.graph_io import model_from_proto
from rewriter.tables import table


def timed(fn, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    rows = []
    for name in ("mobilenetv2", "ssdlite"):
        model = model_from_proto(zoo.build(name, width=1.0, resolution=224))
        for target_name in ("npu-p32", "npu-p16", "cpu-ort"):
            target = Target.load(target_name)
            start = time.perf_counter()
            target.estimate(model)
            first = (time.perf_counter() - start) * 1e3
            kernels = [k.spec for k in decompose(model)]
            cached = timed(lambda: target.total_ms(kernels), repeats=200)
            rows.append([name, target_name, len(kernels), f"{first:.1f}", f"{cached:.3f}"])
    print(table(["model", "target", "kernels", "first ms", "cached ms"], rows))


if __name__ == "__main__":
    main()
