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


def _cell(record: dict[str, str], column: str) -> str:
    return (record.get(column) or "").strip() or _DEFAULTS.get(column, "")


def _integer(record: dict[str, str], column: str, where: str,
             error: type[Exception]) -> int:
    text = _cell(record, column)
    try:
        return int(text)
    except ValueError:
        raise error(f"{where}: column {column!r}: expected an integer, got {text!r}") from None


def spec_from_record(record: dict[str, str], where: str,
                     error: type[Exception] = MeasurementError) -> OpSpec:
    """The OpSpec of a CSV record (the `SPEC_FIELDS` columns; empty optional ones take
    their defaults), every field checked; `where` ("FILE, row N") starts each message."""
    values: dict[str, object] = {}
    for column in SPEC_FIELDS:
        if column in INT_FIELDS:
            values[column] = _integer(record, column, where, error)
            continue
        values[column] = _cell(record, column)
        if column == "kind" and values[column] not in KINDS:
            raise error(f"{where}: column 'kind': unknown op kind {values[column]!r}")
    try:
        return OpSpec(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise error(f"{where}: {exc}") from None


def latency_ms_from_text(text: str, where: str,
                         error: type[Exception] = MeasurementError) -> float:
    """A latency cell: a positive finite number of milliseconds."""
    try:
        value = float(text)
    except ValueError:
        raise error(f"{where}: column 'latency_ms': expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise error(f"{where}: column 'latency_ms': must be a positive finite number of "
                    f"milliseconds, got {text!r}")
    return value


def _parse_row(path: Path, line: int, record: dict[str, str]) -> Measurement:
    where = f"{path}, row {line}"
    spec = spec_from_record(record, where)
    return Measurement(spec, latency_ms_from_text(_cell(record, "latency_ms"), where),
                       _cell(record, "device"),
                       _integer(record, "threads", where, MeasurementError),
                       _integer(record, "repeats", where, MeasurementError))


def read_csv(path: str | Path) -> list[Measurement]:
    """Measurements from a CSV (ours, or one measured elsewhere); see the module docstring."""
    path = Path(path)
    records = csv_records(path, REQUIRED_COLUMNS, MeasurementError,
                          columns_hint=f" (required: {', '.join(REQUIRED_COLUMNS)})")
    rows = [_parse_row(path, line, record) for line, record in records]
    if not rows:
        raise MeasurementError(f"{path}: no measurements (only a header, or empty)")
    return rows
