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

This module renders and writes; `report_sections` builds the sections from the dict,
`report_document` holds the document model and formatting, `report_charts` the charts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from rewriter.search.report_document import Block, Cell, Chart, Facts, Section, Table, _esc
from rewriter.search.report_sections import _sections

__all__ = ["render_html", "render_markdown", "report_paths", "write_report"]

TITLE = "rewriter optimize report"


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
