"""Fidelity after a fixed number of distillation steps, per learning rate and batch.

The search's recovery budget is wall time, so what a run reaches depends on the machine;
step-matched runs separate the method from the machine. PaddleOCR's text-direction
classifier (rapidocr wheel) on edge-tpu-zz, with its largest fused-IBN sites applied
(`--changes top8`: the 8 largest of 11, -59% estimated latency; `all`: all 11, -66%):
refit, then distilled for `--steps` optimiser steps at each `--lr` (and `--batch`), without
and with a first share of the steps spent on the fused convs alone, their inputs forced to
the teacher's (`--forced-share`, rewriter.forced_reconstruction), and with each
augmentation (`--augment`), each run from the same refitted student. Data as in
benchmarks/recovery.py: calibration 3,000 (`--lines`) text lines of layouts a and b (a
quarter of the sources held out for early stopping), --eval-data 2,000 lines of other
seeds (the figure the search's floor is judged on), and 1,000 lines each of layouts c
and d never seen (independent; `--fit-layouts abc` calibrates on layout c too, other
lines than the check's), each also on the lines the original is sure of (top-1
probability at least 0.9; their share in brackets); also on 1,000 of the lines it was
trained on (unaugmented), to tell a student that cannot fit the teacher from one that
does not generalise. Uses CUDA when PyTorch sees it.

    python benchmarks/distill_steps.py                       # 2000 steps at lr 3e-4, 1e-4, 1e-3
    python benchmarks/distill_steps.py --lr 1e-4             # without and with forced steps
    python benchmarks/distill_steps.py --lr 1e-4 --seed 1    # the same, another seed
    python benchmarks/distill_steps.py --steps 200 --lr 1e-4 # a quick look
    python benchmarks/distill_steps.py --lines 12000         # four times the calibration data
    python benchmarks/distill_steps.py --lr 1e-4 --forced-share 0.1 --augment auto,robust
    python benchmarks/distill_steps.py --lr 1e-4 --forced-share 0.1 --fit-layouts abc
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from text_lines import INDEPENDENT_LINES, write_lines  # noqa: E402

from rewriter.cost.estimate import Target  # noqa: E402
from rewriter.data import Preprocess, load_samples  # noqa: E402
from rewriter.distill import FEATURE_WEIGHT, distill  # noqa: E402
from rewriter.fidelity import measure_fidelity  # noqa: E402
from rewriter.forced_reconstruction import FORCED_SHARE  # noqa: E402
from rewriter.graph_io import load_model  # noqa: E402
from rewriter.reconstruct import refit  # noqa: E402
from rewriter.recovery import BATCH, evaluate, prepare_data  # noqa: E402
from rewriter.samples import SHAPES, rapidocr_models  # noqa: E402
from rewriter.search.space import SearchSpace  # noqa: E402
from rewriter.staged import collect  # noqa: E402
from rewriter.tables import table  # noqa: E402

PREPROCESS = "size=48x192,mean=0.5,std=0.5,crop=1"
INDEPENDENT = 1000  # lines of each layout never seen
FIT_CHECKED = 1000  # fitting lines the student is also scored on: does it fit them at all?


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", choices=["top8", "all"], default="top8")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", default="3e-4,1e-4,1e-3", help="comma-separated")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--feature-weight", type=float, default=FEATURE_WEIGHT,
                        help="weight of the block-boundary tensors' loss against the "
                             f"output loss (default {FEATURE_WEIGHT:g})")
    parser.add_argument("--forced-share", default=f"0,{FORCED_SHARE:g}",
                        help="comma-separated shares of the steps spent first on the fused "
                             "convs alone with the teacher's inputs forced (default "
                             f"0,{FORCED_SHARE:g}: without, and as recovery does)")
    parser.add_argument("--augment", default="auto",
                        help="comma-separated augmentations of the fitting lines (auto: "
                             "light crops, as recovery does; robust; heavy; light; none)")
    parser.add_argument("--seed", type=int, default=0,
                        help="distillation seed (batches, augmentation; default 0)")
    parser.add_argument("--lines", type=int, default=3000,
                        help="calibration text lines, half of layout a, half of b (default "
                             "3000, as recovery.py; a quarter of them held out)")
    parser.add_argument("--fit-layouts", choices=["ab", "abc"], default="ab",
                        help="layouts of the calibration lines (default ab; abc: a third "
                             "each, layout c of another seed than the check's)")
    args = parser.parse_args()
    original = load_model(rapidocr_models(("cls",))["cls"], SHAPES["cls"])
    target = Target.load("edge-tpu-zz")
    space = SearchSpace(original, target, architecture=True)
    fused = [i for i, g in enumerate(space.genes) if g.pass_name == "fuse-ibn"]
    # the sites in graph order; the first three are the smallest gains (early, thin blocks)
    genes = fused[3:] if args.changes == "top8" else fused
    student = space._apply(space.canonical, set(genes), exact=False)
    before_ms, after_ms = target.estimate(original).latency_ms, target.estimate(student).latency_ms
    preprocess = Preprocess.parse(PREPROCESS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fit_layouts = ((0, "a"), (1, "b"), (7, "c"))[:len(args.fit_layouts)]
        for seed, layout in fit_layouts:
            write_lines(work / "calibration", args.lines // len(fit_layouts), seed=seed,
                        layout=layout)
        for seed, layout in ((3, "a"), (4, "b")):
            write_lines(work / "evaluation", 1000, seed=seed, layout=layout)
        data = prepare_data(original, work / "calibration", work / "evaluation", preprocess)
        independent = {layout: load_samples(write_lines(work / layout, INDEPENDENT, seed=seed,
                                                        layout=layout), original, preprocess)
                       for seed, layout in INDEPENDENT_LINES}
    reference = collect(original, data.eval.batches(BATCH))
    fitted = data.fit.take(range(min(FIT_CHECKED, len(data.fit))))  # as trained, unaugmented
    fitted_reference = collect(original, fitted.batches(BATCH))
    independent_references = [collect(original, samples.batches(BATCH))
                              for samples in independent.values()]

    def row(label: str, model, seconds: float, device: str = "-") -> list[str]:
        held = evaluate(original, model, data, reference)
        others = [measure_fidelity(original, model, samples.batches(BATCH), outputs)
                  for samples, outputs in zip(independent.values(), independent_references)]
        own = measure_fidelity(original, model, fitted.batches(BATCH), fitted_reference)
        return [label, f"{held.value('top1'):.4f} ({held.samples})",
                *(f"{other.value('top1'):.4f} ({other.samples}); sure "
                  f"{other.outputs[0].confident_top1:.4f} "
                  f"({100 * (other.outputs[0].confident_share or 0):.0f}%)"
                  for other in others),
                f"{own.value('top1'):.4f} ({own.samples})", device, f"{seconds:.0f}"]

    start = time.perf_counter()
    changed = list(student.changes.refit)  # the fused convs
    student = refit(original, student, data.fit.batches(BATCH))
    rows = [row("refit", student, time.perf_counter() - start)]
    shares = [float(x) for x in args.forced_share.split(",")]
    runs = [(float(x), y, z) for x in args.lr.split(",") for y in shares
            for z in args.augment.split(",")]
    for lr, share, augment in runs:
        start = time.perf_counter()
        result = distill(original, student, data.fit.inputs, data.val.inputs,
                         steps=args.steps, lr=lr, batch=args.batch, seed=args.seed,
                         feature_weight=args.feature_weight, reconstruct=changed,
                         forced_share=share, augment=augment)
        features = ("" if args.feature_weight == FEATURE_WEIGHT
                    else f", features x{args.feature_weight:g}")
        forced = f"{result.forced_steps} forced + " if result.forced_steps else ""
        rows.append(row(f"{forced}{result.steps} steps, lr {lr:g}, batch {args.batch}"
                        f"{features}, augment {augment} (best at {result.best_step})",
                        result.model, time.perf_counter() - start, result.device))
    print(f"PP-OCR cls, {len(genes)} fused IBNs, edge-tpu-zz "
          f"{100 * (after_ms - before_ms) / before_ms:+.1f}% (top-1 agreement with the "
          f"original; samples in brackets; calibrated on layouts {args.fit_layouts})")
    print(table(["student", "eval (layouts a, b)", "layout c", "layout d", "fitting lines",
                 "device", "s"], rows))


if __name__ == "__main__":
    main()
