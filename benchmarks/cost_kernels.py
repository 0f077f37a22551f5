"""Where cpu-ort's whole-model error comes from: the regressor, or what a one-op timing
misses of a kernel inside a model.

    python benchmarks/cost_kernels.py [--quick] [--target cpu-ort]

Times the validation models of benchmarks/cost_accuracy.py (3 interleaved rounds of 30
runs, the lowest median kept) and every distinct kernel their estimates are priced by,
each as a one-op model now (`rewriter.cost.validate.time_kernels`, the CSV's protocol).
Prints two tables:
1. the regressor's kernel times (`Target.fitted_ms`: no dispatch cost, no weight-streaming
   floor, at the CSV's speed) against those one-op times, on the models' own kernels
   (almost none of them a CSV row; it says how many): per kind, MAPE, share within +-10%,
   and the error weighted by time;
2. whole models, estimated as fitted and with every kernel priced at its one-op time
   (`Target.set_kernel_times`). What the second misses, one-op timings miss inside a
   model; the regressor accounts for the difference between the two.
Nothing is fitted on these timings, and they never reach the shipped estimator. Each kernel
is timed once, as the CSV's ops were: a burst of load on a shared machine shows as a kernel
table far off everywhere (once here, MAPE 100% on --quick; 25% when run again); run again.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

from rewriter.cost.estimate import Target
from rewriter.cost.measurements import read_csv
from rewriter.cost.profile import ProfileError
from rewriter.cost.retime import retimable
from rewriter.cost.validate import (
    ValidationReport,
    measure_cases,
    paddleocr_cases,
    time_kernels,
    validate_by,
    zoo_cases,
)
from rewriter.tables import table


def kernel_table(fitted: dict[tuple, float], timed: dict[tuple, float],
                 kinds: dict[tuple, str]) -> str:
    by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, ms in timed.items():
        by_kind[kinds[key]].append((fitted[key], ms))
    by_kind["all"] = [pair for kind in list(by_kind) for pair in by_kind[kind]]
    rows = []
    for kind, pairs in by_kind.items():
        est, now = np.array(pairs).T
        err = np.abs(est / now - 1)
        rows.append([kind, str(len(pairs)), f"{100 * err.mean():.1f}%",
                     f"{100 * (err <= 0.1).mean():.0f}%",
                     f"{100 * np.abs(est - now).sum() / now.sum():.1f}%"])
    return table(["kind", "kernels", "MAPE", "within +-10%", "|error| / time"], rows)


def model_table(fitted: ValidationReport, timed: ValidationReport) -> str:
    rows = [[a.name, f"{a.measured_ms:.3f}", f"{a.estimated_ms:.3f}", f"{100 * a.error:+.1f}%",
             f"{b.estimated_ms:.3f}", f"{100 * b.error:+.1f}%"]
            for a, b in zip(fitted.rows, timed.rows)]
    return table(["model", "measured ms", "fitted ms", "error", "one-op ms", "error"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--target", default="cpu-ort")
    args = parser.parse_args()
    target = Target.load(args.target)
    try:  # its ops must have been measured here for one-op times now to compare with
        retimable(target)
    except ProfileError as err:
        parser.error(str(err))
    progress = sys.stderr.isatty()
    cases = zoo_cases(quick=args.quick) + paddleocr_cases()
    measured = measure_cases(cases, progress=progress)
    parts = [target.parts(c.model) for c in cases]  # timed, then priced twice
    specs = {spec.signature(): spec for p in parts for *_, spec in p}
    times, unbuildable = time_kernels(target, specs.values(), progress=progress)
    fitted = {key: target.fitted_ms(specs[key]) for key in times}
    as_fitted = validate_by(target, cases, lambda _: measured, parts)
    target.set_kernel_times(times)
    one_op = validate_by(target, cases, lambda _: measured, parts)
    rows = {row.spec.signature() for row in read_csv(target.profile.measurements)}

    print(f"Kernels of the {len(cases)} models, the regressor's times against their one-op "
          f"times now ({len(set(times) & rows)} of the {len(times)} are also CSV rows; "
          f"{len(unbuildable)} cannot be built alone and keep the fitted price)\n")
    print(kernel_table(fitted, times, {key: specs[key].kind for key in times}))
    print("\nWhole models\n")
    print(model_table(as_fitted, one_op))
    for label, report in (("as fitted", as_fitted), ("one-op times", one_op)):
        worst = ", ".join(f"{r.name} {100 * r.error:+.0f}%" for r in report.worst(4))
        print(f"\n{label}: {report.summary()}\n  worst: {worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
