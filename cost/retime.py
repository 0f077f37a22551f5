"""How fast this machine runs now against when a measured target's ops were timed.

A shared or frequency-scaling machine drifts: here, 150 ops of a CSV measured on this VM,
re-timed 35 minutes after it was written, ran at 0.93 of their CSV times, and the 50 whole
models of benchmarks/cost_accuracy.py, timed at both ends of those minutes, at 0.94. An
estimator fitted on ops from one sitting
is then off by that much for every model measured in another. `machine_speed` re-times a
seeded sample of the target's own measured ops (those of at least `MIN_MS`, which the
profiler resolves to a few per cent) and returns the median ratio now / then;
`Target.set_speed` scales the measured kernel times by it. Nothing is learnt from whole
models: the correction is op measurements too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rewriter.cost.estimate import Target
from rewriter.cost.measure import device_name, measure_specs
from rewriter.cost.measurements import Measurement, read_csv
from rewriter.cost.profile import ProfileError

MIN_MS = 0.02  # ops the profiler's 1 us resolution times within 5 %


@dataclass(frozen=True)
class SpeedCheck:
    ratio: float  # median of (time now / time in the CSV) over the re-timed ops
    ops: int  # how many were re-timed
    spread: tuple[float, float]  # the ratios' 25th and 75th percentiles

    def summary(self) -> str:
        return (f"{self.ops} of the target's ops re-timed now run at x{self.ratio:.3f} of "
                f"their measured times (quartiles {self.spread[0]:.3f}-{self.spread[1]:.3f})")


def retimable(target: Target) -> list[Measurement]:
    """`target`'s measured ops of at least MIN_MS, all measured on this machine; a
    ProfileError (one line) when it has none to re-time here."""
    profile = target.profile
    if profile.kind != "measured" or profile.measurements is None:
        raise ProfileError(f"{target.name}: only a measured target has ops to re-time")
    if profile.measurements.suffix.lower() != ".csv":
        raise ProfileError(f"{target.name}: its measurements are not a CSV, which says "
                           "where each op was timed; there are no ops to re-time")
    here = device_name()
    rows = [r for r in read_csv(profile.measurements) if r.latency_ms >= MIN_MS]
    foreign = {r.device for r in rows if r.device != here}
    if foreign or not rows:
        where = ", ".join(sorted(foreign)) or "nowhere"
        raise ProfileError(f"{target.name}: its ops were measured on {where}, not on this "
                           f"machine ({here}); they cannot be re-timed here")
    return rows


def machine_speed(target: Target, ops: int = 150, seed: int = 0, threads: int = 1,
                  rows: list[Measurement] | None = None) -> SpeedCheck:
    """Re-time `ops` of `target`'s measured ops (seeded sample) on this machine (`rows`:
    what `retimable(target)` returned, when the caller has it already)."""
    rows = retimable(target) if rows is None else rows
    rng = np.random.default_rng(seed)
    picked = [rows[i] for i in sorted(rng.choice(len(rows), min(ops, len(rows)),
                                                 replace=False))]
    now = measure_specs([r.spec for r in picked], threads=threads, progress=False)
    ratios = np.array([n.latency_ms / r.latency_ms for n, r in zip(now, picked)])
    return SpeedCheck(float(np.median(ratios)), len(picked),
                      (float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))))
