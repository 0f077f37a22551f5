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
from rewriter.cost.validate import Case, validate, zoo_cases
from rewriter.graph_io import load_model
from rewriter.samples import SHAPES, rapidocr_models, text_image
from rewriter.tables import table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--target", default="cpu-ort")
    args = parser.parse_args()
    cases = zoo_cases(quick=args.quick)
    for key, path in rapidocr_models().items():
        model = load_model(path, SHAPES[key])
        feeds = {"x": text_image(*SHAPES[key]["x"][2:], seed=0)} if key == "det" else None
        cases.append(Case(f"paddleocr-{key}", model, feeds))
    report = validate(Target.load(args.target), cases, progress=sys.stderr.isatty())
    rows = [[r.name, f"{r.measured_ms:.3f}", f"{r.estimated_ms:.3f}", f"{100 * r.error:+.1f}%"]
            for r in report.rows]
    print(table(["model", "measured ms", "estimated ms", "error"], rows))
    print(f"\n{len(report.rows)} held-out models on {report.target}: MAPE "
          f"{100 * report.mape:.1f}%, within +-10%: {100 * report.within_10pct:.0f}%, "
          f"Spearman {report.spearman:.3f}")
    print("worst: " + ", ".join(f"{r.name} {100 * r.error:+.0f}%" for r in report.worst(5)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
