"""A measurement kit's manifest and the timings returned for it, read strictly.

A kit (`rewriter.cost.kit`) is a folder of small ONNX models to time on a device, listed in
``KIT/manifest.csv``; one row per model, columns in this order (`MANIFEST_COLUMNS`)::

    id, file                  the model's id and its path relative to KIT/
    kind .. layout            the OpSpec fields of the kernel a one-op model stands for, as in
                              a measurement CSV (`rewriter.cost.measurements`); empty for the
                              other roles
    inputs                    its inputs, ``name=1x16x56x56`` joined by ``;`` (static, batch 1)
    role                      "op" (one kernel), "block" (several kernels) or "baseline"
                              (trivial ops that measure the cost of one inference)
    source                    why the kit holds it: op: "model" (a kernel of a --models
                              model), "rewrite" (of one of their candidate rewrites), "block"
                              (a kernel of a block), "pair" (one side of a depthwise/dense
                              pair), "near" (a jittered neighbour of a model's kernel),
                              "space:NAME" (drawn from a sampling space); block: "ibn",
                              "fused-ibn"; baseline: "chain-1", "chain-101"
    pair                      a tag shared by the two sides of a trade a rewrite makes (an
                              IBN block and its fused form, a depthwise conv and its dense
                              replacement); empty otherwise
    kernels                   a block's kernels: the ids of their one-op models, joined by ``;``

The timings a user returns are a CSV with the columns ``id,latency_ms`` (others ignored):
the median latency of one inference of the model, in milliseconds. `read_timings` refuses
an unknown id, a latency that is not a positive finite number, and an id given twice, each
with one line naming the file and the row (lines, the header being row 1). Ids of the kit
that have no timing are allowed (time what the device can run); `missing` lists them.

Errors are `KitError`, a `MeasurementError`, so the CLI prints them as one line.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rewriter.cost.measurements import (
    MeasurementError,
    csv_records,
    latency_ms_from_text,
    spec_from_record,
)
from rewriter.cost.opspec import SPEC_FIELDS, OpSpec

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("id", "file", *SPEC_FIELDS, "inputs", "role", "source", "pair", "kernels")
ROLES = ("op", "block", "baseline")
TIMING_COLUMNS = ("id", "latency_ms")
BASELINE_ONE, BASELINE_MANY = "base-1", "base-101"  # chains of 1 and 101 trivial ops
MAX_ROWS = 100_000

Shape = tuple[int, ...]


class KitError(MeasurementError):
    """A kit folder, its manifest or a timings file cannot be used; the message is one line."""


@dataclass(frozen=True)
class KitEntry:
    """One model of a kit."""

    id: str
    file: str
    spec: OpSpec | None  # role "op" only
    inputs: tuple[tuple[str, Shape], ...]
    role: str
    source: str
    pair: str = ""
    kernels: tuple[str, ...] = ()  # role "block" only


def format_inputs(inputs: Iterable[tuple[str, Shape]]) -> str:
    return ";".join(f"{name}={'x'.join(str(d) for d in shape)}" for name, shape in inputs)


def _parse_inputs(text: str, where: str) -> tuple[tuple[str, Shape], ...]:
    out = []
    for item in filter(None, text.split(";")):
        name, sep, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise KitError(f"{where}: column 'inputs': expected name=1x3x8x8 items joined by "
                           f"';', got {text!r}")
        out.append((name, shape))
    if not out:
        raise KitError(f"{where}: column 'inputs': no inputs")
    return tuple(out)


def write_manifest(path: Path, entries: Sequence[KitEntry]) -> None:
    """Write the manifest atomically (rewriter.atomic)."""
    from rewriter.atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(MANIFEST_COLUMNS)
            for e in entries:
                spec = list(e.spec.signature()) if e.spec else [""] * len(SPEC_FIELDS)
                writer.writerow([e.id, e.file, *spec, format_inputs(e.inputs), e.role,
                                 e.source, e.pair, ";".join(e.kernels)])

    atomic_write(path, write)


def _safe_file(text: str, where: str) -> str:
    """A model path inside the kit folder: relative, no `..`."""
    parts = Path(text).parts
    if not text or Path(text).is_absolute() or ".." in parts:
        raise KitError(f"{where}: column 'file': expected a path inside the kit folder, got "
                       f"{text!r}")
    return text


def read_manifest(kit: str | Path) -> list[KitEntry]:
    """The entries of ``kit/manifest.csv``, every value checked."""
    kit = Path(kit)
    path = kit / MANIFEST
    if not kit.is_dir():
        raise KitError(f"{kit}: no such kit folder (write one with `rewriter cost kit -o "
                       f"{kit}`)")
    entries: list[KitEntry] = []
    seen: dict[str, int] = {}
    for line, record in csv_records(path, MANIFEST_COLUMNS, KitError, max_rows=MAX_ROWS,
                                    absent=f"{kit}: no {MANIFEST} (not a kit folder?)"):
        where = f"{path}, row {line}"
        entry = _entry(record, where)
        if entry.id in seen:
            raise KitError(f"{where}: id {entry.id!r} already on row {seen[entry.id]}")
        seen[entry.id] = line
        entries.append(entry)
    if not entries:
        raise KitError(f"{path}: no models listed")
    ids = {e.id for e in entries}
    for e in entries:
        unknown = [k for k in e.kernels if k not in ids]
        if unknown:
            raise KitError(f"{path}: block {e.id!r} names unknown kernel id {unknown[0]!r}")
    return entries


def _entry(record: dict[str, str], where: str) -> KitEntry:
    ident = (record.get("id") or "").strip()
    if not ident:
        raise KitError(f"{where}: column 'id': empty")
    role = (record.get("role") or "").strip()
    if role not in ROLES:
        raise KitError(f"{where}: column 'role': expected one of {', '.join(ROLES)}, got "
                       f"{role!r}")
    kernels = tuple(filter(None, (record.get("kernels") or "").split(";")))
    if role == "block" and not kernels:
        raise KitError(f"{where}: a block must list its kernels")
    return KitEntry(
        id=ident, file=_safe_file((record.get("file") or "").strip(), where),
        spec=spec_from_record(record, where, KitError) if role == "op" else None,
        inputs=_parse_inputs(record.get("inputs") or "", where), role=role,
        source=(record.get("source") or "").strip(), pair=(record.get("pair") or "").strip(),
        kernels=kernels)


def kit_id(kit: str | Path) -> str:
    """A short fingerprint of a kit (of its manifest's bytes): the key under which its
    timings are kept, so ids of two different kits never mix."""
    try:
        return hashlib.sha256((Path(kit) / MANIFEST).read_bytes()).hexdigest()[:12]
    except OSError as exc:
        raise KitError(f"{kit}: cannot read {MANIFEST}: {exc.strerror or exc}") from None


def read_timings(path: str | Path, entries: Sequence[KitEntry]) -> dict[str, float]:
    """id -> latency_ms from a returned timings CSV, checked against the kit's ids."""
    path = Path(path)
    known = {e.id for e in entries}
    timings: dict[str, float] = {}
    rows: dict[str, int] = {}
    hint = f" (expected columns: {','.join(TIMING_COLUMNS)})"
    for line, record in csv_records(path, TIMING_COLUMNS, KitError, columns_hint=hint,
                                    absent=f"{path}: no such timings file"):
        where = f"{path}, row {line}"
        ident = (record.get("id") or "").strip()
        if ident not in known:
            raise KitError(f"{where}: id {ident!r} is not in the kit's manifest")
        if ident in rows:
            raise KitError(f"{where}: id {ident!r} is timed twice (also row {rows[ident]})")
        rows[ident] = line
        timings[ident] = latency_ms_from_text((record.get("latency_ms") or "").strip(), where,
                                              KitError)
    if not timings:
        raise KitError(f"{path}: no timings (only a header, or empty)")
    return timings


def missing(entries: Sequence[KitEntry], timings: dict[str, float]) -> list[KitEntry]:
    """The kit's models that have no timing."""
    return [e for e in entries if e.id not in timings]


def write_timings(path: str | Path, timings: dict[str, float]) -> None:
    """``id,latency_ms`` rows, written atomically."""
    from rewriter.atomic import atomic_write_text

    lines = ["id,latency_ms", *(f"{i},{ms:.6g}" for i, ms in timings.items())]
    atomic_write_text(path, "\n".join(lines) + "\n")
