"""Whole-model accuracy of the cpu-ort estimator (fitted on single-op measurements only).

    python benchmarks/cost_accuracy.py [--quick]

Times every zoo variant (4 models x 4 widths x 3 resolutions, BN folded) and the two real
PaddleOCR models in onnxruntime on this machine (1 intra-op thread) and
compares each with the estimate: MAPE, share within +-10%, Spearman, worst cases.
Each model is timed in 3 interleaved rounds of 30 runs; the lowest median is kept.
"""

from __future__ import annotations

import argparse
import sys

from rewriter.cost.estimate import Target
from rewriter.cost.validate import paddleocr_cases, validate, zoo_cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--target", default="cpu-ort")
    args = parser.parse_args()
    cases = zoo_cases(quick=args.quick) + paddleocr_cases()
    report = validate(Target.load(args.target), cases, progress=sys.stderr.isatty())
    print(report.text(worst=5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
