"""Measurements of single ops and their CSV files.

CSV columns, in this order (`write_csv`)::

    kind, n, cin, cout, h_in, w_in, h_out, w_out, kh, kw, stride, groups, act, n_inputs,
    dtype_bytes, layout               the OpSpec fields
    latency_ms                        median latency of one run, ms (> 0)
    device, threads, repeats          metadata: where and how it was measured

`read_csv` needs only kind, n, cin, cout, h_in, w_in, h_out, w_out, kh, kw, stride, groups
and latency_ms (a CSV measured elsewhere); the other columns default to act "",
n_inputs 1, dtype_bytes 4, layout "", device "", threads 0, repeats 0, and unknown columns are
ignored. A malformed file raises `MeasurementError` naming the file, the row (counted as
lines, the header being row 1) and the column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rewriter.cost.opspec import INT_FIELDS, KINDS, SPEC_FIELDS, OpSpec

META_COLUMNS = ("latency_ms", "device", "threads", "repeats")
COLUMNS = (*SPEC_FIELDS, *META_COLUMNS)
REQUIRED_COLUMNS = (*SPEC_FIELDS[:12], "latency_ms")
_DEFAULTS = {"act": "", "n_inputs": "1", "dtype_bytes": "4", "layout": "", "device": "",
             "threads": "0", "repeats": "0"}


class MeasurementError(ValueError):
    """A measurement file or spec cannot be used; the message is one line."""


@dataclass(frozen=True)
class Measurement:
    spec: OpSpec
    latency_ms: float
    device: str = ""
    threads: int = 0
    repeats: int = 0


def csv_records(path: Path, required: Sequence[str], error: type[Exception], *,
                columns_hint: str = "", absent: str | None = None,
                max_rows: int | None = None) -> list[tuple[int, dict[str, str]]]:
    """(line, record) of each row of the CSV at `path` (the header being line 1), after
    checking it has the `required` columns and no row more fields than the header. Every
    problem is one line in an `error`: `absent` is the message when there is no file
    (default: the OS's), `columns_hint` follows a missing column's name."""
    records = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise error(f"{path}, row 1: missing column {missing[0]!r}{columns_hint}")
            for record in reader:
                if None in record:
                    raise error(f"{path}, row {reader.line_num}: more fields than the header "
                                "has columns")
                if max_rows is not None and len(records) >= max_rows:
                    raise error(f"{path}, row {reader.line_num}: more than {max_rows} rows")
                records.append((reader.line_num, record))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        if absent is not None and isinstance(exc, FileNotFoundError):
            raise error(absent) from None
        raise error(f"{path}: cannot read: {' '.join(str(exc).split())}") from None
    return records


def write_csv(path: str | Path, rows: Iterable[Measurement]) -> None:
    """Write the rows atomically (rewriter.atomic: a new temporary file, then renamed)."""
    from rewriter.atomic import atomic_write

    rows = list(rows)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([*row.spec.signature(), f"{row.latency_ms:.6g}", row.device,
                                 row.threads, row.repeats])

    atomic_write(path, write)


def _parse_row(path: Path, line: int, record: dict[str, str]) -> Measurement:
    values: dict[str, object] = {}
    for column in COLUMNS:
        text = (record.get(column) or "").strip() or _DEFAULTS.get(column, "")
        where = f"{path}, row {line}: column {column!r}"
        if column == "kind" and text not in KINDS:
            raise MeasurementError(f"{where}: unknown op kind {text!r}")
        if column in INT_FIELDS or column in ("threads", "repeats"):
            try:
                values[column] = int(text)
            except ValueError:
                raise MeasurementError(f"{where}: expected an integer, got {text!r}") from None
        elif column == "latency_ms":
            try:
                values[column] = float(text)
            except ValueError:
                raise MeasurementError(f"{where}: expected a number, got {text!r}") from None
            if not math.isfinite(values[column]) or values[column] <= 0:
                raise MeasurementError(f"{where}: latency must be a positive number, got {text!r}")
        else:
            values[column] = text
    try:
        spec = OpSpec(**{f: values[f] for f in SPEC_FIELDS})
    except ValueError as exc:
        raise MeasurementError(f"{path}, row {line}: {exc}") from None
    return Measurement(spec, values["latency_ms"], values["device"], values["threads"],
                       values["repeats"])


def read_csv(path: str | Path) -> list[Measurement]:
    """Measurements from a CSV (ours, or one measured elsewhere); see the module docstring."""
    path = Path(path)
    records = csv_records(path, REQUIRED_COLUMNS, MeasurementError,
                          columns_hint=f" (required: {', '.join(REQUIRED_COLUMNS)})")
    rows = [_parse_row(path, line, record) for line, record in records]
    if not rows:
        raise MeasurementError(f"{path}: no measurements (only a header, or empty)")
    return rows
