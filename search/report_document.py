"""The report's format-neutral document model and formatting (internals of
`rewriter.search.report`): cells, facts, tables, charts and lines, and how every number
is formatted once for both HTML and Markdown."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

LABEL_CHARS = 30           # layer labels longer than this are shortened with an ellipsis
NA = "n/a"
MIB = 1024 * 1024

T = TypeVar("T")


# --------------------------------------------------------------------------- input


def _num(value: Any) -> float | None:
    """`value` as a finite float; None when missing, not a number, NaN or infinite."""
    if value is None or isinstance(value, (bool, str)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _items(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """The mappings in the list `data[key]`; anything else there is skipped."""
    value = data.get(key)
    if not isinstance(value, (list, tuple)):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _memory(cost: Mapping[str, Any]) -> float | None:
    params, acts = _num(cost.get("param_bytes")), _num(cost.get("peak_activation_bytes"))
    return None if params is None or acts is None else params + acts


def _change_pct(before: Any, after: Any) -> float | None:
    """Relative change from `before` to `after` in percent (negative = lower)."""
    b, a = _num(before), _num(after)
    if b is None or a is None:
        return None
    if b == 0:
        return 0.0 if a == 0 else None
    return (a - b) / abs(b) * 100


def _sample_evenly(items: Sequence[T], k: int) -> list[T]:
    """At most `k` items spread evenly over `items`, the first and last included."""
    n = len(items)
    if n <= k:
        return list(items)
    if k <= 1:
        return list(items[:k])
    return [items[round(i * (n - 1) / (k - 1))] for i in range(k)]


# --------------------------------------------------------------------------- formatting


def _fmt_ms(value: Any) -> str:
    x = _num(value)
    return NA if x is None else f"{x:.4f}"


def _fmt_short(x: float) -> str:
    """Three significant digits or so, never scientific: 3.14, 31.4, 314."""
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"


def _fmt_bytes(value: Any) -> str:
    x = _num(value)
    if x is None:
        return NA
    if abs(x) < 1024:
        return f"{x:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        x /= 1024
        if abs(x) < 1024 or unit == "GiB":
            break
    return f"{_fmt_short(x)} {unit}"


def _fmt_pct(pct: float | None, signed: bool = True) -> str:
    if pct is None:
        return NA
    text = f"{pct:{'+' if signed else ''}.{1 if abs(pct) >= 1 else 2}f}%"
    return "0%" if float(text[:-1]) == 0 else text


def _fmt_count(value: Any) -> str:
    x = _num(value)
    return NA if x is None else f"{round(x):,}"


def _fmt_duration(value: Any) -> str:
    s = _num(value)
    if s is None:
        return NA
    if s < 60:
        return f"{s:.2f} s" if s < 1 else f"{s:.1f} s"
    minutes, seconds = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _fmt_value(value: Any) -> str:
    """Any JSON value, compactly."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _tone(change: float | None, tolerance: float = 0.005) -> str:
    """CSS class of a change (a percentage by default): lower is better."""
    if change is None or abs(change) < tolerance:
        return ""
    return "good" if change < 0 else "bad"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _truncate(text: str, limit: int = LABEL_CHARS) -> str:
    """`text` shortened to `limit` characters with an ellipsis in the middle (the end of a
    layer path is the distinctive part)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 3
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


# --------------------------------------------------------------------------- document model


@dataclass(frozen=True)
class Cell:
    """A formatted value. kind: "text" (free text), "code" (path, pass, site, layer name)
    or "num" (right-aligned); tone: "good", "bad" or "" (colours a change in HTML)."""

    text: str
    kind: str = "text"
    tone: str = ""


def _change_cell(before: Any, after: Any) -> Cell:
    """The relative change from `before` to `after`, coloured."""
    pct = _change_pct(before, after)
    return _n(_fmt_pct(pct), _tone(pct))


def _code(value: Any) -> Cell:
    return Cell(NA) if value is None else Cell(str(value), "code")


def _n(text: str, tone: str = "") -> Cell:
    return Cell(text, "num", tone)


@dataclass(frozen=True)
class Facts:
    """Label: value pairs."""

    items: tuple[tuple[str, Cell], ...]


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]

    def numeric_columns(self) -> set[int]:
        """Columns whose cells are all numbers (right-aligned)."""
        return {i for i in range(len(self.headers))
                if self.rows and all(row[i].kind == "num" for row in self.rows)}


@dataclass(frozen=True)
class Chart:
    """A chart drawn on demand as inline SVG (HTML) and the table of its data (Markdown;
    collapsed in HTML)."""

    svg: Callable[[], str]
    table: Table | None


@dataclass(frozen=True)
class Lines:
    """Sentences, one paragraph each."""

    lines: tuple[str, ...]


Block = Facts | Table | Chart | Lines


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    blocks: tuple[Block, ...]

def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
