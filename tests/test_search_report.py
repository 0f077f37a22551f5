"""The optimize report: HTML and Markdown rendering, degenerate inputs, atomic writing."""

from __future__ import annotations

import copy
import math
import random
import re
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import pytest

from rewriter.search.report import render_html, render_markdown, write_report

MODEL = 'models/a<b>&"c".onnx'
NESTED = {"svg", "g", "text", "table", "thead", "tbody", "tr", "div", "section", "figure",
          "details", "main", "body", "html", "dl"}


def make_data(layers: int = 30, trace: int = 50, front: int = 5, candidates: int = 500) -> dict:
    rng = random.Random(0)
    layer_rows = [{"name": f"/backbone/features.{i}/conv/Conv_{i}",
                   "before_ms": rng.uniform(0.01, 0.4), "after_ms": rng.uniform(0.01, 0.4)}
                  for i in range(layers)]
    if layers >= 3:
        layer_rows[1]["after_ms"] = 0.0      # fused away
        layer_rows[2]["before_ms"] = 0.0     # new
    best = 4.0
    trace_rows = []
    for i in range(1, trace + 1):
        best = min(best, best - rng.uniform(-0.05, 0.05))
        trace_rows.append({"evaluated": i * 40, "best_latency_ms": best})
    pareto = [{"latency_ms": 3.0 - 0.2 * i, "memory_bytes": (4 + i) * 2**20, "chosen": i == 2}
              for i in range(front)]
    return {
        "model": MODEL, "target": "npu-p32", "strategy": "evolution", "seed": 7, "exact": True,
        "candidates_evaluated": 2000, "elapsed_s": 12.5,
        "before": {"latency_ms": 4.0, "param_bytes": 5 * 2**20, "peak_activation_bytes": 800_000},
        "after": {"latency_ms": 3.25, "param_bytes": 6 * 2**20, "peak_activation_bytes": 700_000},
        "rewrites": [
            {"pass": "fuse-pad", "site": "features.3", "description": "fold pad",
             "gain_ms": 0.05},
            {"pass": "dw-to-dense", "site": "features.1.dw", "description": "x < y & z",
             "gain_ms": 0.5},
            {"pass": "align-channels-up", "site": "features.2", "description": "pad C",
             "gain_ms": 0.2},
        ],
        "layers": layer_rows, "trace": trace_rows, "pareto": pareto,
        "candidates": [{"latency_ms": rng.uniform(2.0, 4.5),
                        "memory_bytes": rng.randint(4, 12) * 2**20} for _ in range(candidates)],
        "verification": {"passed": True, "max_relative_error": 1.2e-6,
                         "summary": "3 inputs matched"},
        "budget": {"max_param_bytes": 8 * 2**20, "max_activation_bytes": None},
        "notes": ["cost model: analytic"],
    }


class TagChecker(HTMLParser):
    """Checks that container tags open and close in a proper nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.counts: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag in NESTED:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in NESTED:
            assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
            self.stack.pop()


def check_tags(page: str) -> dict[str, int]:
    checker = TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [], f"unclosed: {checker.stack}"
    return checker.counts


def chart(page: str, name: str) -> str:
    """The inline <svg> with id "chart-<name>" (the whole element)."""
    match = re.search(rf'<svg [^>]*id="chart-{name}".*?</svg>', page, re.S)
    assert match, f"no {name} chart"
    return match[0]


def chart_names(page: str) -> list[str]:
    return re.findall(r'<svg [^>]*id="chart-([\w-]+)"', page)


def group(svg: str, gid: str) -> str:
    """The content of `<g id="gid">`, nested groups included."""
    start = svg.index(f'<g id="{gid}">') + len(f'<g id="{gid}">')
    depth = 1
    for tag in re.finditer(r"<g\b[^>]*?(/?)>|</g>", svg[start:]):
        if tag[0] == "</g>":
            depth -= 1
        elif not tag[1]:
            depth += 1
        if depth == 0:
            return svg[start:start + tag.start()]
    raise AssertionError(f"<g id={gid!r}> is not closed")


def bar_width(svg: str, gid: str) -> float:
    """The horizontal extent of the path drawn in `<g id="gid">`."""
    xs = [float(x) for x in re.findall(r"[ML] (-?[\d.]+) ", group(svg, gid))]
    return max(xs) - min(xs)


def test_html_is_self_contained_escaped_and_balanced():
    page = render_html(make_data())
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page and "<style>" in page
    assert "models/a&lt;b&gt;&amp;&quot;c&quot;.onnx" in page
    assert "a<b>" not in page and "x < y" not in page
    assert page.count("<svg") == 3 and chart_names(page) == ["layers", "trace", "pareto"]
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page and "xlink" not in page
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert not re.search(r"url\((?!#)", page) and "@import" not in page
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "ids repeat across the inline charts"
    references = re.findall(r'url\(#([^)]+)\)', page) + re.findall(r'href="#([^"]+)"', page)
    assert references and set(references) <= set(ids)
    counts = check_tags(page)
    assert counts["svg"] == 3
    assert not re.search(r'="[^"]*(?:nan|inf)', page)


def test_html_is_deterministic_and_thread_safe():
    data = make_data(layers=5, trace=5, front=3, candidates=20)
    first = render_html(copy.deepcopy(data))
    assert render_html(copy.deepcopy(data)) == first
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: render_html(copy.deepcopy(data)), range(4))) == {first}
    data["layers"][0]["after_ms"] = 5.0
    assert chart(render_html(data), "layers") != chart(first, "layers")


def test_markdown_has_before_after_table_and_rewrites_by_gain():
    text = render_markdown(make_data())
    assert text.startswith("# rewriter optimize report\n")
    assert "<svg" not in text and "<path" not in text and "chart-" not in text
    assert "| Metric | Before | After | Change |" in text
    assert "| Estimated latency (ms) | 4.0000 | 3.2500 | -18.8% |" in text
    assert "| Parameters | 5.00 MiB | 6.00 MiB | +20.0% |" in text
    assert "`models/a<b>&\"c\".onnx`" in text
    assert "architecture changes allowed" not in text and "exact" in text
    order = [text.index(f"`{name}`") for name in ("dw-to-dense", "align-channels-up", "fuse-pad")]
    assert order == sorted(order)
    assert "| 0.5000 | 12.5% |" in text
    assert "passed — max relative error 1.2e-06 — 3 inputs matched" in text
    assert "parameters ≤ 8.00 MiB" in text
    assert "cost model: analytic" in text
    trace_rows = text.split("## Search trace")[1].split("##")[0]
    assert len(re.findall(r"^\| [\d,]+ \|", trace_rows, re.M)) == 10
    pareto_rows = text.split("## Pareto")[1]
    assert len(re.findall(r"^\| \d \|", pareto_rows, re.M)) == 5 and "chosen" in pareto_rows
    assert "removed" in text and "new" in text


def test_markdown_table_cells_cannot_break_the_table():
    data = make_data(layers=3)
    data["layers"][0]["name"] = "a|b`c\nd"
    data["rewrites"][0]["description"] = "pipes | and *stars*"
    text = render_markdown(data)
    assert "a\\|b`c d" in text and "pipes \\| and \\*stars\\*" in text
    for table in re.findall(r"(?:^\|.*\n)+", text, re.M):
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in table.splitlines()}
        assert len(widths) == 1, table


def test_layers_are_limited_to_the_slowest_40():
    data = make_data(layers=45)
    slowest = data["layers"][44]
    slowest.update(name="x" * 80, before_ms=9.0)
    page, text = render_html(data), render_markdown(data)
    assert "5 more layers left out" in page and "5 more layers left out" in text
    svg = chart(page, "layers")
    for side in ("before", "after"):
        bars = re.findall(rf'<g id="bar-{side}-(\d+)">', svg)
        assert sorted(map(int, bars)) == list(range(40))
        assert all(group(svg, f"bar-{side}-{i}").count("<path") == 1 for i in bars)
    # bars are drawn to one scale: the slowest layer's two bars are in its latencies' ratio
    ratio = bar_width(svg, "bar-after-0") / bar_width(svg, "bar-before-0")
    assert ratio == pytest.approx(slowest["after_ms"] / 9.0, rel=1e-3)
    label = group(svg, "layer-label-0")
    assert f"<title>{'x' * 80}</title>" in label and f">{'x' * 9}…{'x' * 20}</text>" in label
    assert text.index("x" * 80) < text.index("/backbone/")   # slowest first


def test_hostile_layer_names_are_escaped_in_the_chart():
    data = make_data(layers=3)
    data["layers"][0].update(name='<i>&"$\\frac{$', before_ms=2.0)
    data["layers"][1].update(name="</title><script>alert(1)</script>", before_ms=1.0)
    page = render_html(data)
    svg = chart(page, "layers")
    check_tags(page)
    assert "<script" not in page and "<i>" not in page
    assert '>&lt;i&gt;&amp;"$\\frac{$</text>' in svg     # shown as typed, not as TeX
    assert "<title>&lt;i&gt;&amp;&quot;$\\frac{$</title>" in svg
    assert "<title>&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt;</title>" in svg


def test_trace_chart_marks_the_last_point_and_the_start():
    page = render_html(make_data(trace=50))
    svg = chart(page, "trace")
    best = make_data(trace=50)["trace"][-1]["best_latency_ms"]
    assert f"<title>2,000 evaluated: {best:.4f} ms</title>" in group(svg, "trace-last")
    assert "<title>before the search: 4.0000 ms</title>" in group(svg, "trace-before")
    assert "<path" in group(svg, "trace-best")


def test_candidates_are_subsampled_for_the_chart():
    page = render_html(make_data(candidates=5000))
    assert group(chart(page, "pareto"), "pareto-candidates").count("<use ") == 2000
    assert "2000 sampled for the chart" in page
    page = render_html(make_data(candidates=500))
    assert group(chart(page, "pareto"), "pareto-candidates").count("<use ") == 500


def test_pareto_chart_marks_the_front_the_chosen_and_the_original():
    data = make_data(front=5)
    svg = chart(render_html(data), "pareto")
    assert group(svg, "pareto-front").count("<use ") == 5
    assert "<title>chosen: 6.00 MiB, 2.6000 ms</title>" in group(svg, "pareto-chosen")
    assert "<title>original: 5.76 MiB, 4.0000 ms</title>" in group(svg, "pareto-original")
    for point in data["pareto"]:
        point["chosen"] = False
    svg = chart(render_html(data), "pareto")
    assert 'id="pareto-chosen"' not in svg and ">chosen</text>" not in svg


def degenerate_cases() -> dict[str, dict]:
    base = make_data(layers=4, trace=3, front=2, candidates=5)
    flat = {"latency_ms": 4.0, "memory_bytes": 10}
    return {
        "no trace": {k: v for k, v in base.items() if k != "trace"},
        "single pareto point": {**base, "candidates": [],
                                "pareto": [{"latency_ms": 3.0, "memory_bytes": 0, "chosen": True}]},
        "all equal": {**base, "after": dict(base["before"]),
                      "layers": [{"name": f"l{i}", "before_ms": 1.0, "after_ms": 1.0}
                                 for i in range(4)],
                      "trace": [{"evaluated": 5, "best_latency_ms": 4.0}] * 3,
                      "pareto": [{**flat, "chosen": True}] * 2, "candidates": [flat] * 3},
        "empty rewrites": {**base, "rewrites": []},
        "zero latencies": {**base, "before": {**base["before"], "latency_ms": 0.0},
                           "after": {**base["after"], "latency_ms": 0.0},
                           "layers": [{"name": "a", "before_ms": 0, "after_ms": 0}],
                           "trace": [{"evaluated": 0, "best_latency_ms": 0.0}]},
        "extreme values": {**base,
                           "layers": [{"name": "t", "before_ms": 1e-300, "after_ms": 5e-324}],
                           "trace": [{"evaluated": 10**9, "best_latency_ms": 1e-300}],
                           "pareto": [{"latency_ms": 1e9, "memory_bytes": 2**60, "chosen": True},
                                      {"latency_ms": -1.0, "memory_bytes": -5}]},
        "only required": {k: base[k] for k in ("model", "target", "strategy", "seed", "exact",
                                               "candidates_evaluated", "elapsed_s", "before",
                                               "after", "rewrites")},
        "malformed optional": {**base, "layers": [{"name": None}, "junk", {"before_ms": "x"}],
                               "trace": [{"evaluated": None},
                                         {"evaluated": 1, "best_latency_ms": math.nan}],
                               "pareto": None, "candidates": "junk", "verification": {},
                               "budget": {}, "notes": "one line", "unknown": {"x": 1},
                               "fidelity": {"r2": 0.93, "rows": 120, "ops": ["conv"]},
                               "rewrites": [{"pass": "p"}, {"gain_ms": math.inf}, 3]},
    }


ALL_CHARTS = ["layers", "trace", "pareto"]
CHARTS = {"no trace": ["layers", "pareto"], "single pareto point": ALL_CHARTS,
          "all equal": ALL_CHARTS, "empty rewrites": ALL_CHARTS, "zero latencies": ALL_CHARTS,
          "extreme values": ALL_CHARTS, "only required": [], "malformed optional": ["layers"]}


@pytest.mark.parametrize("name", list(degenerate_cases()))
def test_degenerate_inputs_render(name):
    data = degenerate_cases()[name]
    page, text = render_html(data), render_markdown(data)
    check_tags(page)
    assert not re.search(r'="[^"]*(?:nan|inf)', page)
    assert "rewriter optimize report" in text
    assert page.count("<svg") == len(chart_names(page))
    assert chart_names(page) == CHARTS[name]
    if name == "no trace":
        assert "## Search trace" not in text
    if name == "empty rewrites":
        assert "no rewrite lowered the estimated latency" in page
        assert "no rewrite lowered the estimated latency" in text
    if name == "malformed optional":
        assert "| r2 | 0.93 |" in text and "one line" in page


@pytest.mark.parametrize("key", ["model", "exact", "rewrites", "elapsed_s", "before.latency_ms",
                                 "after.peak_activation_bytes"])
def test_missing_required_key_is_a_value_error_naming_it(key, tmp_path):
    data = copy.deepcopy(make_data(layers=2, trace=2, front=1, candidates=2))
    parent, _, child = key.rpartition(".")
    del (data[parent] if parent else data)[child]
    for call in (render_html, render_markdown, lambda d: write_report(d, tmp_path / "r")):
        with pytest.raises(ValueError, match=re.escape(key)) as error:
            call(data)
        assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_write_report_formats_by_suffix_atomically(tmp_path):
    data = make_data(layers=3, trace=3, front=2, candidates=10)
    written = write_report(data, tmp_path / "out" / "report")
    assert written == [tmp_path / "out" / "report.html", tmp_path / "out" / "report.md"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.md"]
    assert written[0].read_text(encoding="utf-8") == render_html(data)
    assert written[1].read_text(encoding="utf-8") == render_markdown(data)
    assert write_report(data, tmp_path / "r.HTML") == [tmp_path / "r.HTML"]
    assert write_report(data, str(tmp_path / "r.md")) == [tmp_path / "r.md"]
    assert write_report(data, tmp_path / "r.md") == [tmp_path / "r.md"]       # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.HTML", "r.md"]
    assert (tmp_path / "r.md").read_text(encoding="utf-8").startswith("# rewriter optimize report")
