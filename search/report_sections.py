"""The report's sections, built from the driver's JSON-like dict (internals of
`rewriter.search.report`): summary, before/after, fidelity, kept rewrites, per-layer
latency, search trace and Pareto front, each as facts, tables, charts and lines."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

from rewriter.search.report_charts import _Layer, _Point, _svg_layers, _svg_pareto, _svg_trace
from rewriter.search.report_document import (
    NA,
    Block,
    Cell,
    Chart,
    Facts,
    Lines,
    Section,
    Table,
    _change_cell,
    _change_pct,
    _code,
    _fmt_bytes,
    _fmt_count,
    _fmt_duration,
    _fmt_ms,
    _fmt_pct,
    _fmt_value,
    _items,
    _memory,
    _n,
    _num,
    _plural,
    _sample_evenly,
    _tone,
)

MAX_LAYERS = 40            # rows of the per-layer chart and table
MAX_CANDIDATES = 2000      # grey points of the Pareto chart
MAX_TRACE_ROWS = 10        # rows of the trace table
REQUIRED = ("model", "target", "strategy", "seed", "exact", "candidates_evaluated",
            "elapsed_s", "before", "after", "rewrites")
REQUIRED_COST = ("latency_ms", "param_bytes", "peak_activation_bytes")


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
