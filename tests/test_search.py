"""Search: exact simulation of candidates, strategies, budget, pruning, verified output."""

from __future__ import annotations

import json
import random

import pytest

from rewriter import zoo
from rewriter.cli import main
from rewriter.cost.estimate import Target
from rewriter.errors import BadInputError, BudgetError
from rewriter.graph_io import load_model
from rewriter.samples import text_image
from rewriter.search import Budget, optimize
from rewriter.search.space import SearchSpace
from tests.helpers import load

SMALL = dict(width=0.5, resolution=96)


@pytest.fixture(scope="module")
def npu32():
    return Target.load("npu-p32")


@pytest.mark.parametrize("name, target", [("mobilenetv2", "npu-p32"), ("lraspp", "npu-p16"),
                                          ("ssdlite", "npu-p32"), ("mobilenetv3", "npu-p16")])
def test_simulated_score_equals_estimate_of_built_model(name, target):
    """The search scores candidates without building them; that must be exact."""
    t = Target.load(target)
    space = SearchSpace(load(zoo.build(name, **SMALL)), t)
    assert {g.pass_name for g in space.genes} >= {"align-channels-up", "dw-to-dense"}
    rng = random.Random(1)
    for _ in range(3):
        genome = tuple(rng.randint(0, 1) for _ in range(len(space)))
        score = space.score(genome)
        built = t.estimate(space.build(genome))
        assert score.latency_ms == pytest.approx(built.latency_ms, rel=1e-9)
        assert score.param_bytes == built.param_bytes
        assert score.peak_activation_bytes == built.peak_activation_bytes


@pytest.mark.parametrize("architecture", [False, True])
def test_a_score_does_not_depend_on_what_was_scored_before(architecture, npu32):
    """score caches kernel costs and peaks across genomes; scoring the same genomes in
    opposite orders on two spaces must give the same scores."""
    model = load(zoo.build("mobilenetv2", **SMALL))
    forward, backward = (SearchSpace(model, npu32, architecture=architecture) for _ in "ab")
    rng = random.Random(3)
    genomes = [tuple(int(rng.random() < p) for _ in range(len(forward)))
               for p in (rng.random() for _ in range(300))]
    scores = [forward.score(g) for g in genomes]
    assert [backward.score(g) for g in reversed(genomes)] == scores[::-1]
    assert len({s.peak_activation_bytes for s in scores}) > 1


@pytest.mark.parametrize("name", zoo.NAMES)
def test_exact_optimize_on_zoo_is_verified_and_never_slower(name, npu32):
    model = load(zoo.build(name, **SMALL))
    result = optimize(model, npu32)
    assert result.verification.passed
    assert result.after.latency_ms <= result.before.latency_ms + 1e-12
    for decision in result.decisions:
        assert decision.gain_ms > 0, decision


def test_optimize_lowers_latency_where_the_target_rewards_it(npu32):
    """MobileNetV2 1.0 at 224 on npu-p32: its 32-channel depthwise conv at 112x112 is
    slower than the exact dense replacement, so exact mode must find a gain."""
    model = load(zoo.build("mobilenetv2", width=1.0, resolution=224))
    result = optimize(model, npu32)
    assert result.after.latency_ms < 0.97 * result.before.latency_ms
    assert any(d.pass_name == "dw-to-dense" and d.site == "features.1.dw.conv"
               for d in result.decisions)


@pytest.mark.parametrize("key, shape", [("cls", (1, 3, 48, 192)), ("det", (1, 3, 64, 96))])
def test_exact_optimize_on_real_models(real_models, key, shape, npu32):
    model = load_model(real_models[key], {"x": shape})
    inputs = {"x": text_image(*shape[2:], seed=2)} if key == "det" else None
    result = optimize(model, npu32, inputs=inputs)
    assert result.verification.passed
    assert result.after.latency_ms <= result.before.latency_ms + 1e-12


def test_memory_budget_is_respected(npu32):
    model = load(zoo.build("mobilenetv2", width=1.0, resolution=224))
    free = optimize(model, npu32)
    limit = free.after.param_bytes - 1  # the unconstrained choice no longer fits
    constrained = optimize(model, npu32, max_param_bytes=limit)
    assert constrained.after.param_bytes <= limit
    assert constrained.verification.passed
    with pytest.raises(BudgetError, match="parameters .* exceed the budget"):
        optimize(model, npu32, max_param_bytes=1024)
    with pytest.raises(BudgetError, match="peak activations"):
        optimize(model, npu32, max_activation_bytes=1024)


def test_strategies_are_reproducible_and_evolution_beats_random(npu32):
    model = load(zoo.build("ssdlite", width=0.5, resolution=128))
    runs = {}
    for strategy in ("evolution", "random"):
        latencies = []
        for seed in (0, 1, 2):
            a = optimize(model, npu32, strategy=strategy, seed=seed, budget=Budget(candidates=150))
            b = optimize(model, npu32, strategy=strategy, seed=seed, budget=Budget(candidates=150))
            assert a.after.latency_ms == b.after.latency_ms
            assert [d.site for d in a.decisions] == [d.site for d in b.decisions]
            latencies.append(a.after.latency_ms)
        runs[strategy] = sum(latencies) / len(latencies)
    assert runs["evolution"] <= runs["random"]


def test_bad_arguments(npu32):
    model = load(zoo.build("mobilenetv2", **SMALL))
    with pytest.raises(BadInputError, match="unknown strategy"):
        optimize(model, npu32, strategy="annealing")
    with pytest.raises(BadInputError, match="min-fidelity"):
        optimize(model, npu32, exact=False, min_fidelity=1.5)
    for text in ("0", "-5", "abc", "5m"):
        with pytest.raises(BadInputError):
            Budget.parse(text)
    assert Budget.parse("250") == Budget(candidates=250)
    assert Budget.parse("1.5s") == Budget(seconds=1.5)


def test_cli_optimize_json_and_exit_codes(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    main(["zoo", "mobilenetv2", "--width", "1.0", "--resolution", "224", "-o", str(path)])
    capsys.readouterr()
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(path), "--target", "npu-p32", "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for side in ("before", "after"):
        assert {"latency_ms", "param_bytes", "peak_activation_bytes"} <= set(data[side])
    assert data["after"]["latency_ms"] < data["before"]["latency_ms"]
    assert data["rewrites"] and {"pass", "site", "gain_ms"} <= set(data["rewrites"][0])
    assert out.exists()
    report = tmp_path / "report"
    assert main(["optimize", str(path), "--target", "npu-p32", "-o", str(out), "--report",
                 str(report)]) == 0
    text = capsys.readouterr().out
    html, md = tmp_path / "report.html", tmp_path / "report.md"
    assert f"wrote {out}, {html}, {md}" in text
    assert "<svg" in html.read_text() and "features.1.dw.conv" in md.read_text()
    bad = tmp_path / "bad.onnx"
    assert main(["optimize", str(path), "--target", "npu-p32", "-o", str(bad),
                 "--max-activations", "64K"]) == 3
    assert "peak activations" in capsys.readouterr().err and not bad.exists()
    assert main(["optimize", str(path), "--target", "npu-p32", "-o", str(bad),
                 "--allow-architecture-changes", "--min-fidelity", "2"]) == 2
    assert main(["optimize", str(path), "--target", "npu-p32", "-o", str(bad),
                 "--budget", "soon"]) == 2


def test_python_api_from_a_path(tmp_path):
    import onnx

    import rewriter

    path = tmp_path / "m.onnx"
    onnx.save(zoo.build("mobilenetv2", width=1.0, resolution=224), path)
    result = rewriter.optimize(path, target="npu-p32", strategy="evolution",
                               budget=Budget(candidates=200), seed=3)
    assert isinstance(result, rewriter.Result)
    assert result.after.latency_ms < result.before.latency_ms
    data = result.to_dict()
    assert data["rewrites"] == [d.to_dict() for d in result.decisions]
    assert result.trace and result.trace[-1][1] <= result.trace[0][1]
    assert any(chosen for _, _, chosen in result.pareto)
    meta = result.model.metadata["rewriter.optimize"]
    assert "target=npu-p32" in meta and "features.1.dw.conv" in meta
