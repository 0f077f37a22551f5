"""Every pass's declared effect equals what its rewrite builds, gene by gene.

The search scores a genome from the effects the passes declare (`Pass.effect`), never
building the graph. Here every gene of every zoo model and of two real models is switched on
alone, and the simulated score must equal the target's estimate of the model the real
passes build: latency (to 1e-9 relative: the sums run in different orders), parameter
bytes and peak activation bytes exactly. Architecture genes are checked in an architecture
space; exact genes in an exact space, and the architecture space must score them the same.
"""

from __future__ import annotations

import pytest

from rewriter import zoo
from rewriter.cost.estimate import Target
from rewriter.graph_io import Model, load_model
from rewriter.passes import SEARCH_PASSES
from rewriter.samples import SHAPES, rapidocr_models
from rewriter.search.space import Genome, SearchSpace
from tests.helpers import load

TARGETS = ("npu-p32", "edge-tpu-zz")
SMALL = dict(width=0.5, resolution=96)
ZOO = [(name, SMALL) for name in zoo.NAMES] + [
    ("mobilenetv2", dict(SMALL, static_padding=True))]


def _alone(space: SearchSpace, gene: int) -> Genome:
    genome = [0] * len(space)
    genome[gene] = 1
    return tuple(genome)


def _check(space: SearchSpace, target: Target, genes: list[int]) -> None:
    for gene in genes:
        genome = _alone(space, gene)
        assert space.active(genome) == [gene], space.genes[gene]
        score = space.score(genome)
        built = target.estimate(space.build(genome))
        where = f"{space.genes[gene].pass_name}@{space.genes[gene].site}"
        assert score.latency_ms == pytest.approx(built.latency_ms, rel=1e-9), where
        assert score.param_bytes == built.param_bytes, where
        assert score.peak_activation_bytes == built.peak_activation_bytes, where


def _check_model(model: Model, target_name: str) -> set[str]:
    """Check every gene of `model` alone in both modes; the passes that had genes."""
    target = Target.load(target_name)
    exact = SearchSpace(model, target)
    _check(exact, target, list(range(len(exact))))
    architecture = SearchSpace(model, target, architecture=True)
    _check(architecture, target,
           [i for i, gene in enumerate(architecture.genes) if not gene.exact])
    # The exact genes are the same in both spaces and score the same alone.
    same = {(g.pass_name, g.site): i for i, g in enumerate(architecture.genes) if g.exact}
    assert list(same) == [(g.pass_name, g.site) for g in exact.genes]
    for i, key in enumerate(same):
        assert architecture.score(_alone(architecture, same[key])) == exact.score(
            _alone(exact, i)), key
    return {gene.pass_name for gene in architecture.genes}


@pytest.fixture(scope="module")
def zoo_models() -> dict[int, Model]:
    return {i: load(zoo.build(name, **kwargs)) for i, (name, kwargs) in enumerate(ZOO)}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(ZOO)),
                         ids=[f"{name}{'-static' if 'static_padding' in kw else ''}"
                              for name, kw in ZOO])
def test_every_zoo_gene_alone_scores_as_built(zoo_models, case, target):
    _check_model(zoo_models[case], target)


def test_the_zoo_exercises_every_search_pass(zoo_models):
    """So the check above covers each pass's effect (a new pass needs a model with sites)."""
    seen: set[str] = set()
    for model in zoo_models.values():
        space = SearchSpace(model, Target.load("npu-p32"), architecture=True)
        seen.update(gene.pass_name for gene in space.genes)
    assert seen == {cls.name for cls in SEARCH_PASSES}


@pytest.mark.integration
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("key", ["cls", "det"])
def test_every_real_model_gene_alone_scores_as_built(key, target):
    path = rapidocr_models(("cls", "det"))[key]
    _check_model(load_model(path, SHAPES[key]), target)


@pytest.mark.parametrize("case, target", [(0, "npu-p32"), (2, "edge-tpu-zz")])
def test_conflicting_pairs_settle_by_their_claims_and_score_as_built(zoo_models, case, target):
    """Two genes whose effects claim a common key: only the first in resolution order is
    effective, and the pair scores as the model the passes build from it."""
    t = Target.load(target)
    space = SearchSpace(zoo_models[case], t, architecture=True)
    position = {gene: k for k, gene in enumerate(space._resolution)}
    pairs = [(i, j) for i in range(len(space)) for j in range(i + 1, len(space))
             if space.effect(i).claims & space.effect(j).claims]
    assert pairs
    for i, j in pairs[::max(1, len(pairs) // 12)]:  # a dozen, every kind of conflict
        genome = [0] * len(space)
        genome[i] = genome[j] = 1
        first = min((i, j), key=position.__getitem__)
        assert space.active(tuple(genome)) == [first]
        score, built = space.score(tuple(genome)), t.estimate(space.build(tuple(genome)))
        assert score.latency_ms == pytest.approx(built.latency_ms, rel=1e-9)
        assert (score.param_bytes, score.peak_activation_bytes) == (
            built.param_bytes, built.peak_activation_bytes)
