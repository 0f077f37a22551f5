"""Whole-model accuracy of the ZigZag-fitted targets (edge-tpu-zz, tpu-zz) against ZigZag.

    python benchmarks/zigzag_accuracy.py [--full] [--targets edge-tpu-zz,tpu-zz] [--workers N]

The targets' regressors are fitted on single sampled layers only (cost/data/*-zz.csv), so
every whole model here is held out: zoo variants (4 models x widths 0.5, 1.0 at 96x96, BN
folded; --full: also at 160x160 and 224x224) and PaddleOCR's cls, det and rec. Each is
simulated whole on the target's ZigZag accelerator (the sum of its MAC layers,
`rewriter.cost.zigzag_models`) and compared with the estimate: MAPE, share within +-10%,
Spearman, worst cases. Then pairs, on the zoo models at one resolution (96; --full: 160)
and the PaddleOCR models: the canonical BN-folded model against the exact
`rewriter.optimize` result for the target, and against every fuse-ibn site applied: is the
sign of the estimated gain right, and how close is its size?

Layers are simulated once ever (cached in ~/.cache/rewriter/zigzag), uncached ones in a
process pool over every core; a first run on a 2-core machine takes a while (see README).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from rewriter.cost.estimate import Target
from rewriter.cost.measurements import read_csv
from rewriter.cost.validate import paddleocr_cases, validate_by, validate_gains, zoo_cases
from rewriter.cost.zigzag_models import simulate_kernels_ms, simulated_spec, target_accelerator
from rewriter.graph_io import Model
from rewriter.parallel import make_executor
from rewriter.search.gain_pairs import rewrite_pairs

# The default set is ~750 distinct layers over both accelerators (~25 minutes uncached on a
# shared 2-core VM); --full is ~1,260 (edge_tpu_like's mapping search is ~4x slower).
DEFAULT = {"widths": (0.5, 1.0), "resolutions": (96,), "pair_resolution": 96}
FULL = {"widths": (0.5, 1.0), "resolutions": (96, 160, 224), "pair_resolution": 160}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="zoo also at 160x160 and 224x224 (24 variants), pairs at 160")
    parser.add_argument("--targets", default="edge-tpu-zz,tpu-zz")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes simulating uncached layers (default: every core)")
    args = parser.parse_args()
    sizes = FULL if args.full else DEFAULT
    zoo = zoo_cases(widths=sizes["widths"], resolutions=sizes["resolutions"])
    real = paddleocr_cases(("cls", "det", "rec"))
    cases = zoo + real
    pair_cases = [c for c in zoo if c.name.endswith(f"-r{sizes['pair_resolution']}")] + real
    progress = sys.stderr.isatty()
    for name in args.targets.split(","):
        start = time.perf_counter()
        target = Target.load(name)
        pairs = [pair for case in pair_cases for pair in rewrite_pairs(case, target)]
        # a case's pairs share their `before`: each model once (cases first, in order)
        models = list({id(m): m for m in [c.model for c in cases]
                       + [m for p in pairs for m in (p.before, p.after)]}.values())
        # every layer of every model in one batch, so the process pool stays full
        per_model = simulate_kernels_ms(models, target_accelerator(target),
                                        clock_hz=target.profile.clock_hz,
                                        executor=make_executor(args.workers),
                                        progress=progress)
        simulated = {id(m): sum(ms for _, ms in kernels) for m, kernels in zip(models, per_model)}

        def measure(batch: list[Model]) -> list[float]:
            return [simulated[id(m)] for m in batch]

        report = validate_by(target, cases, measure)
        gains = validate_gains(target, pairs, measure)
        # the layers ZigZag simulates (MAC kernels, activation dropped)
        held_out = {spec.signature() for kernels in per_model[:len(cases)] for k, _ in kernels
                    if (spec := simulated_spec(k)) is not None}
        trained = {replace(r.spec, act="").signature() for r in read_csv(
            target.profile.measurements)}
        print(f"## {name} (ZigZag {target.profile.accelerator}, 1 GHz)\n")
        print(report.text("ZigZag ms", worst=5))
        print(f"\n{gains.text('ZigZag')}")
        print(f"\n{len(held_out & trained)} of the {len(held_out)} distinct MAC layers of these "
              f"models are also training rows of {target.profile.measurements.name} (sampled "
              f"layers that happen to match); {time.perf_counter() - start:.0f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
