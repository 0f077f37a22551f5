"""A new device from a measurement kit: accuracy against the number of measurements.

    python benchmarks/kit_fewshot.py [--quick] [--workers N] [--cache-dir DIR]

ZigZag's edge_tpu_like accelerator stands in for a remote device, reached only through the
kit path, as a user would reach theirs:

1. ``rewriter cost kit`` writes two kits: one guided by the models to be judged (``--models``:
   their kernels and their candidate rewrites' first, then neighbours, then the default
   space), and one without (the default space only, after the kit's fixed rewrite pairs and
   block kernels). Both draw the space with seed 11 at P = 32.
2. The "user" times each kit model on the device, in manifest order: each model file is
   simulated by ZigZag as `cost.zigzag_models` simulates any model (its MAC layers, the
   activations free) and the sum written to a timings CSV. Models without a MAC layer
   (vector ops, the baselines) take no cycles there, so they are left out, as a device that
   cannot run a model leaves it out; the blocks are not timed (they are checks, not fitted).
3. ``rewriter cost import`` makes a profile from the first 50 one-op timings, then imports
   the next ones into the same profile (100, 200, 300, all: re-importing merges), once fitted
   from scratch and once as npu-p32's op model corrected (``--like npu-p32 --estimator
   corrected``). Each import's held-out kernel error (its 5-fold cross-validation) is shown,
   as a MAPE and weighted by time: ``--like`` without ``--estimator`` keeps the one with the
   lower weighted error (starred in the table). Every import says
   ``--free-kinds elementwise,pool,gap,resize,concat`` (ZigZag prices nothing but MAC
   layers) and ``--parallelism 8 --map-tile 4x4`` (the array edge_tpu_like's description
   gives: 8x8 channels by 4x4 output pixels).
4. Each profile estimates the zoo models of `cost.validate.zoo_cases(quick=True)` (4 models
   x widths 0.5 and 1.0 at 128x128, BN folded), judged against ZigZag's simulation of the
   whole model, and the gain of every rewrite `search.gain_pairs.rewrite_pairs` makes of
   them (the exact optimize result for npu-p32, and every fuse-ibn site applied; one fixed
   set of 16 pairs): is its sign right?

The shipped cost/data/edge-tpu-zz.csv holds layers already simulated on edge_tpu_like
(1 GHz: latency_ms * 1e6 = cycles, to its 6 significant digits). Before anything is
simulated, the cycle cache (~/.cache/rewriter/zigzag, or --cache-dir) is seeded with them,
under the key `cost.zigzag_models` looks a layer up by: `cache_key` of the row's layer with
its activation dropped, which ZigZag makes a zero-cost dummy node (checked: such a row
simulates to its CSV cycles exactly). Only keys not already cached are added, and only from
a CSV of the same zigzag-dse version. Since the kits draw the space with that CSV's seed
and P, their space ops are cached; what is left to simulate is the zoo models' layers and
the kits' rewrite, neighbour, block and pair kernels: 441 layers, 13 minutes with a cold
cache on the shared 2-core VM (a minute once cached). --quick writes the guided kit only,
with -n 300: most of the models' kernels and no neighbours, about 150 layers fewer. Nothing
of the edge-tpu-zz target is used but those cycles; the priors are npu-p32 or nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import onnx

from rewriter.cli import main as cli
from rewriter.cost.estimate import Target
from rewriter.cost.kit_manifest import read_manifest, write_timings
from rewriter.cost.measurements import read_csv
from rewriter.cost.opspec import MAC_KINDS
from rewriter.cost.profile import DATA_DIR
from rewriter.cost.validate import validate_by, validate_gains, zoo_cases
from rewriter.cost.zigzag import (
    DEFAULT_CACHE_DIR,
    _cache_path,
    _read_cache,
    _write_cache,
    cache_key,
    zigzag_version,
)
from rewriter.cost.zigzag_models import simulate_kernels_ms
from rewriter.graph_io import Model, model_from_proto, save_model
from rewriter.parallel import make_executor
from rewriter.search.gain_pairs import rewrite_pairs
from rewriter.tables import table

ACCELERATOR = "edge_tpu_like"
STEPS = (50, 100, 200, 300)
FREE = "elementwise,pool,gap,resize,concat"
ARRAY = ["--parallelism", "8", "--map-tile", "4x4"]
PRIOR = "npu-p32"
# estimator -> import options; `--like` alone keeps the one with the lower time-weighted
# held-out error
ESTIMATORS = {"from scratch": [], f"{PRIOR} corrected": ["--like", PRIOR, "--estimator",
                                                          "corrected"]}
SEED = 11  # the seed cost/data/edge-tpu-zz.csv's default-space rows were drawn with


def seed_cache(cache_dir: Path) -> int:
    """Add the shipped CSV's simulated layers to the cycle cache; the number added."""
    rows = read_csv(DATA_DIR / "edge-tpu-zz.csv")
    if any(r.device != f"zigzag-{zigzag_version()} {ACCELERATOR}" for r in rows):
        return 0  # simulated by another zigzag-dse: its cycles may differ
    path = _cache_path(cache_dir, ACCELERATOR)
    cached = _read_cache(path)
    new = {}
    for r in rows:
        key = cache_key(replace(r.spec, act=""))
        if r.spec.kind in MAC_KINDS and key not in cached:
            new[key] = round(r.latency_ms * 1e6)  # ms at 1 GHz -> cycles
    if new:
        _write_cache(path, new)
    return len(new)


def simulate(models: list[Model], cache_dir: Path, workers: int | None) -> list[float]:
    """Each model's ZigZag latency (ms at 1 GHz): the sum of its MAC layers."""
    per_model = simulate_kernels_ms(models, ACCELERATOR, executor=make_executor(workers),
                                    cache_dir=cache_dir,
                                    progress=sys.stderr.isatty())
    return [sum(ms for _, ms in kernels) for kernels in per_model]


def time_kit(kit: Path, cache_dir: Path, workers: int | None) -> list[tuple[str, float]]:
    """(id, ms) of the kit's one-op models the device can run, in manifest order."""
    ops = [e for e in read_manifest(kit) if e.role == "op"]
    models = [model_from_proto(onnx.load(str(kit / e.file))) for e in ops]
    return [(e.id, ms) for e, ms in zip(ops, simulate(models, cache_dir, workers)) if ms > 0]


def quiet(args: list[str]) -> str:
    """Run a rewriter command; its output, printed only if it fails."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli(args)
    if code:
        raise SystemExit(f"rewriter {' '.join(args)} failed ({code}):\n{out.getvalue()}")
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the guided kit only, with -n 300 (fewer layers to simulate)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes simulating uncached layers (default: every core)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args()
    start = time.perf_counter()
    seeded = seed_cache(args.cache_dir)
    cases = zoo_cases(quick=True)
    prior = Target.load(PRIOR)
    pairs = [pair for case in cases for pair in rewrite_pairs(case, prior)]
    models = list({id(m): m for m in [c.model for c in cases]
                   + [m for p in pairs for m in (p.before, p.after)]}.values())
    truth = dict(zip(map(id, models), simulate(models, args.cache_dir, args.workers)))

    def measure(batch: list[Model]) -> list[float]:
        return [truth[id(m)] for m in batch]

    rows = []
    for target in (Target.load("edge-tpu-zz"), prior):  # references: not of the kit path
        report, gains = validate_by(target, cases, measure), validate_gains(target, pairs, measure)
        rows.append([f"({target.name})", "", "", "", *_scores(report, gains)])
    with tempfile.TemporaryDirectory(prefix="kit-fewshot-") as tmp:
        work = Path(tmp)
        files = []
        for case in cases:
            files.append(work / f"{case.name}.onnx")
            save_model(case.model, files[-1])
        kits = {"guided": ["--models", ",".join(map(str, files))]}
        if not args.quick:
            kits["spaces only"] = []
        for kit_name, options in kits.items():
            kit = work / kit_name.replace(" ", "-")
            size = "300" if args.quick else "500"
            quiet(["cost", "kit", "-o", str(kit), "-n", size, "--seed", str(SEED), *options])
            timed = time_kit(kit, args.cache_dir, args.workers)
            steps = [n for n in STEPS if n < len(timed)] + [len(timed)]
            results = {}  # (estimator, n) -> (held-out json, report, gains)
            for name, flags in ESTIMATORS.items():
                profile = work / f"{kit.name}-{flags[-1] if flags else 'scratch'}.toml"
                done = 0
                for n in steps:  # each import adds the next timings to the same profile
                    chunk = work / f"timings-{n}.csv"
                    write_timings(chunk, dict(timed[done:n]))
                    held_out = json.loads(quiet(
                        ["cost", "import", str(kit), str(chunk), "-o", str(profile), "--json",
                         "--free-kinds", FREE, *ARRAY, *flags]))["held_out"]
                    done = n
                    target = Target.load(profile)
                    results[name, n] = (held_out, validate_by(target, cases, measure),
                                        validate_gains(target, pairs, measure))
            for name, flags in ESTIMATORS.items():
                for n in steps:
                    held_out, report, gains = results[name, n]
                    # what `--like` alone keeps: the lower time-weighted held-out error
                    both = results[f"{PRIOR} corrected", n][0]
                    picked = (both["corrected"]["weighted"] < both["scratch"]["weighted"]) == bool(
                        flags)
                    kernels = held_out["corrected" if flags else "scratch"]
                    rows.append([kit_name, str(n) if n in STEPS else f"all ({n})",
                                 name + (" *" if picked else ""),
                                 f"{100 * kernels['mape']:.1f}% / "
                                 f"{100 * kernels['weighted']:.1f}%", *_scores(report, gains)])
    print(f"{len(cases)} zoo models and {len(pairs)} rewrites on ZigZag {ACCELERATOR}; "
          f"{seeded} layers seeded from edge-tpu-zz.csv\n")
    print(table(["kit", "measurements", "estimator", "kernels MAPE / weighted", "models MAPE",
                 "within +-10%", "Spearman", "gain sign right"], rows))
    print(f"\n* the estimator `--like {PRIOR}` keeps (the lower weighted held-out error); "
          f"{time.perf_counter() - start:.0f} s")
    return 0


def _scores(report, gains) -> list[str]:
    right = sum(r.sign_agrees for r in gains.rows)
    return [f"{100 * report.mape:.1f}%", f"{100 * report.within_10pct:.0f}%",
            f"{report.spearman:.3f}", f"{right}/{len(gains.rows)}"]


if __name__ == "__main__":
    sys.exit(main())
