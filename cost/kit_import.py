"""Import a kit's timings: a measured profile of the device that timed it.

``rewriter cost import KIT/ timings.csv -o my-device.toml`` checks the timings
(`kit_manifest.read_timings`), then writes three files side by side:

- ``my-device.timings.csv``: every timing imported so far, of this kit and any other, with
  the kit it belongs to (`kit_manifest.kit_id`) and what each model stands for. Importing
  again merges the new timings into it; a later timing of the same model of the same kit
  replaces the earlier one.
- ``my-device.csv``: the measurement CSV (`rewriter.cost.measurements` columns), one row per
  timed one-op model: its kernel and its kernel time, which is the timing less what one
  inference costs besides its kernels. That cost is measured by the kit's baselines, chains
  of 1 and 101 Relus: per kernel d = (t101 - t1) / 100, per run t1 - d; a kernel time is
  never taken below d. Without baseline timings (a device that cannot run them) timings
  are used as they are.
- ``my-device.toml``: a measured profile naming that CSV, with ``overhead_s = 0`` (each
  kernel time already holds its own dispatch), the MAC array of ``--parallelism`` and
  ``--map-tile`` (else ``--like``'s, else 8 and 1x1) for the regressor's tile features,
  ``free_kinds`` from ``--free-kinds``, and with ``--like`` a ``prior`` when it helps.

With ``--like TARGET`` the estimator is chosen by cross-validation on the kernel times
(`cost.fewshot.choose_estimator`): fitted from scratch, or TARGET's op model corrected to
the device. The profile names the prior only when the correction has the lower error
weighted by time (`cost.fewshot.HeldOut`), or when there are too few rows to tell (the
prior is then all there is), unless ``--estimator scratch`` or ``corrected`` says which.
The accuracy printed is that cross-validation: every kernel estimated by a model not
fitted on it.

The kit's blocks are not fitted on: each timed block is checked against the sum of its
kernels' estimates on the new target, and each pair (an IBN block and its fused form, a
depthwise conv and its dense replacement) for whether the estimate orders its two sides as
the device did.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rewriter.cost.fewshot import Choice, choose_estimator, load_prior
from rewriter.cost.kit_manifest import (
    BASELINE_MANY,
    BASELINE_ONE,
    KitEntry,
    KitError,
    kit_id,
    missing,
    read_manifest,
    read_timings,
)
from rewriter.cost.measure import MIN_MS
from rewriter.cost.measurements import (
    Measurement,
    csv_records,
    latency_ms_from_text,
    spec_from_record,
    write_csv,
)
from rewriter.cost.opspec import KINDS, SPEC_FIELDS
from rewriter.cost.profile import PROFILE_DIR, HardwareProfile
from rewriter.cost.validate import GainRow

STORE_COLUMNS = ("kit", "id", "role", "source", "pair", "kernels", *SPEC_FIELDS, "latency_ms")
MIN_ROWS = 10  # kernel times needed to fit from scratch
MIN_ROWS_WITH_PRIOR = 3  # ... to correct a prior
DEFAULT_PARALLELISM = 8
ESTIMATORS = ("auto", "scratch", "corrected")
DEFAULT_ARRAY = {"clock_hz": 1.0e9, "onchip_memory_bytes": 2_097_152,
                 "bandwidth_bytes_per_s": 16.0e9, "bytes_per_element": 4}


@dataclass(frozen=True)
class Timed:
    """A timed kit model as the store keeps it."""

    kit: str
    entry: KitEntry
    latency_ms: float


@dataclass(frozen=True)
class Overhead:
    """What one inference costs besides its kernels, from a kit's baselines (ms)."""

    per_run_ms: float = 0.0
    per_kernel_ms: float = 0.0
    measured: bool = False

    def kernel_ms(self, timing_ms: float) -> float:
        return max(timing_ms - self.per_run_ms, self.per_kernel_ms, MIN_MS)


def overhead(timings: dict[str, float]) -> Overhead:
    one, many = timings.get(BASELINE_ONE), timings.get(BASELINE_MANY)
    if one is None:
        return Overhead()
    per_kernel = max(0.0, (many - one) / 100) if many is not None else 0.0
    return Overhead(max(0.0, one - per_kernel), per_kernel, True)


@dataclass
class BlockCheck:
    id: str
    measured_ms: float
    estimated_ms: float
    kernels_measured_ms: float | None  # the sum of its kernels' own times, when all timed


@dataclass
class ImportResult:
    kit: str
    kit_size: int
    timed: int
    untimed: list[KitEntry]
    previous: int  # timings in the store before this import
    replaced: int  # of which this import replaced
    overhead: Overhead
    rows: int  # kernel times fitted on
    choice: Choice | None  # None: too few rows to cross-validate
    use_prior: bool
    prior: str | None
    written: list[Path]
    missing_kinds: list[str] = field(default_factory=list)
    blocks: list[BlockCheck] = field(default_factory=list)
    pairs: list[GainRow] = field(default_factory=list)  # a kit pair: original -> rewritten

    def lines(self) -> list[str]:
        out = [f"kit {self.kit}: {self.timed} of its {self.kit_size} models timed"]
        if self.untimed:
            kinds: dict[str, int] = {}
            for e in self.untimed:
                key = e.spec.kind if e.spec else e.role
                kinds[key] = kinds.get(key, 0) + 1
            out[-1] += " (not: " + ", ".join(f"{k} {n}" for k, n in kinds.items()) + ")"
        o = self.overhead
        out.append(f"overhead of a run {o.per_run_ms:.4f} ms, of a kernel {o.per_kernel_ms:.4f} "
                   "ms (from the baselines), removed from every timing" if o.measured else
                   "no baseline timings: timings used as they are")
        if self.previous:
            out.append(f"merged with the {self.previous} timings imported before ("
                       f"{self.replaced} replaced by this file's, later timings winning)")
        if self.choice is None:
            out.append(f"{self.rows} kernel times: too few to hold any out; "
                       f"{'the prior corrected' if self.use_prior else 'fitted from scratch'}")
        else:
            out.append(f"held-out accuracy, cross-validated over {self.rows} kernel times:")
            width = max(len("from scratch"), len(f"{self.prior} corrected"))
            out.append(f"  {'from scratch':<{width}}  {self.choice.scratch.summary()}")
            if self.choice.corrected is not None:
                out.append(f"  {f'{self.prior} corrected':<{width}}  "
                           f"{self.choice.corrected.summary()}")
                out.append("  using " + (f"{self.prior} corrected" if self.use_prior
                                         else "the fit from scratch"))
        if self.missing_kinds:
            out.append(f"no timings of {', '.join(self.missing_kinds)}: estimated from the "
                       "other kinds" + (" and the prior" if self.use_prior else "")
                       + " (time them, or pass --free-kinds if they cost nothing)")
        if self.blocks:
            errors = [abs(b.estimated_ms - b.measured_ms) / b.measured_ms for b in self.blocks]
            summed = [b.measured_ms / b.kernels_measured_ms for b in self.blocks
                      if b.kernels_measured_ms]
            additive = (f"; they ran at x{float(np.mean(summed)):.2f} of their kernels' own "
                        "times summed" if summed else "")
            out.append(f"blocks: {len(self.blocks)} timed, estimate vs timing MAPE "
                       f"{100 * float(np.mean(errors)):.1f}%{additive}")
        if self.pairs:
            right = sum(p.sign_agrees for p in self.pairs)
            out.append(f"rewrite pairs in the kit (depthwise vs dense, IBN vs fused): the "
                       f"estimate orders {right} of {len(self.pairs)} as the device does")
        return out


# ----------------------------------------------------------------------------- the store

def store_path(profile: Path) -> Path:
    return profile.with_name(f"{profile.stem}.timings.csv")


def _write_store(path: Path, timed: dict[tuple[str, str], Timed]) -> None:
    from rewriter.atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(STORE_COLUMNS)
            for t in timed.values():
                e = t.entry
                spec = list(e.spec.signature()) if e.spec else [""] * len(SPEC_FIELDS)
                writer.writerow([t.kit, e.id, e.role, e.source, e.pair, ";".join(e.kernels),
                                 *spec, f"{t.latency_ms:.6g}"])

    atomic_write(path, write)


def read_store(path: Path) -> dict[tuple[str, str], Timed]:
    """The timings imported before, keyed by (kit, id)."""
    if not path.exists():
        return {}
    hint = (" (not a timings file written by `rewriter cost import`: expected columns "
            f"{','.join(STORE_COLUMNS)})")
    return {(record["kit"], record["id"]): _stored(record, f"{path}, row {line}")
            for line, record in csv_records(path, STORE_COLUMNS, KitError, columns_hint=hint)}


def _stored(record: dict[str, str], where: str) -> Timed:
    role = record["role"]
    spec = spec_from_record(record, where, KitError) if role == "op" else None
    ms = latency_ms_from_text(record["latency_ms"], where, KitError)
    entry = KitEntry(record["id"], "", spec, (), role, record["source"], record["pair"],
                     tuple(filter(None, record["kernels"].split(";"))))
    return Timed(record["kit"], entry, ms)


def kernel_rows(timed: dict[tuple[str, str], Timed], device: str) -> list[Measurement]:
    """The one-op timings as kernel times, each kit's own baselines removed."""
    by_kit: dict[str, dict[str, float]] = {}
    for t in timed.values():
        by_kit.setdefault(t.kit, {})[t.entry.id] = t.latency_ms
    costs = {kit: overhead(times) for kit, times in by_kit.items()}
    return [Measurement(t.entry.spec, costs[t.kit].kernel_ms(t.latency_ms), device)
            for t in timed.values() if t.entry.role == "op" and t.entry.spec is not None]


# ----------------------------------------------------------------------------- the profile

def _toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string


def profile_text(*, name: str, description: str, measurements: str, like: HardwareProfile | None,
                 array: dict[str, int], free_kinds: tuple[str, ...], prior: str | None,
                 kits: list[str]) -> str:
    base = ({key: getattr(like, key) for key in DEFAULT_ARRAY} if like is not None
            else dict(DEFAULT_ARRAY))
    p, ox, oy = array["parallelism"], array["parallelism_ox"], array["parallelism_oy"]
    lines = [
        "# Written by `rewriter cost import` from the timings of measurement kit(s) "
        f"{', '.join(kits)}",
        f"# (all in {Path(measurements).stem}.timings.csv); import more timings to refit. The "
        "kernel times",
        "# in the measurements have each kit's run overhead (its baseline models) removed.",
        f"name = {_toml_string(name)}",
        f"description = {_toml_string(description)}",
        'kind = "measured"',
        f"parallelism_in = {p}",
        f"parallelism_out = {p}",
        f"macs_per_cycle = {p * p * ox * oy}",
        f"clock_hz = {float(base['clock_hz']):.6g}",
        f"onchip_memory_bytes = {int(base['onchip_memory_bytes'])}",
        f"bandwidth_bytes_per_s = {float(base['bandwidth_bytes_per_s']):.6g}",
        "overhead_s = 0.0  # every kernel time holds its own dispatch",
        f"bytes_per_element = {int(base['bytes_per_element'])}",
        f"measurements = {_toml_string(measurements)}",
        'estimator = "regression"',
    ]
    if ox != 1 or oy != 1:
        lines += [f"parallelism_ox = {ox}", f"parallelism_oy = {oy}"]
    if free_kinds:
        lines.append(f"free_kinds = [{', '.join(_toml_string(k) for k in free_kinds)}]")
    if prior is not None:
        lines.append(f"prior = {_toml_string(prior)}  # its op model, corrected by the "
                     "measurements (cost.fewshot)")
    return "\n".join(lines) + "\n"


def _prior_reference(like: HardwareProfile, out: Path) -> str:
    """How the written profile names its prior: a built-in's name, else a path relative to
    the profile's folder."""
    source = like.source
    if source is not None and source.parent.resolve() == PROFILE_DIR.resolve():
        return source.stem
    return os.path.relpath(Path(source).resolve(), out.parent.resolve())


# ----------------------------------------------------------------------------- checks

def _checks(target, entries: list[KitEntry], times: dict[str, float], cost: Overhead
            ) -> tuple[list[BlockCheck], list[GainRow]]:
    """The kit's blocks and pairs timed on the device against the new target."""
    by_id = {e.id: e for e in entries}

    def estimated(e: KitEntry) -> float:
        if e.role == "op" and e.spec is not None:
            return target.kernel(e.spec)[0]
        return sum(target.kernel(by_id[k].spec)[0] for k in e.kernels)

    blocks = []
    for e in entries:
        if e.role == "block" and e.id in times:
            summed = (sum(cost.kernel_ms(times[k]) for k in e.kernels)
                      if all(k in times for k in e.kernels) else None)
            blocks.append(BlockCheck(e.id, cost.kernel_ms(times[e.id]), estimated(e), summed))
    pairs = []
    members: dict[str, list[KitEntry]] = {}
    for e in entries:
        if e.pair:
            members.setdefault(e.pair, []).append(e)
    for tag, (first, second) in ((t, m) for t, m in members.items() if len(m) == 2):
        if first.id in times and second.id in times:
            m1, m2 = cost.kernel_ms(times[first.id]), cost.kernel_ms(times[second.id])
            e1, e2 = estimated(first), estimated(second)
            pairs.append(GainRow(tag, f"{first.id} -> {second.id}", m1, m2, e1, e2))
    return blocks, pairs


# ----------------------------------------------------------------------------- import

def _array(like: HardwareProfile | None, parallelism: int | None,
           map_tile: tuple[int, int] | None) -> dict[str, int]:
    ox, oy = map_tile or ((like.parallelism_ox, like.parallelism_oy) if like else (1, 1))
    p = parallelism or (like.parallelism_in if like else DEFAULT_PARALLELISM)
    return {"parallelism": p, "parallelism_ox": ox, "parallelism_oy": oy}


def import_timings(kit: str | Path, timings_path: str | Path, out: str | Path, *,
                   like: str | None = None, name: str | None = None,
                   free_kinds: tuple[str, ...] = (), parallelism: int | None = None,
                   map_tile: tuple[int, int] | None = None, device: str | None = None,
                   estimator: str = "auto", folds: int = 5, seed: int = 0) -> ImportResult:
    """Check, merge and fit the timings; write the store, the CSV and the profile.
    `estimator`: "auto" (the better cross-validated, see the module docstring), "scratch"
    or "corrected" (`like`'s op model corrected, whatever the cross-validation says)."""
    from rewriter.cost.estimate import Target

    if estimator not in ESTIMATORS:
        raise KitError(f"--estimator: expected one of {', '.join(ESTIMATORS)}, got "
                       f"{estimator!r}")
    if estimator == "corrected" and not like:
        raise KitError("--estimator corrected needs --like TARGET (the op model to correct)")
    out = Path(out)
    if out.suffix != ".toml":
        raise KitError(f"{out}: the profile must be a .toml file")
    bad = [k for k in free_kinds if k not in KINDS]
    if bad:
        raise KitError(f"--free-kinds: unknown op kind {bad[0]!r} (kinds: {', '.join(KINDS)})")
    entries = read_manifest(kit)
    times = read_timings(timings_path, entries)
    kid = kit_id(kit)
    prior_profile = load_prior(like, "--like") if like else None
    store_file, csv_file = store_path(out), out.with_suffix(".csv")
    store = read_store(store_file)
    previous = len(store)
    by_id = {e.id: e for e in entries}
    replaced = sum((kid, i) in store for i in times)
    for ident, ms in times.items():  # later timings of the same model win
        store[(kid, ident)] = Timed(kid, by_id[ident], ms)
    name = name or out.stem
    rows = kernel_rows(store, device or name)
    with_prior = prior_profile is not None and estimator != "scratch"
    needed = MIN_ROWS_WITH_PRIOR if with_prior else MIN_ROWS
    if len(rows) < needed:
        raise KitError(f"{timings_path}: {len(rows)} one-op model timings in all; at least "
                       f"{needed} are needed{'' if with_prior else ' (3 with --like)'}")
    array = _array(prior_profile, parallelism, map_tile)
    choice = None
    if len(rows) >= max(MIN_ROWS, folds):
        choice = choose_estimator(rows, array, prior_profile, folds=folds, seed=seed)
    use_prior = prior_profile is not None and (
        estimator == "corrected" or (estimator == "auto" and (choice is None or choice.use_prior)))
    prior_ref = _prior_reference(prior_profile, out) if use_prior and prior_profile else None
    kits = sorted({t.kit for t in store.values()})
    described = (f"{device or name}: measured with rewriter kits ({len(rows)} kernels)"
                 + (f", {prior_profile.name}'s op model corrected" if prior_ref else ""))
    text = profile_text(name=name, description=described, measurements=csv_file.name,
                        like=prior_profile, array=array, free_kinds=free_kinds,
                        prior=prior_ref, kits=kits)
    from rewriter.atomic import atomic_write_text

    _write_store(store_file, store)
    write_csv(csv_file, rows)
    atomic_write_text(out, text)
    target = Target.load(out)  # the profile loads, and fits, as `--target` will
    kit_times = {i: t.latency_ms for (k, i), t in store.items() if k == kid}
    cost = overhead(kit_times)
    blocks, pairs = _checks(target, entries, kit_times, cost)
    timed_kinds = {r.spec.kind for r in rows} | set(free_kinds)
    kit_kinds = {e.spec.kind for e in entries if e.spec is not None}
    return ImportResult(
        kit=kid, kit_size=len(entries), timed=len(kit_times),
        untimed=missing(entries, kit_times), previous=previous, replaced=replaced,
        overhead=cost, rows=len(rows), choice=choice,
        use_prior=use_prior, prior=prior_profile.name if prior_profile else None,
        written=[out, csv_file, store_file], missing_kinds=sorted(kit_kinds - timed_kinds),
        blocks=blocks, pairs=pairs)
