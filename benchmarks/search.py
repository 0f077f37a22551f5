"""Search speed and strategy quality (exact mode).

    python benchmarks/search.py [--quick]

1. Candidates scored per second on MobileNetV2 1.0/224 (goal >= 1,000/s on 2 cores):
   random genomes through the kernel-level simulation, per-kernel estimates cached.
2. Greedy wall time per zoo model, space construction included (goal < 10 s).
3. Evolution vs random search with the same number of candidates, mean best estimated
   latency over seeds (evolution must be at least as good).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from rewriter import zoo
from rewriter.cost.estimate import Target
from rewriter.graph_io import model_from_proto
from rewriter.search import Budget, optimize
from rewriter.search.space import SearchSpace
from rewriter.tables import table


def throughput(model, target: Target, seconds: float = 3.0) -> tuple[int, float]:
    space = SearchSpace(model, target)
    rng = random.Random(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        space.score(tuple(rng.randint(0, 1) for _ in range(len(space))))
        count += 1
    return len(space), count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    models = {name: model_from_proto(zoo.build(name, width=1.0, resolution=224))
              for name in zoo.NAMES}
    targets = {name: Target.load(name) for name in ("npu-p32", "npu-p16")}

    genes, rate = throughput(models["mobilenetv2"], targets["npu-p32"])
    print(f"MobileNetV2 1.0/224 on npu-p32: {genes} genes, {rate:,.0f} candidates/s\n")

    rows = []
    for name, model in models.items():
        for tname, target in targets.items():
            start = time.perf_counter()
            result = optimize(model, target)
            rows.append([name, tname, f"{time.perf_counter() - start:.1f}", result.evaluated,
                         f"{result.before.latency_ms:.4f}", f"{result.after.latency_ms:.4f}",
                         f"{100 * (result.after.latency_ms / result.before.latency_ms - 1):+.1f}%",
                         len(result.decisions)])
    print(table(["model", "target", "greedy s", "candidates", "before ms", "after ms",
                 "change", "kept"], rows))

    seeds = range(3 if args.quick else 5)
    budget = Budget(candidates=300 if args.quick else 1000)
    rows = []
    for name in ("mobilenetv2", "ssdlite", "lraspp"):
        for tname, target in targets.items():
            mean = {}
            for strategy in ("random", "evolution", "greedy"):
                runs = [optimize(models[name], target, strategy=strategy, seed=seed,
                                 budget=budget).after.latency_ms
                        for seed in (seeds if strategy != "greedy" else [0])]
                mean[strategy] = statistics.mean(runs)
            rows.append([name, tname, f"{mean['random']:.4f}", f"{mean['evolution']:.4f}",
                         f"{mean['greedy']:.4f}",
                         "yes" if mean["evolution"] <= mean["random"] + 1e-12 else "NO"])
    print(f"\nmean best estimated latency (ms) over {len(seeds)} seeds, "
          f"{budget.candidates} candidates each")
    print(table(["model", "target", "random", "evolution", "greedy", "evolution <= random"],
                rows))


if __name__ == "__main__":
    main()
