"""Architecture rewrites: latency they buy, fidelity they cost, and what refitting recovers.

    python benchmarks/architecture.py [--quick] [--zigzag]

1. Refitting vs not (issue #5): fidelity on held-out calibration inputs of zoo models with
   every site of a rewrite applied, with the initial weights (composed for fuse-ibn,
   importance-pruned for align-channels-down and depth-multiplier) and after the
   layer-by-layer ridge refit.
2. Latency: MobileNetV2 1.0/224 (and SSDLite, LR-ASPP) on P = 32 and the ZigZag-fitted
   targets, searched in exact mode, with fuse-ibn alone and with every architecture change,
   with no fidelity floor (the latency the rewrites can reach) and at the default floor 0.99,
   each with the fidelity it reaches (random-weight zoo models, random calibration inputs:
   fidelity here is a proxy; see README).
3. A pretrained real model (PP-OCR text-line classifier from the rapidocr wheel) at the
   default floor 0.99, calibrated on synthetic text images: the reduction it keeps.
4. With --zigzag (needs zigzag-dse): the edge-tpu-zz choices (and tpu-zz's on MobileNetV2,
   fused-IBN alone among them) re-simulated in ZigZag, so the gain is the emulator's, not
   only the estimate.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from rewriter import zoo
from rewriter.fidelity import calibration_batches, measure_fidelity
from rewriter.graph_io import load_model, model_from_proto
from rewriter.passes import get_pass
from rewriter.reconstruct import refit
from rewriter.rewrite import apply_pass
from rewriter.search import optimize
from rewriter.staged import collect
from rewriter.tables import table


def refit_table(quick: bool) -> None:
    names = ("mobilenetv2",) if quick else zoo.NAMES
    rows = []
    for name in names:
        model = model_from_proto(zoo.build(name, width=0.5, resolution=96))
        folded = apply_pass(model, get_pass("fold-bn")).model
        fit, _ = calibration_batches(folded, None, count=32, batch=4, seed=0)
        held, _ = calibration_batches(folded, None, count=8, batch=4, seed=1)
        reference = collect(folded, held)  # the original's outputs, run once per model
        for pass_name, options in (("fuse-ibn", {}), ("align-channels-down", {}),
                                   ("depth-multiplier", {"multiplier": 0.75})):
            result = apply_pass(folded, get_pass(pass_name, 32, **options))
            if not result.applied:
                continue
            start = time.perf_counter()
            fitted = refit(folded, result.model, fit)
            seconds = time.perf_counter() - start
            before = measure_fidelity(folded, result.model, held, reference)
            after = measure_fidelity(folded, fitted, held, reference)
            label = pass_name + (f" x{options['multiplier']}" if options else "")
            rows.append([name, label, str(len(result.applied)),
                         f"{before.min_cosine:.3f}", f"{after.min_cosine:.3f}",
                         f"{before.outputs[0].relative_l2:.3f}",
                         f"{after.outputs[0].relative_l2:.3f}", f"{seconds:.1f}"])
    print("Refitting vs initial weights (zoo width 0.5, 96x96, 32 fitting / 8 held-out "
          "random inputs)")
    print(table(["model", "rewrite", "sites", "cosine before", "cosine refit",
                 "rel L2 before", "rel L2 refit", "refit s"], rows))


def _run(model, target, exact, passes=None, floor=0.0, calibration=None):
    start = time.perf_counter()
    result = optimize(model, target, exact=exact, passes=passes, min_fidelity=floor,
                      calibration=calibration)
    change = 100 * (result.after.latency_ms / result.before.latency_ms - 1)
    fidelity = "exact" if result.fidelity is None else f"{result.fidelity.min_cosine:.3f}"
    return result, change, fidelity, time.perf_counter() - start


# search modes (label, exact, passes, fidelity floor); the tables share `_zoo_run`'s runs
EXACT = ("exact", True, None, 0.0)
FUSE_IBN = ("fuse-ibn alone", False, ("fuse-ibn",), 0.0)
ALL = ("all architecture changes", False, None, 0.0)
ALL_FLOOR = ("all, fidelity >= 0.99", False, None, 0.99)


@functools.lru_cache(maxsize=None)
def _zoo_run(name, target, exact, passes=None, floor=0.0):
    """`_run` on a zoo model at width 1.0, 224x224, once per case (the ZigZag table reuses
    the latency table's edge-tpu-zz results)."""
    model = model_from_proto(zoo.build(name, width=1.0, resolution=224))
    return model, _run(model, target, exact, passes, floor)


def latency_table(quick: bool) -> None:
    names = ("mobilenetv2",) if quick else ("mobilenetv2", "ssdlite", "lraspp")
    targets = ("npu-p32",) if quick else ("npu-p32", "edge-tpu-zz", "tpu-zz")
    rows = []
    for name in names:
        for target in targets:
            for label, exact, passes, floor in (EXACT, FUSE_IBN, ALL, ALL_FLOOR):
                _, (result, change, fidelity, seconds) = _zoo_run(name, target, exact, passes,
                                                                 floor)
                kinds = sorted({d.pass_name for d in result.decisions if not d.exact})
                rows.append([f"{name} 224", target, label,
                             f"{result.before.latency_ms:.3f}", f"{result.after.latency_ms:.3f}",
                             f"{change:+.1f}%", fidelity, ", ".join(kinds) or "-",
                             f"{seconds:.0f}"])
    print("\nEstimated latency (ms) with architecture changes (random calibration inputs)")
    print(table(["model", "target", "mode", "before", "after", "change", "min cosine",
                 "architecture changes kept", "s"], rows))


def real_model_table() -> None:
    from rewriter.samples import rapidocr_models, text_image

    shape = (1, 3, 48, 192)
    model = load_model(rapidocr_models()["cls"], {"x": shape})
    batches = [{"x": np.concatenate([text_image(48, 192, seed=4 * b + i) for i in range(4)])}
               for b in range(8)]
    rows = []
    for target in ("npu-p32", "edge-tpu-zz"):
        result, change, fidelity, seconds = _run(model, target, False, floor=0.99,
                                                 calibration=batches)
        kinds = sorted({d.pass_name for d in result.decisions if not d.exact})
        rows.append(["PP-OCR cls 48x192", target, f"{result.before.latency_ms:.4f}",
                     f"{result.after.latency_ms:.4f}", f"{change:+.1f}%", fidelity,
                     ", ".join(kinds) or "-", f"{seconds:.0f}"])
    print("\nPretrained model at fidelity >= 0.99 (24 fitting / 8 held-out synthetic text lines)")
    print(table(["model", "target", "before", "after", "change", "min cosine",
                 "architecture changes kept", "s"], rows))


def zigzag_table(quick: bool) -> None:
    """The gains re-simulated in ZigZag (needs zigzag-dse; layers cached on disk)."""
    from rewriter.cost.estimate import Target
    from rewriter.cost.zigzag_models import validate_with_zigzag

    all_ = ("all, no floor", *ALL[1:])
    cases = [("edge-tpu-zz", name, mode) for name in
             (("ssdlite",) if quick else ("mobilenetv2", "ssdlite", "lraspp"))
             for mode in (EXACT, all_, ALL_FLOOR)]
    if not quick:  # the other P = 32 target, fused-IBN alone among its modes
        cases += [("tpu-zz", "mobilenetv2", mode) for mode in (EXACT, FUSE_IBN, all_)]
    rows = []
    for target_name, name, (label, exact, passes, floor) in cases:
        model, (result, _, fidelity, _) = _zoo_run(name, target_name, exact, passes, floor)
        zz = validate_with_zigzag(model, result.model, Target.load(target_name))
        rows.append([f"{name} 224", target_name, label, f"{-zz['estimated_gain_pct']:+.1f}%",
                     f"{zz['zigzag_original_ms']:.3f}", f"{zz['zigzag_optimized_ms']:.3f}",
                     f"{-zz['zigzag_gain_pct']:+.1f}%", fidelity])
    print("\nZigZag-fitted targets' choices re-simulated in ZigZag (edge_tpu_like, tpu_like; "
          "random calibration)")
    print(table(["model", "target", "mode", "estimated change", "ZigZag before ms",
                 "ZigZag after ms", "ZigZag change", "min cosine"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--zigzag", action="store_true",
                        help="also re-simulate the edge-tpu-zz choices in ZigZag")
    args = parser.parse_args()
    refit_table(args.quick)
    latency_table(args.quick)
    real_model_table()
    if args.zigzag:
        zigzag_table(args.quick)


if __name__ == "__main__":
    main()
