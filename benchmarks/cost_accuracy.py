"""Whole-model accuracy of the cpu-ort estimator (fitted on single-op measurements only).

    python benchmarks/cost_accuracy.py [--quick] [--retime-ops N]

Times every zoo variant (4 models x 4 widths x 3 resolutions, BN folded) and the two real
PaddleOCR models in onnxruntime on this machine (1 intra-op thread) and
compares each with the estimate: MAPE, share within +-10%, Spearman, worst cases.
Each model is timed in 3 interleaved rounds of 30 runs; the lowest median is kept.

Two tables from the same model timings: the estimates as fitted, and the estimates with
the target's measured kernel times scaled by how fast N (default 150) of its own ops run
now, re-timed right after the models (`rewriter.cost.retime`): this machine's speed
drifts by several per cent within an hour, ops and models alike.
"""

from __future__ import annotations

import argparse
import sys

from rewriter.cost.estimate import Target
from rewriter.cost.profile import ProfileError
from rewriter.cost.retime import retimable
from rewriter.cost.validate import (
    measure_cases,
    paddleocr_cases,
    validate_by,
    validate_retimed,
    zoo_cases,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--target", default="cpu-ort")
    parser.add_argument("--retime-ops", type=int, default=150, metavar="N")
    args = parser.parse_args()
    if args.retime_ops < 0:
        parser.error("--retime-ops must be >= 0")
    target = Target.load(args.target)
    # one clear error before the models are timed, not after
    try:
        rows = retimable(target) if args.retime_ops else None
    except ProfileError as err:
        parser.error(f"{err} (--retime-ops 0 skips re-timing)")
    cases = zoo_cases(quick=args.quick) + paddleocr_cases()
    measured = measure_cases(cases, progress=sys.stderr.isatty())
    parts = [target.parts(c.model) for c in cases]  # priced twice below
    fitted = validate_by(target, cases, lambda _: measured, parts)
    print("Estimates as fitted\n")
    print(fitted.text(worst=5))
    if args.retime_ops:
        print("\nEstimates with the ops re-timed now\n")
        print(validate_retimed(target, cases, measured, args.retime_ops, rows=rows,
                               parts=parts).text(worst=5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
