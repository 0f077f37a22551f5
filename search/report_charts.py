"""The report's charts, drawn with matplotlib as inline SVG (internals of
`rewriter.search.report`): per-layer latency bars, the search trace, and the Pareto front
of latency against memory. Deterministic (fixed hash salt, no dates) and self-contained
(no external references); matplotlib is imported only when a chart is drawn."""

from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from rewriter.search.report_document import MIB, _esc, _fmt_bytes, _fmt_count, _fmt_ms, _truncate

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass(frozen=True)
class _Layer:
    name: str
    before: float
    after: float

    @property
    def peak(self) -> float:
        return max(self.before, self.after)


@dataclass(frozen=True)
class _Point:
    memory: float    # bytes
    latency: float   # ms
    chosen: bool = False


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
