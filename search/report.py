"""The report of `rewriter optimize`: a self-contained HTML page and a Markdown file.

The driver hands over a JSON-like dict::

    model, target, strategy: str; seed: int; exact: bool              required
    candidates_evaluated: int; elapsed_s: float                      required
    before, after: {latency_ms, param_bytes, peak_activation_bytes}  required
    rewrites: [{pass, site, description, gain_ms}]                   required, may be empty
    layers: [{name, before_ms, after_ms}]          optional, 0 ms where a layer is absent
    trace: [{evaluated, best_latency_ms}]          optional
    pareto: [{latency_ms, memory_bytes, chosen}]   optional (memory = params + peak activations)
    candidates: [{latency_ms, memory_bytes}]       optional, subsampled for the chart
    verification: {passed, max_relative_error, summary}; budget: {max_param_bytes,
    max_activation_bytes}; notes: [str]                                  optional
    fidelity: {min_cosine, min_fidelity, outputs: [{name, cosine, relative_l2,
    top1_agreement}]} (an architecture change), or any {key: value}         optional

Both formats are rendered from the same format-neutral sections (facts, tables, charts,
lines of text), so every number is computed and formatted once. HTML draws the charts with
matplotlib as inline SVG (no external CSS, JS, fonts or images) with the chart's data in a
collapsed table; Markdown shows that table instead. A missing required key is a
`ValueError` naming it; missing, unknown or malformed optional data is skipped.
Standard library, and matplotlib for the charts (imported only when drawing one).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, TypeVar

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["render_html", "render_markdown", "write_report"]

TITLE = "rewriter optimize report"
MAX_LAYERS = 40            # rows of the per-layer chart and table
MAX_CANDIDATES = 2000      # grey points of the Pareto chart
MAX_TRACE_ROWS = 10        # rows of the trace table
LABEL_CHARS = 30           # layer labels longer than this are shortened with an ellipsis
NA = "n/a"
MIB = 1024 * 1024

REQUIRED = ("model", "target", "strategy", "seed", "exact", "candidates_evaluated",
            "elapsed_s", "before", "after", "rewrites")
REQUIRED_COST = ("latency_ms", "param_bytes", "peak_activation_bytes")

T = TypeVar("T")


# --------------------------------------------------------------------------- input


def _validate(data: Any) -> None:
    """Raise `ValueError` naming the first required key that is missing."""
    if not isinstance(data, Mapping):
        raise ValueError(f"report data must be a mapping, not {type(data).__name__}")
    for key in REQUIRED:
        if key not in data:
            raise ValueError(f"report data is missing required key {key!r}")
    for side in ("before", "after"):
        if not isinstance(data[side], Mapping):
            raise ValueError(f"report data key {side!r} must be a mapping")
        for key in REQUIRED_COST:
            if key not in data[side]:
                raise ValueError(f"report data is missing required key '{side}.{key}'")


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


# --------------------------------------------------------------------------- sections


def _sections(data: Mapping[str, Any]) -> list[Section]:
    _validate(data)
    builders = (_summary_section, _comparison_section, _fidelity_section, _rewrites_section,
                _layers_section, _trace_section, _pareto_section)
    return [section for build in builders if (section := build(data)) is not None]


def _summary_section(data: Mapping[str, Any]) -> Section:
    facts = Facts((
        ("Model", _code(data["model"])),
        ("Target", _code(data["target"])),
        ("Strategy", _code(data["strategy"])),
        ("Seed", Cell(_fmt_value(data["seed"]))),
        ("Mode", Cell("exact" if data["exact"] else "architecture changes allowed")),
        ("Candidates evaluated", Cell(_fmt_count(data["candidates_evaluated"]))),
        ("Search time", Cell(_fmt_duration(data["elapsed_s"]))),
    ))
    notes = data.get("notes")
    notes = [notes] if isinstance(notes, str) else notes if isinstance(notes, (list, tuple)) else []
    lines = tuple(str(note) for note in notes if note is not None)
    return Section("summary", "Summary", (facts, Lines(lines)) if lines else (facts,))


def _change_row(label: str, before: Any, after: Any,
                fmt: Callable[[Any], str]) -> tuple[Cell, ...]:
    return Cell(label), _n(fmt(before)), _n(fmt(after)), _change_cell(before, after)


def _comparison_section(data: Mapping[str, Any]) -> Section:
    before, after = data["before"], data["after"]
    rows = [_change_row(label, before.get(key), after.get(key), fmt) for label, key, fmt in (
        ("Estimated latency (ms)", "latency_ms", _fmt_ms),
        ("Parameters", "param_bytes", _fmt_bytes),
        ("Peak activations", "peak_activation_bytes", _fmt_bytes))]
    rows.append(_change_row("Memory (parameters + peak activations)",
                            _memory(before), _memory(after), _fmt_bytes))
    table = Table(("Metric", "Before", "After", "Change"), tuple(rows))
    facts = [fact for fact in (_speedup_fact(before, after), _verification_fact(data),
                               _budget_fact(data)) if fact is not None]
    blocks: tuple[Block, ...] = (table, Facts(tuple(facts))) if facts else (table,)
    return Section("before-after", "Before and after", blocks)


def _speedup_fact(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, Cell] | None:
    b, a = _num(before.get("latency_ms")), _num(after.get("latency_ms"))
    if b is None or a is None or a <= 0:
        return None
    return "Estimated speed-up", Cell(f"{b / a:.3f}×", tone=_tone(_change_pct(b, a)))


def _verification_fact(data: Mapping[str, Any]) -> tuple[str, Cell] | None:
    verification = data.get("verification")
    if not isinstance(verification, Mapping):
        return None
    passed = verification.get("passed")
    parts = ["not run" if passed is None else "passed" if passed else "FAILED"]
    error = _num(verification.get("max_relative_error"))
    if error is not None:
        parts.append(f"max relative error {error:.3g}")
    if verification.get("summary"):
        parts.append(str(verification["summary"]))
    tone = "" if passed is None else "good" if passed else "bad"
    return "Verification", Cell(" — ".join(parts), tone=tone)


def _budget_fact(data: Mapping[str, Any]) -> tuple[str, Cell] | None:
    budget = data.get("budget")
    if not isinstance(budget, Mapping):
        return None
    limits = [f"{label} ≤ {_fmt_bytes(budget.get(key))}"
              for label, key in (("parameters", "max_param_bytes"),
                                 ("peak activations", "max_activation_bytes"))
              if _num(budget.get(key)) is not None]
    return "Memory budget", Cell(", ".join(limits) if limits else "none")


def _fidelity_section(data: Mapping[str, Any]) -> Section | None:
    fidelity = data.get("fidelity")
    if not isinstance(fidelity, Mapping) or not fidelity:
        return None
    outputs = _items(fidelity, "outputs")
    if outputs:  # an architecture change: how far the model is from the original
        facts = Facts((
            ("Lowest mean cosine similarity", _n(_fmt_value(fidelity.get("min_cosine")))),
            ("Floor (--min-fidelity)", _n(_fmt_value(fidelity.get("min_fidelity")))),
        ))
        rows = tuple((_code(o.get("name")), _n(_fmt_value(o.get("cosine"))),
                      _n(_fmt_value(o.get("relative_l2"))),
                      _n(NA if o.get("top1_agreement") is None
                         else _fmt_pct(100 * float(o["top1_agreement"]), signed=False)))
                     for o in outputs)
        line = ("The architecture changed: weights were refitted from calibration data and "
                "every output compared with the original's on held-out inputs. Fine-tune "
                "before use.")
        return Section("fidelity", "Fidelity to the original",
                       (Lines((line,)), facts,
                        Table(("Output", "Cosine", "Relative L2", "Top-1 agreement"), rows)))
    rows = tuple((Cell(str(key)), Cell(_fmt_value(value))) for key, value in fidelity.items())
    return Section("fidelity", "Cost-model fidelity", (Table(("Key", "Value"), rows),))


def _rewrite_row(rank: int, rewrite: Mapping[str, Any], before: float | None) -> tuple[Cell, ...]:
    gain = _num(rewrite.get("gain_ms"))
    share = None if gain is None or not before else gain / before * 100
    description = rewrite.get("description")
    description = "" if description is None else str(description)
    if rewrite.get("exact") is False:
        description += " (architecture change)"
    return (_n(str(rank)), _code(rewrite.get("pass")), _code(rewrite.get("site")),
            Cell(description),
            _n(_fmt_ms(gain)), _n(_fmt_pct(share, signed=False)))


def _rewrites_section(data: Mapping[str, Any]) -> Section:
    def order(rewrite: Mapping[str, Any]) -> tuple[bool, float]:
        gain = _num(rewrite.get("gain_ms"))
        return gain is None, -(gain or 0.0)

    rewrites = sorted(_items(data, "rewrites"), key=order)
    if not rewrites:
        return Section("rewrites", "Kept rewrites",
                       (Lines(("None kept: no rewrite lowered the estimated latency.",)),))
    before = _num(data["before"].get("latency_ms"))
    rows = tuple(_rewrite_row(rank, rewrite, before) for rank, rewrite in enumerate(rewrites, 1))
    table = Table(("#", "Pass", "Site", "Description", "Gain (ms)", "Gain (% of before)"), rows)
    count = f"{_plural(len(rewrites), 'rewrite')} kept"
    line = (f"{count}, largest estimated gain first; the gain of a rewrite is the latency "
            "its removal would add back.")
    return Section("rewrites", "Kept rewrites", (Lines((line,)), table))


@dataclass(frozen=True)
class _Layer:
    name: str
    before: float
    after: float

    @property
    def peak(self) -> float:
        return max(self.before, self.after)


def _layers(data: Mapping[str, Any]) -> list[_Layer]:
    """All layers, slowest (by max of before and after) first."""
    layers = [_Layer("?" if item.get("name") is None else str(item["name"]),
                     max(_num(item.get("before_ms")) or 0.0, 0.0),
                     max(_num(item.get("after_ms")) or 0.0, 0.0))
              for item in _items(data, "layers")]
    return sorted(layers, key=lambda layer: layer.peak, reverse=True)


def _layer_change(layer: _Layer) -> Cell:
    if layer.before > 0 and layer.after == 0:
        return _n("removed", "good")
    if layer.before == 0 and layer.after > 0:
        return _n("new", "bad")
    delta = layer.after - layer.before
    return _n(f"{delta:+.4f}" if round(delta, 4) else "0", _tone(delta, 5e-5))


def _layers_section(data: Mapping[str, Any]) -> Section | None:
    layers = _layers(data)
    if not layers:
        return None
    shown, rest = layers[:MAX_LAYERS], layers[MAX_LAYERS:]
    rows = tuple((_code(layer.name), _n(_fmt_ms(layer.before)), _n(_fmt_ms(layer.after)),
                  _layer_change(layer)) for layer in shown)
    table = Table(("Layer", "Before (ms)", "After (ms)", "Change (ms)"), rows)
    which = f"The {len(shown)} slowest of {len(layers)} layers" if rest else \
        f"All {_plural(len(layers), 'layer')}"
    lines = [f"{which} by estimated latency, slowest first; 0 ms means the layer does not "
             "exist on that side (removed by a fusion, or new)."]
    if rest:
        lines.append(f"{_plural(len(rest), 'more layer')} left out "
                     f"({_fmt_ms(sum(layer.before for layer in rest))} ms before, "
                     f"{_fmt_ms(sum(layer.after for layer in rest))} ms after in total).")
    return Section("layers", "Per-layer latency",
                   (Chart(partial(_svg_layers, shown), table), Lines(tuple(lines))))


def _trace_points(data: Mapping[str, Any]) -> list[tuple[float, float]]:
    points = ((_num(item.get("evaluated")), _num(item.get("best_latency_ms")))
              for item in _items(data, "trace"))
    return sorted((e, ms) for e, ms in points if e is not None and ms is not None)


def _trace_section(data: Mapping[str, Any]) -> Section | None:
    points = _trace_points(data)
    if not points:
        return None
    before = _num(data["before"].get("latency_ms"))
    sample = _sample_evenly(points, MAX_TRACE_ROWS)
    rows = tuple((_n(_fmt_count(e)), _n(_fmt_ms(ms)), _change_cell(before, ms)) for e, ms in sample)
    table = Table(("Candidates evaluated", "Best latency (ms)", "Change vs before"), rows)
    shown = f"{len(sample)} of {len(points)} trace points" if len(sample) < len(points) else \
        _plural(len(points), "trace point")
    line = (f"Best estimated latency found against candidates evaluated ({shown}); "
            f"before the search: {_fmt_ms(before)} ms, "
            f"best: {_fmt_ms(min(ms for _, ms in points))} ms.")
    return Section("trace", "Search trace",
                   (Chart(partial(_svg_trace, points, before), table), Lines((line,))))


@dataclass(frozen=True)
class _Point:
    memory: float    # bytes
    latency: float   # ms
    chosen: bool = False


def _points(data: Mapping[str, Any], key: str) -> list[_Point]:
    """The points of `data[key]` with a finite memory and latency."""
    points = []
    for item in _items(data, key):
        memory, latency = _num(item.get("memory_bytes")), _num(item.get("latency_ms"))
        if memory is not None and latency is not None:
            points.append(_Point(memory, latency, bool(item.get("chosen"))))
    return points


def _pareto_section(data: Mapping[str, Any]) -> Section | None:
    front = sorted(_points(data, "pareto"), key=lambda p: (p.memory, p.latency))
    candidates = _points(data, "candidates")
    if not front and not candidates:
        return None
    before = data["before"]
    memory, latency = _memory(before), _num(before.get("latency_ms"))
    origin = None if memory is None or latency is None else _Point(memory, latency)
    shown = _sample_evenly(candidates, MAX_CANDIDATES)
    rows = tuple((_n(str(i)), _n(_fmt_bytes(p.memory)), _n(_fmt_ms(p.latency)),
                  _change_cell(latency, p.latency),
                  Cell("chosen" if p.chosen else "", tone="good" if p.chosen else ""))
                 for i, p in enumerate(front, 1))
    headers = ("#", "Memory", "Latency (ms)", "Latency vs before", "Chosen")
    table = Table(headers, rows) if rows else None
    grey = _plural(len(candidates), "evaluated candidate")
    if len(shown) < len(candidates):
        grey += f" ({len(shown)} sampled for the chart)"
    line = (f"Estimated latency against memory (parameters + peak activations): "
            f"{_plural(len(front), 'point')} on the Pareto front, {grey}.")
    return Section("pareto", "Pareto front: latency against memory",
                   (Chart(partial(_svg_pareto, front, shown, origin), table), Lines((line,))))


# --------------------------------------------------------------------------- Markdown


def _md_text(text: str) -> str:
    """Free text as Markdown: one line, punctuation that Markdown would act on escaped."""
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", " ".join(str(text).splitlines()))


def _md_code(text: str, in_table: bool) -> str:
    """An identifier as a code span (nothing inside is interpreted)."""
    text = " ".join(text.splitlines())
    if not text:
        return ""
    if in_table:
        text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_cell(cell: Cell, in_table: bool = True) -> str:
    return _md_code(cell.text, in_table) if cell.kind == "code" else _md_text(cell.text)


def _md_line(text: str) -> str:
    """A paragraph that cannot turn into a heading, list, quote or rule."""
    text = _md_text(text)
    text = re.sub(r"^(\d+)([.)])", r"\1\\\2", text)
    return "\\" + text if text[:1] in ("#", "-", "+", "=") else text


def _md_table(table: Table) -> list[str]:
    numeric = table.numeric_columns()
    lines = ["| " + " | ".join(_md_text(h) for h in table.headers) + " |",
             "|" + "".join("---:|" if i in numeric else "---|"
                           for i in range(len(table.headers)))]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in table.rows]
    return lines


def _md_block(block: Block) -> list[str]:
    if isinstance(block, Facts):
        return [f"- **{_md_text(label)}:** {_md_cell(value, in_table=False)}"
                for label, value in block.items]
    if isinstance(block, Table):
        return _md_table(block)
    if isinstance(block, Chart):
        return _md_table(block.table) if block.table else []
    return "\n\n".join(_md_line(line) for line in block.lines).split("\n")


def render_markdown(data: dict) -> str:
    """The report as Markdown: the HTML report's content, with tables for the charts."""
    out = [f"# {TITLE}", ""]
    for section in _sections(data):
        out += [f"## {_md_text(section.title)}", ""]
        for block in section.blocks:
            lines = _md_block(block)
            out += lines + [""] if lines else []
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _class(*names: str) -> str:
    names = tuple(name for name in names if name)
    return f' class="{" ".join(names)}"' if names else ""


def _html_cell(cell: Cell) -> str:
    return f"<code>{_esc(cell.text)}</code>" if cell.kind == "code" else _esc(cell.text)


def _html_table(table: Table) -> str:
    numeric = table.numeric_columns()
    head = "".join(f"<th{_class('num' if i in numeric else '')}>{_esc(h)}</th>"
                   for i, h in enumerate(table.headers))
    body = "\n".join(
        "<tr>" + "".join(f"<td{_class('num' if i in numeric else '', cell.tone)}>"
                         f"{_html_cell(cell)}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in table.rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _html_block(block: Block) -> str:
    if isinstance(block, Facts):
        items = "".join(f"<dt>{_esc(label)}</dt><dd{_class(value.tone)}>{_html_cell(value)}</dd>"
                        for label, value in block.items)
        return f"<dl>{items}</dl>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Chart):
        data = "" if block.table is None else \
            f"\n<details><summary>Data</summary>\n{_html_table(block.table)}\n</details>"
        return f"<figure>{block.svg()}</figure>{data}"
    return "\n".join(f'<p class="note">{_esc(line)}</p>' for line in block.lines)


def _html_section(section: Section) -> str:
    blocks = "\n".join(_html_block(block) for block in section.blocks)
    return (f'<section id="{_esc(section.key)}">\n<h2>{_esc(section.title)}</h2>\n'
            f"{blocks}\n</section>")


CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--head:#f6f8fa;
--good:#1a7f37;--bad:#cf222e}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:960px;margin:0 auto;padding:24px 16px 48px}
h1{font-size:1.6em;margin:0 0 .4em}
h2{font-size:1.2em;margin:1.8em 0 .6em;padding-bottom:.2em;border-bottom:1px solid var(--line)}
table{border-collapse:collapse;width:100%;margin:.5em 0;font-size:.92em}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600}
.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.good{color:var(--good)}.bad{color:var(--bad)}
code{font:.88em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:.5em 0}
dt{color:var(--muted)}dd{margin:0}
.note{color:var(--muted);font-size:.92em;margin:.4em 0}
figure{margin:.5em 0}
details{margin:.2em 0 .6em}summary{cursor:pointer;color:var(--muted);font-size:.92em}
svg{display:block;width:100%;height:auto}
@media print{main{max-width:none}details{display:none}}
""".strip()


def render_html(data: dict) -> str:
    """The report as one self-contained HTML5 page with up to three inline SVG charts."""
    sections = _sections(data)
    name = Path(str(data["model"])).name or str(data["model"])
    body = "\n".join(_html_section(section) for section in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_esc(TITLE)} — {_esc(name)}</title>\n<style>\n{CSS}\n</style>\n</head>\n"
        f"<body>\n<main>\n<h1>{_esc(TITLE)}</h1>\n{body}\n</main>\n</body>\n</html>\n")


# --------------------------------------------------------------------------- charts

CHART_WIDTH_IN = 9.0       # inches at 72 points each; CSS scales the SVG to the page width
BEFORE_COLOR, AFTER_COLOR, CHOSEN_COLOR = "#b4bec9", "#2563eb", "#e8590c"
REF_COLOR, CANDIDATE_COLOR, ORIGIN_COLOR = "#8c959f", "#c6ccd3", "#57606a"
CHART_RC: dict[str, Any] = {
    "svg.fonttype": "none",       # text stays <text>: small, selectable, searchable
    "text.parse_math": False,     # a "$" in a layer name is a character, not TeX
    "text.usetex": False,
    # Matplotlib measures text in the first; the SVG lists all of them for the browser.
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titlelocation": "left",
    "axes.edgecolor": REF_COLOR,
    "axes.labelcolor": "#1f2328",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.formatter.useoffset": False,   # "+3.99" offsets are hard to read on flat latencies
    "grid.color": "#eaeef2",
    "xtick.color": "#59636e",
    "ytick.color": "#59636e",
    "legend.frameon": False,
}
# No date (same input, same bytes) and no creator (it carries a URL).
SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
# Matplotlib numbers its groups (figure_1, patch_2, ...) in every chart; ids must be unique
# in the page and nothing refers to these, so they go. Ids set with set_gid have hyphens.
# (Text in the SVG is escaped, so "<g " and "<use " only match tags.)
_AUTO_ID = re.compile(r'<g id="[\w.]+_\d+">')
# rc_context changes matplotlib's global rcParams: one chart at a time.
_MATPLOTLIB_LOCK = threading.Lock()

Tips = dict[str, str]    # gid of an artist -> its hover text


def _chart(name: str, label: str, height_in: float, draw: Callable[[Axes], Tips]) -> str:
    """The chart that `draw` draws on fresh axes, as an inline <svg> with id "chart-<name>".

    A private `Figure` (no pyplot, nothing left open); the salt keeps the SVG's ids
    deterministic and different from the other charts' in the same page."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    rc = {**CHART_RC, "svg.hashsalt": f"rewriter-{name}"}
    buffer = io.StringIO()
    with _MATPLOTLIB_LOCK, rc_context(rc):
        figure = Figure(figsize=(CHART_WIDTH_IN, height_in), layout="constrained")
        tips = draw(figure.add_subplot())
        figure.savefig(buffer, format="svg", metadata=SVG_METADATA)
    return _inline_svg(buffer.getvalue(), name, label, tips)


def _inline_svg(svg: str, name: str, label: str, tips: Tips) -> str:
    """Matplotlib's SVG document as an element of an HTML page: no XML prolog or DOCTYPE,
    SVG 2 `href` instead of the xlink namespace, an id, an accessible name, hover tooltips."""
    svg = svg[svg.index("<svg "):].strip()
    end = svg.index(">")
    # The id set here, not with rcParams["svg.id"]: that needs matplotlib 3.8.
    root = re.sub(r'\s+xmlns:xlink="[^"]*"', "", svg[:end]).replace(
        "<svg ", f'<svg id="chart-{name}" role="img" aria-label="{_esc(label)}" ')
    body = _AUTO_ID.sub("<g>", svg[end:]).replace("<use xlink:href=", "<use href=")

    def add_tip(match: re.Match[str]) -> str:
        tip = tips.get(match[1])
        return match[0] if tip is None else f"{match[0]}<title>{_esc(tip)}</title>"

    return root + re.sub(r'<g id="([^"]+)">', add_tip, body)


def _legend_above(ax: Axes) -> None:
    """The legend in one row above the plot, right-aligned (the title is on the left)."""
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(handles),
              borderaxespad=0.2)


def _svg_layers(layers: Sequence[_Layer]) -> str:
    return _chart("layers", "Per-layer estimated latency before and after",
                  1.2 + 0.24 * len(layers), partial(_draw_layers, layers))


def _draw_layers(layers: Sequence[_Layer], ax: Axes) -> Tips:
    """Horizontal grouped bars, before and after, one row per layer, slowest at the top."""
    rows = range(len(layers))
    tips: Tips = {}
    for side, offset, color in (("before", -0.2, BEFORE_COLOR), ("after", 0.2, AFTER_COLOR)):
        values = [getattr(layer, side) for layer in layers]
        bars = ax.barh([i + offset for i in rows], values, height=0.38, color=color, label=side)
        for i, (bar, layer, value) in enumerate(zip(bars, layers, values)):
            bar.set_gid(f"bar-{side}-{i}")
            tips[f"bar-{side}-{i}"] = f"{layer.name} {side}: {_fmt_ms(value)} ms"
    ax.set_yticks(list(rows), [_truncate(layer.name) for layer in layers])
    for i, (text, layer) in enumerate(zip(ax.get_yticklabels(), layers)):
        text.set_gid(f"layer-label-{i}")
        tips[f"layer-label-{i}"] = layer.name
    ax.set_ylim(len(layers) - 0.5, -0.5)        # inverted: slowest first, as in the table
    ax.set_xlim(left=0.0)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("estimated latency (ms)")
    ax.set_title("Per-layer latency")
    _legend_above(ax)
    return tips


def _svg_trace(points: Sequence[tuple[float, float]], before: float | None) -> str:
    return _chart("trace", "Best estimated latency against candidates evaluated", 3.6,
                  partial(_draw_trace, points, before))


def _draw_trace(points: Sequence[tuple[float, float]], before: float | None, ax: Axes) -> Tips:
    """Best latency so far as a step line over candidates evaluated; the latency before
    the search as a dashed reference."""
    evaluated, best = [e for e, _ in points], [ms for _, ms in points]
    ax.step(evaluated, best, where="post", color=AFTER_COLOR, linewidth=2.0,
            label="best latency so far", gid="trace-best")
    ax.plot(evaluated[-1:], best[-1:], "o", color=AFTER_COLOR, markersize=5, gid="trace-last")
    if before is not None:
        ax.axhline(before, color=REF_COLOR, linewidth=1.2, linestyle=(0, (5, 4)),
                   label="before the search", gid="trace-before")
    ax.set_xlim(left=min(0.0, evaluated[0]))
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel("best estimated latency (ms)")
    ax.set_title("Search trace")
    _legend_above(ax)
    tips = {"trace-last": f"{_fmt_count(evaluated[-1])} evaluated: {_fmt_ms(best[-1])} ms"}
    if before is not None:
        tips["trace-before"] = f"before the search: {_fmt_ms(before)} ms"
    return tips


def _svg_pareto(front: Sequence[_Point], candidates: Sequence[_Point],
                origin: _Point | None) -> str:
    return _chart("pareto", "Estimated latency against memory: candidates and Pareto front",
                  4.2, partial(_draw_pareto, front, candidates, origin))


def _point_tip(label: str, points: Iterable[_Point]) -> str:
    return "; ".join(f"{label}: {_fmt_bytes(p.memory)}, {_fmt_ms(p.latency)} ms" for p in points)


def _draw_pareto(front: Sequence[_Point], candidates: Sequence[_Point], origin: _Point | None,
                 ax: Axes) -> Tips:
    """Candidates in grey, the Pareto front connected, the chosen and original points marked."""
    def xy(points: Sequence[_Point]) -> tuple[list[float], list[float]]:
        return [p.memory / MIB for p in points], [p.latency for p in points]

    tips: Tips = {}
    if candidates:
        ax.scatter(*xy(candidates), s=7, color=CANDIDATE_COLOR, alpha=0.7, linewidths=0,
                   label="candidates", gid="pareto-candidates", zorder=1)
    if front:
        ax.plot(*xy(front), "-o", color=AFTER_COLOR, linewidth=2.0, markersize=4,
                label="Pareto front", gid="pareto-front", zorder=2)
    chosen = [p for p in front if p.chosen]
    if chosen:
        ax.plot(*xy(chosen), "o", color=CHOSEN_COLOR, markeredgecolor="white",
                markeredgewidth=2.0, markersize=12, label="chosen", gid="pareto-chosen", zorder=4)
        tips["pareto-chosen"] = _point_tip("chosen", chosen)
    if origin is not None:
        ax.plot(*xy([origin]), "s", color=ORIGIN_COLOR, markersize=8, label="original",
                gid="pareto-original", zorder=3)
        tips["pareto-original"] = _point_tip("original", [origin])
    ax.set_xlabel("memory: parameters + peak activations (MiB)")
    ax.set_ylabel("estimated latency (ms)")
    ax.set_title("Latency against memory")
    _legend_above(ax)
    return tips


# --------------------------------------------------------------------------- files


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` with the tool's one atomic writer (rewriter.atomic)."""
    from rewriter.atomic import atomic_write_text

    atomic_write_text(path, text)


def report_paths(path: str | os.PathLike) -> list[Path]:
    """The files `write_report(data, path)` writes: `path` itself for .html/.htm/.md,
    otherwise `<path>.html` and `<path>.md`."""
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm", ".md"):
        return [path]
    return [path.with_name(path.name + ".html"), path.with_name(path.name + ".md")]


def write_report(data: dict, path: str | os.PathLike) -> list[Path]:
    """Write the report to `path`: HTML for .html/.htm, Markdown for .md, otherwise both
    `<path>.html` and `<path>.md`. Everything is rendered before anything is written;
    missing folders are created. Returns the paths written."""
    path = Path(path)
    suffix = path.suffix.lower()
    renderers: list[tuple[Path, Callable[[dict], str]]]
    if suffix in (".html", ".htm"):
        renderers = [(path, render_html)]
    elif suffix == ".md":
        renderers = [(path, render_markdown)]
    else:
        renderers = [(path.with_name(path.name + ".html"), render_html),
                     (path.with_name(path.name + ".md"), render_markdown)]
    texts = [(target, render(data)) for target, render in renderers]
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, text in texts:
        _write_atomic(target, text)
    return [target for target, _ in texts]
