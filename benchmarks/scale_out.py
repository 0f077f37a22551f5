"""The same ZigZag simulation batch serially, in a local process pool and on Ray.

    python benchmarks/scale_out.py [--layers 64] [--workers N] [--accelerator edge_tpu_like]
                                   [--seed 0] [--no-ray]

Draws --layers of the distinct MAC layers of the zoo models `cost validate` simulates
(with a fixed seed) and simulates the batch on each backend of `rewriter.parallel`, every
time into a fresh, empty cache folder so nothing is cached. Serial runs first, so the
pool's forked workers start with ZigZag imported while Ray's workers import it themselves.
Prints a Markdown table: start-up (Ray starting its instance; the pool starts inside the
batch), the batch's wall time, its speed-up over serial, and whether the simulated cycles
and the cache file are the serial run's, byte for byte. Needs the [zigzag] extra, and
[ray] unless --no-ray.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from rewriter.cost.kernels import decompose
from rewriter.cost.opspec import OpSpec
from rewriter.cost.validate import zoo_cases
from rewriter.cost.zigzag import cache_key, measure_zigzag
from rewriter.cost.zigzag_models import simulated_spec
from rewriter.parallel import (
    Executor,
    ProcessExecutor,
    RayExecutor,
    SerialExecutor,
    default_workers,
)


def zoo_layers(count: int, seed: int) -> list[OpSpec]:
    """`count` of the distinct MAC layers of the zoo models that `cost validate` simulates
    (4 models x 4 widths x 3 resolutions; some 750 layers), drawn with `seed`."""
    layers: dict[str, OpSpec] = {}
    for case in zoo_cases():
        for kernel in decompose(case.model):
            spec = simulated_spec(kernel)
            if spec is not None:
                layers.setdefault(cache_key(spec), spec)
    keys = sorted(layers)  # an order independent of the models' build order
    return [layers[k] for k in random.Random(seed).sample(keys, min(count, len(keys)))]


def simulate(layers: list[OpSpec], accelerator: str,
             executor: Executor) -> tuple[float, float, list[float], str]:
    """(start-up s, batch s, ms per layer, cache file text), from an empty cache."""
    with tempfile.TemporaryDirectory(prefix="scale-out-") as folder:
        start = time.perf_counter()
        with executor:
            ready = time.perf_counter()
            rows = measure_zigzag(layers, accelerator, cache_dir=Path(folder),
                                  executor=executor, progress=False)
            done = time.perf_counter()
        (cache,) = Path(folder).iterdir()
        return ready - start, done - ready, [r.latency_ms for r in rows], cache.read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--accelerator", default="edge_tpu_like")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    layers = zoo_layers(args.layers, args.seed)
    kinds = sorted({s.kind for s in layers})
    print(f"{len(layers)} layers ({', '.join(kinds)}) on ZigZag {args.accelerator}, "
          f"{args.workers} workers, seed {args.seed}", file=sys.stderr)
    backends: list[tuple[str, Executor]] = [
        ("serial", SerialExecutor()),
        (f"local pool ({args.workers} processes)", ProcessExecutor(args.workers))]
    if not args.no_ray:
        backends.append((f"Ray (local instance, {args.workers} CPUs)",
                         RayExecutor("local", args.workers)))
    rows = []
    reference: tuple[list[float], str] | None = None
    total = time.perf_counter()
    for label, executor in backends:
        startup, batch, ms, cache = simulate(layers, args.accelerator, executor)
        reference = reference or (ms, cache)
        rows.append((label, startup, batch, (ms, cache) == reference))
        print(f"{label}: {batch:.1f} s", file=sys.stderr)
    serial = rows[0][2]
    print("| backend | start-up s | batch s | speed-up | identical to serial |")
    print("|---|---|---|---|---|")
    for label, startup, batch, same in rows:
        print(f"| {label} | {startup:.1f} | {batch:.1f} | {serial / batch:.2f}x | "
              f"{'yes' if same else 'NO'} |")
    print(f"\ntotal {time.perf_counter() - total:.0f} s", file=sys.stderr)
    return 0 if all(same for *_, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
