"""Search strategies over genomes: greedy expert rules, regularized evolution, random.

Each strategy gets an `Evaluate` callable (genome -> Score or None when the candidate is
over the memory budget), the number of genes, a budget check and a seeded
`random.Random`; it proposes genomes until the budget runs out or it has nothing left to
try. The driver keeps every score, the best and the Pareto front, so a new strategy is one
function registered in STRATEGIES.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Callable, Protocol, Sequence

from rewriter.search.space import Genome, Score

Evaluate = Callable[[Genome], "Score | None"]


class Strategy(Protocol):
    def __call__(self, evaluate: Evaluate, genes: int, exhausted: Callable[[], bool],
                 rng: random.Random) -> None: ...


def climb(evaluate: Evaluate, start: Genome, indices: Sequence[int],
          exhausted: Callable[[], bool] = lambda: False, margin: float = 0.0) -> Genome:
    """From `start`, repeatedly switch on the gene of `indices` that lowers the estimated
    latency most (by more than `margin`; ties go to the lower index), until none does or
    the budget ends; the genome reached."""
    current = start
    best = evaluate(current)
    while not exhausted():
        moves = []
        for index in indices:
            if current[index] or exhausted():
                continue
            trial = current[:index] + (1,) + current[index + 1:]
            score = evaluate(trial)
            if score is not None and (best is None
                                      or score.latency_ms < best.latency_ms - margin):
                moves.append((score.latency_ms, index, trial, score))
        if not moves:
            break
        _, _, current, best = min(moves)
    return current


def greedy(evaluate: Evaluate, genes: int, exhausted: Callable[[], bool],
           rng: random.Random) -> None:
    """The expert rules: from no rewrite, repeatedly apply the one rewrite that lowers the
    estimated latency most, until none lowers it (or the budget ends)."""
    climb(evaluate, tuple([0] * genes), range(genes), exhausted)


def _random_genome(rng: random.Random, genes: int) -> Genome:
    """Each gene on with a probability drawn per genome."""
    p = rng.random()
    return tuple(int(rng.random() < p) for _ in range(genes))


def random_search(evaluate: Evaluate, genes: int, exhausted: Callable[[], bool],
                  rng: random.Random) -> None:
    """The baseline: random genomes (`_random_genome`)."""
    evaluate(tuple([0] * genes))
    while not exhausted():
        evaluate(_random_genome(rng, genes))


def evolution(evaluate: Evaluate, genes: int, exhausted: Callable[[], bool],
              rng: random.Random, population: int = 24, sample: int = 6) -> None:
    """Regularized (aging) evolution: tournament-select a parent from a sample of the
    population, mutate one or two genes, add the child, retire the oldest member."""
    members: deque[tuple[Genome, float]] = deque()

    def fitness(genome: Genome) -> float:
        score = evaluate(genome)
        return float("inf") if score is None else score.latency_ms

    seed = tuple([0] * genes)
    members.append((seed, fitness(seed)))
    while len(members) < population and not exhausted():
        genome = _random_genome(rng, genes)
        members.append((genome, fitness(genome)))
    while not exhausted() and genes:
        parent = min(rng.sample(list(members), min(sample, len(members))), key=lambda m: m[1])[0]
        child = list(parent)
        for index in rng.sample(range(genes), min(genes, rng.choice((1, 1, 2)))):
            child[index] ^= 1
        genome = tuple(child)
        members.append((genome, fitness(genome)))
        members.popleft()


STRATEGIES: dict[str, Strategy] = {"greedy": greedy, "evolution": evolution,
                                   "random": random_search}
