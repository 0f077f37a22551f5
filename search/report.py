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
lines of text), so every number is computed and formatted once. HTML draws the charts as
hand-made inline SVG (no external CSS, JS, fonts or images) with the chart's data in a
collapsed table; Markdown shows that table instead. A missing required key is a
`ValueError` naming it; missing, unknown or malformed optional data is skipped.
Standard library only.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

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
    """An SVG chart (HTML) and the table of its data (Markdown; collapsed in HTML)."""

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
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--head:#f6f8fa;--accent:#2563eb;
--good:#1a7f37;--bad:#cf222e;--warm:#e8590c}
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
svg text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:var(--muted)}
svg .title{font-size:12px;fill:var(--fg)}
svg .grid{stroke:#eaeef2}svg .axis{stroke:#8c959f}
.b0{fill:#b4bec9}.b1,.fp{fill:var(--accent)}
.step,.front{fill:none;stroke:var(--accent);stroke-width:2}
.ref{stroke:#8c959f;stroke-width:1.2;stroke-dasharray:5 4}
.cand{fill:#c6ccd3;fill-opacity:.7}
.chosen{fill:var(--warm);stroke:#fff;stroke-width:2}.orig{fill:#57606a}
@media print{main{max-width:none}details{display:none}}
""".strip()


def render_html(data: dict) -> str:
    """The report as one self-contained HTML5 page with three inline SVG charts."""
    sections = _sections(data)
    name = Path(str(data["model"])).name or str(data["model"])
    body = "\n".join(_html_section(section) for section in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_esc(TITLE)} — {_esc(name)}</title>\n<style>\n{CSS}\n</style>\n</head>\n"
        f"<body>\n<main>\n<h1>{_esc(TITLE)}</h1>\n{body}\n</main>\n</body>\n</html>\n")


# --------------------------------------------------------------------------- SVG

SVG_NS = "http://www.w3.org/2000/svg"
WIDTH = 900


def _px(value: float) -> str:
    """A coordinate, compactly."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _nice_step(span: float, count: int) -> float:
    """A 1, 2, 2.5 or 5 times a power of ten step giving about `count` intervals."""
    raw = span / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next((m * magnitude for m in (1, 2, 2.5, 5) if m * magnitude >= raw * (1 - 1e-9)),
                10 * magnitude)


def _fmt_tick(value: float, step: float) -> str:
    if value == 0:
        return "0"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if step >= scale:
            return f"{value / scale:g}{suffix}"
    decimals = next((d for d in range(12) if abs(round(step, d) - step) <= step * 1e-6), 12)
    return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class _Axis:
    """A linear map from the data range [lo, hi] (hi > lo) to pixels [start, end]."""

    lo: float
    hi: float
    step: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        value = min(max(value, self.lo), self.hi)
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)

    @property
    def ticks(self) -> list[float]:
        count = round((self.hi - self.lo) / self.step)
        return [round(self.lo + i * self.step, 12) for i in range(count + 1)]

    def label(self, value: float) -> str:
        return _fmt_tick(value, self.step)


def _axis(values: Iterable[float], start: float, end: float, *, zero: bool = False,
          margin: float = 0.0, count: int = 5) -> _Axis:
    """An axis over `values` (and 0 if `zero`), widened by `margin` of the range on both
    sides (not below 0 for values that are not negative) and then to round ticks; an empty
    or flat range is padded."""
    values = list(values) or [0.0]
    lo, hi = min(values), max(values)
    if zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= max(abs(lo), abs(hi)) * 1e-9 or hi - lo < 1e-12:
        pad = abs(lo) * 0.1 if abs(lo) > 1e-9 else 1.0
    else:
        pad = (hi - lo) * margin
    lo, hi = (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad
    step = _nice_step(hi - lo, count)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return _Axis(lo, hi, step, start, end)


def _tag(name: str, content: str | None = None, **attrs: Any) -> str:
    """An SVG element. Attribute names take "-" for "_" ("class_" is class); floats are
    written as coordinates, strings escaped; `content` is inserted as is (escape it)."""
    def value(v: Any) -> str:
        return _px(v) if isinstance(v, float) else _esc(v)

    text = " ".join(f'{key.rstrip("_").replace("_", "-")}="{value(v)}"' for key, v in attrs.items())
    return f"<{name} {text}/>" if content is None else f"<{name} {text}>{content}</{name}>"


def _tip(text: str) -> str:
    """A tooltip: the <title> child of an SVG element."""
    return f"<title>{_esc(text)}</title>"


def _svg(height: float, label: str, parts: Iterable[str]) -> str:
    content = "\n" + "\n".join(parts) + "\n"
    return _tag("svg", content, xmlns=SVG_NS, viewBox=f"0 0 {WIDTH} {_px(height)}", role="img",
                aria_label=label)


def _x_axis(axis: _Axis, top: float, bottom: float, title: str, title_y: float) -> list[str]:
    """Vertical grid lines, tick labels under `bottom`, the axis line and its title."""
    parts = []
    for tick in axis.ticks:
        x = axis(tick)
        parts.append(_tag("line", class_="grid", x1=x, y1=top, x2=x, y2=bottom))
        parts.append(_tag("text", axis.label(tick), x=x, y=bottom + 16.0, text_anchor="middle"))
    parts.append(_tag("line", class_="axis", x1=axis.start, y1=bottom, x2=axis.end, y2=bottom))
    parts.append(_tag("text", _esc(title), class_="title", x=(axis.start + axis.end) / 2,
                      y=title_y, text_anchor="middle"))
    return parts


def _y_axis(axis: _Axis, left: float, right: float, title: str, title_x: float) -> list[str]:
    """Horizontal grid lines, tick labels left of `left`, the axis line and its title."""
    parts = []
    for tick in axis.ticks:
        y = axis(tick)
        parts.append(_tag("line", class_="grid", x1=left, y1=y, x2=right, y2=y))
        parts.append(_tag("text", axis.label(tick), x=left - 6.0, y=y, dy=".35em",
                          text_anchor="end"))
    parts.append(_tag("line", class_="axis", x1=left, y1=axis.start, x2=left, y2=axis.end))
    middle = (axis.start + axis.end) / 2
    parts.append(_tag("text", _esc(title), class_="title", x=title_x, y=middle,
                      text_anchor="middle", transform=f"rotate(-90 {_px(title_x)} {_px(middle)})"))
    return parts


def _legend(entries: Sequence[tuple[str, str, str]], x: float, y: float) -> str:
    """A row of (shape: "rect" | "dot" | "line", css class, label) entries from (x, y)."""
    parts = []
    for shape, css, label in entries:
        if shape == "line":
            parts.append(_tag("line", class_=css, x1=x, y1=y, x2=x + 16.0, y2=y))
        elif shape == "dot":
            parts.append(_tag("circle", class_=css, cx=x + 8.0, cy=y, r=4.5))
        else:
            parts.append(_tag("rect", class_=css, x=x + 2.0, y=y - 5.0, width=12, height=10))
        parts.append(_tag("text", _esc(label), x=x + 22.0, y=y, dy=".35em"))
        x += 34 + 6.5 * len(label)
    return _tag("g", "".join(parts), class_="legend")


def _svg_layers(layers: Sequence[_Layer]) -> str:
    """Horizontal grouped bars, before and after, one row per layer."""
    left, right, top, row, bar = 220.0, 24.0, 34.0, 22.0, 8.0
    bottom = top + row * len(layers)
    x = _axis([v for layer in layers for v in (layer.before, layer.after)],
              left, WIDTH - right, zero=True)
    parts = [_legend((("rect", "b0", "before"), ("rect", "b1", "after")), left, 14.0)]
    parts += _x_axis(x, top, bottom, "estimated latency (ms)", bottom + 38)
    for i, layer in enumerate(layers):
        y = top + i * row
        parts.append(_tag("text", _tip(layer.name) + _esc(_truncate(layer.name)),
                          x=left - 8, y=y + row / 2, dy=".35em", text_anchor="end"))
        for j, (css, side, value) in enumerate((("b0", "before", layer.before),
                                                ("b1", "after", layer.after))):
            tip = _tip(f"{layer.name} {side}: {_fmt_ms(value)} ms")
            parts.append(_tag("rect", tip, class_=css, x=x(0), y=y + 3 + j * bar,
                              width=x(value) - x(0), height=bar))
    return _svg(bottom + 48, "Per-layer estimated latency before and after", parts)


def _svg_trace(points: Sequence[tuple[float, float]], before: float | None) -> str:
    """Best latency so far as a step line over candidates evaluated."""
    left, right, top, bottom, height = 78.0, 24.0, 34.0, 270.0, 320.0
    x = _axis([e for e, _ in points], left, WIDTH - right, zero=True)
    y = _axis([ms for _, ms in points] + ([before] if before is not None else []), bottom, top,
              margin=0.04)
    legend = [("line", "step", "best latency so far")]
    if before is not None:
        legend.append(("line", "ref", "before the search"))
    parts = [_legend(legend, left, 14.0)]
    parts += _y_axis(y, left, WIDTH - right, "best estimated latency (ms)", 18.0)
    parts += _x_axis(x, top, bottom, "candidates evaluated", height - 6)
    if before is not None:
        parts.append(_tag("line", class_="ref", x1=left, y1=y(before), x2=WIDTH - right,
                          y2=y(before)))
    (e0, ms0), (e1, ms1) = points[0], points[-1]
    steps = "".join(f"H{_px(x(e))}V{_px(y(ms))}" for e, ms in points[1:])
    parts.append(_tag("path", class_="step", d=f"M{_px(x(e0))},{_px(y(ms0))}{steps}"))
    parts.append(_tag("circle", _tip(f"{_fmt_count(e1)} evaluated: {_fmt_ms(ms1)} ms"),
                      class_="fp", cx=x(e1), cy=y(ms1), r=3.5))
    return _svg(height, "Best estimated latency against candidates evaluated", parts)


def _marker(point: _Point, x: _Axis, y: _Axis, css: str, label: str) -> list[str]:
    """A highlighted, labelled point: a square for "orig", else a large dot."""
    cx, cy = x(point.memory / MIB), y(point.latency)
    tip = _tip(f"{label}: {_fmt_bytes(point.memory)}, {_fmt_ms(point.latency)} ms")
    shape = (_tag("rect", tip, class_=css, x=cx - 5, y=cy - 5, width=10, height=10)
             if css == "orig" else _tag("circle", tip, class_=css, cx=cx, cy=cy, r=7.0))
    right = cx > WIDTH * 0.8
    return [shape, _tag("text", _esc(label), class_="title", x=cx - 10 if right else cx + 10,
                        y=cy - 8, text_anchor="end" if right else "start")]


def _svg_pareto(front: Sequence[_Point], candidates: Sequence[_Point],
                origin: _Point | None) -> str:
    """Candidates in grey, the Pareto front connected, the chosen and original points marked."""
    left, right, top, bottom, height = 78.0, 24.0, 34.0, 330.0, 380.0
    everything = [*front, *candidates, *([origin] if origin else [])]
    x = _axis([p.memory / MIB for p in everything], left, WIDTH - right, margin=0.03)
    y = _axis([p.latency for p in everything], bottom, top, margin=0.04)
    legend = [("dot", "cand", "candidates"), ("dot", "fp", "Pareto front"),
              ("dot", "chosen", "chosen"), ("rect", "orig", "original")]
    parts = [_legend(legend, left, 14.0)]
    parts += _y_axis(y, left, WIDTH - right, "estimated latency (ms)", 18.0)
    parts += _x_axis(x, top, bottom, "memory: parameters + peak activations (MiB)", height - 6)
    parts += [_tag("circle", class_="cand", cx=x(p.memory / MIB), cy=y(p.latency), r=2.2)
              for p in candidates]
    if len(front) > 1:
        coords = " ".join(f"{_px(x(p.memory / MIB))},{_px(y(p.latency))}" for p in front)
        parts.append(_tag("polyline", class_="front", points=coords))
    parts += [_tag("circle", _tip(f"{_fmt_bytes(p.memory)}, {_fmt_ms(p.latency)} ms"),
                   class_="fp", cx=x(p.memory / MIB), cy=y(p.latency), r=3.5) for p in front]
    if origin is not None:
        parts += _marker(origin, x, y, "orig", "original")
    for point in front:
        if point.chosen:
            parts += _marker(point, x, y, "chosen", "chosen")
    return _svg(height, "Estimated latency against memory: candidates and Pareto front", parts)


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
