"""The optimize driver: search the space, keep only rewrites that pay, build, verify.

1. Build the search space on the model's canonical form (BN folded) for the target.
2. Run a strategy; every candidate is scored by the kernel-level simulation (latency,
   parameter bytes, peak activations) and rejected when over the memory budget.
3. Take the best feasible candidate, then drop every rewrite whose removal does not raise
   the estimated latency, so each rewrite kept has a positive gain.
4. With architecture changes allowed, hold the candidate to the fidelity floor after
   recovery (`_RecoveryStage`): fidelity cannot be simulated, so changes are ranked on
   built, refitted models (`_FidelityGuard`, on the val sources), then added in chunks
   onto the model recovered so far (distillation or refit), each stage judged on eval
   sources never used for fitting, one standard error down; none holds: exact rewrites
   only.
5. Build it with the real passes, verify the exact rewrites in onnxruntime (against the
   original, or against the recovered architecture when it changed), and estimate the
   built model for the report.
No feasible candidate is a `BudgetError` (exit code 3) naming the binding constraint.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rewriter.analysis.memory import MemoryStats
from rewriter.changes import METADATA_KEY
from rewriter.cost.estimate import ModelEstimate, Target
from rewriter.cost.memory import Violation, check_budget
from rewriter.data import Preprocess
from rewriter.errors import BadInputError, BudgetError, VerificationError
from rewriter.fidelity import FIDELITY_METRICS, Fidelity, measure_fidelity, uncertainty_warning
from rewriter.graph_io import Model, load_model
from rewriter.recovery import (
    BATCH,
    RecoveryBudget,
    check_augmentation,
    label_recovered,
    lower_bound,
    meets,
    prepare_data,
    refit_and_train,
    resolve_method,
    supportable_floor,
)
from rewriter.search.space import DEFAULT_MULTIPLIERS, Genome, Score, SearchSpace
from rewriter.search.strategies import STRATEGIES, climb
from rewriter.staged import Batches, collect
from rewriter.verify import VerificationReport, verify

DEFAULT_CANDIDATES = {"greedy": 20_000, "evolution": 2_000, "random": 2_000}
DEFAULT_MIN_FIDELITY = 0.99
# An architecture change must lower the estimated latency of the exact result it is added
# to by at least this share, or it is not tried: a smaller gain does not pay for any
# fidelity it costs, and is within the estimators' error on a gain (1-4 points on whole
# models simulated in ZigZag, benchmarks/README.md, zigzag_accuracy.py).
MIN_ARCHITECTURE_GAIN = 0.01


@dataclass(frozen=True)
class Budget:
    candidates: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Budget":
        """'500' candidates or '30s' seconds."""
        if text is None:
            return cls()
        raw = text.strip().lower()
        try:
            if raw.endswith("s"):
                value = float(raw[:-1])
                if value > 0:
                    return cls(seconds=value)
            else:
                value = int(raw)
                if value > 0:
                    return cls(candidates=value)
        except ValueError:
            pass
        raise BadInputError(f"bad --budget {text!r}: a number of candidates (500) or seconds (30s)")


@dataclass(frozen=True)
class Decision:
    pass_name: str
    site: str
    description: str
    gain_ms: float
    exact: bool = True

    def to_dict(self) -> dict[str, object]:
        return {"pass": self.pass_name, "site": self.site, "description": self.description,
                "gain_ms": self.gain_ms, "exact": self.exact}


@dataclass
class Result:
    model: Model
    target: str
    strategy: str
    seed: int
    decisions: list[Decision]
    before: ModelEstimate
    after: ModelEstimate
    verification: VerificationReport
    evaluated: int
    elapsed_s: float
    trace: list[tuple[int, float]] = field(default_factory=list)
    pareto: list[tuple[float, int, bool]] = field(default_factory=list)
    points: list[tuple[float, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exact: bool = True
    fidelity: Fidelity | None = None
    min_fidelity: float | None = None
    warnings: list[str] = field(default_factory=list)
    fidelity_metric: str | None = None

    def to_dict(self) -> dict[str, object]:
        def summary(e: ModelEstimate) -> dict[str, object]:
            return {"latency_ms": e.latency_ms, "param_bytes": e.param_bytes,
                    "peak_activation_bytes": e.peak_activation_bytes}

        return {"target": self.target, "strategy": self.strategy, "seed": self.seed,
                "exact": self.exact, "before": summary(self.before),
                "after": summary(self.after), "rewrites": [d.to_dict() for d in self.decisions],
                "candidates_evaluated": self.evaluated, "elapsed_s": self.elapsed_s,
                "verification": self.verification.to_dict(),
                "fidelity": None if self.fidelity is None else {
                    "min_fidelity": self.min_fidelity,
                    **self.fidelity.to_dict(self.fidelity_metric)},
                "warnings": self.warnings, "notes": self.notes}

    def report_data(self, model_name: str, budget: Mapping[str, int | None]) -> dict[str, object]:
        before = {o.name: o.latency_ms for o in self.before.ops}
        after = {o.name: o.latency_ms for o in self.after.ops}
        layers = [{"name": n, "before_ms": before.get(n, 0.0), "after_ms": after.get(n, 0.0)}
                  for n in dict.fromkeys([*before, *after])]
        data = self.to_dict()
        data.update(
            model=model_name, layers=layers, budget=dict(budget),
            trace=[{"evaluated": e, "best_latency_ms": b} for e, b in self.trace],
            pareto=[{"latency_ms": t, "memory_bytes": m, "chosen": c} for t, m, c in self.pareto],
            candidates=[{"latency_ms": t, "memory_bytes": m} for t, m in self.points],
            verification={"passed": self.verification.passed,
                          "max_relative_error": self.verification.max_relative_error,
                          "summary": self._verification_detail()})
        return data


    def _verification_detail(self) -> str:
        report = self.verification
        if report.refused:
            return f"refused: {report.refused}"
        inputs = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in report.inputs.items())
        how = "" if report.mode == "float32" else f", judged in {report.mode}"
        return (f"onnxruntime, all {len(report.outputs)} outputs within {report.bound:.0e} "
                f"of their scale on inputs {inputs}{how}" if report.passed
                else report.summary())


class _Evaluator:
    def __init__(self, space: SearchSpace, limits: tuple[int | None, int | None],
                 budget: Budget, progress: bool) -> None:
        self.space = space
        self.limits = limits
        self.budget = budget
        self.scores: dict[Genome, Score] = {}
        self.best: tuple[Genome, Score] | None = None
        self.trace: list[tuple[int, float]] = []
        self.start = time.perf_counter()
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=budget.candidates, desc="searching", unit="cand", leave=False)

    def feasible(self, score: Score) -> bool:
        max_params, max_acts = self.limits
        return not ((max_params is not None and score.param_bytes > max_params)
                    or (max_acts is not None and score.peak_activation_bytes > max_acts))

    def score(self, genome: Genome) -> Score:
        hit = self.scores.get(genome)
        if hit is None:
            hit = self.scores[genome] = self.space.score(genome)
            if self.bar is not None:
                self.bar.update(1)
            if self.feasible(hit) and (self.best is None or
                                       (hit.latency_ms, hit.memory_bytes) <
                                       (self.best[1].latency_ms, self.best[1].memory_bytes)):
                self.best = (genome, hit)
                self.trace.append((len(self.scores), hit.latency_ms))
        return hit

    def __call__(self, genome: Genome) -> Score | None:
        score = self.score(genome)
        return score if self.feasible(score) else None

    def exhausted(self) -> bool:
        if self.budget.candidates is not None and len(self.scores) >= self.budget.candidates:
            return True
        return (self.budget.seconds is not None
                and time.perf_counter() - self.start >= self.budget.seconds)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _prune(evaluator: _Evaluator, genome: Genome, exact_only: bool = False) -> Genome:
    """Drop rewrites (exact ones only, if asked) whose removal does not raise the
    estimated latency."""
    changed = True
    while changed:
        changed = False
        current = evaluator.score(genome)
        for index in evaluator.space.active(genome):
            if exact_only and not evaluator.space.genes[index].exact:
                continue
            trial = genome[:index] + (0,) + genome[index + 1:]
            score = evaluator(trial)
            if score is not None and score.latency_ms <= current.latency_ms + 1e-12:
                genome, changed = trial, True
                break
    return genome


def _pareto(scores: Mapping[Genome, Score], feasible, chosen: Genome
            ) -> list[tuple[float, int, bool]]:
    # among genomes scoring the same (genes overridden by others change nothing), the
    # chosen one stands for them on the front
    points = sorted(((s.latency_ms, s.memory_bytes, g == chosen)
                     for g, s in scores.items() if feasible(s)),
                    key=lambda p: (p[0], p[1], not p[2]))
    front, best_memory = [], None
    for latency, memory, is_chosen in points:
        if best_memory is None or memory < best_memory:
            front.append((latency, memory, is_chosen))
            best_memory = memory
    return front


def _no_candidate(evaluator: _Evaluator) -> BudgetError:
    def violation(score: Score) -> Violation:
        stats = MemoryStats(0, score.param_bytes, score.peak_activation_bytes, "")
        return check_budget(stats, *evaluator.limits).binding

    binding = min(map(violation, evaluator.scores.values()), key=lambda v: v.over_by / v.limit)
    return BudgetError(f"no candidate meets the memory budget: even the closest, "
                       f"{binding.describe()} (exact rewrites cannot shrink this model further)")


class _FidelityGuard:
    """Keep the architecture changes that buy the most latency per unit of fidelity lost,
    while the refitted model's fidelity stays at or above the floor.

    Fidelity is measured, never simulated: each measurement builds the architecture
    changes, refits their weights on the fitting inputs and compares every output with the
    original's on the held-out inputs (cached per set of changes that take effect; the
    refitted models that can be the choice are kept for the driver to write: the last one
    built that passes, and the best-ranked single change's). If the search's choice
    misses the floor: measure each change alone (its sensitivity), rank the changes that
    pass alone by latency gain / (1 - cosine), and keep the longest prefix of that ranking
    that passes (binary search, assuming fidelity falls as changes are added; the prefix
    kept is measured, so the floor holds whether or not it does).
    """

    def __init__(self, space: SearchSpace, evaluator: _Evaluator, fit: Batches, held: Batches,
                 floor: float, metric: str | None = None) -> None:
        self.space, self.evaluator = space, evaluator
        self.fit, self.held, self.floor, self.metric = fit, held, floor, metric
        self.cache: dict[frozenset[int], Fidelity] = {}  # effective changes -> fidelity
        self._last: tuple[frozenset[int], Model] | None = None  # the last passing build
        self._best_single: tuple[frozenset[int], Model] | None = None

    @cached_property
    def reference(self) -> dict[str, np.ndarray]:
        """The original's outputs on the held-out inputs, run once, when first needed."""
        return collect(self.space.canonical, self.held)

    def _with(self, base: Genome, genes: Sequence[int]) -> Genome:
        genome = list(base)
        for index in genes:
            genome[index] = 1
        return tuple(genome)

    def _key(self, genome: Genome) -> frozenset[int]:
        return frozenset(self.space.architecture_genes(genome))  # what the built model has

    def model(self, genome: Genome) -> Model:
        """The genome's architecture changes, built and refitted (once, if it is a model
        the guard kept)."""
        key = self._key(genome)
        for kept in (self._last, self._best_single):
            if kept is not None and kept[0] == key:
                return kept[1]
        return self.space.build_architecture(genome, self.fit)

    def measure(self, base: Genome, genes: Sequence[int]) -> Fidelity:
        genome = self._with(base, genes)
        key = self._key(genome)
        if key not in self.cache:
            model = self.space.build_architecture(genome, self.fit)
            self.cache[key] = measure_fidelity(self.space.canonical, model, self.held,
                                               self.reference)
            if self.cache[key].value(self.metric) >= self.floor:
                self._last = (key, model)
        return self.cache[key]

    def passes(self, base: Genome, genes: Sequence[int]) -> bool:
        return (self.evaluator(self._with(base, genes)) is not None
                and self.measure(base, genes).value(self.metric) >= self.floor)

    def gain(self, base: Genome, index: int) -> float:
        """The share of `base`'s estimated latency that architecture change `index` saves
        alone on top of it."""
        base_ms = self.evaluator.score(base).latency_ms
        return 1.0 - self.evaluator.score(self._with(base, [index])).latency_ms / base_ms

    def ranking(self, genome: Genome) -> list[int]:
        """The genome's architecture changes (and every depth multiplier) that lower the
        latency by at least MIN_ARCHITECTURE_GAIN and pass the floor alone, best latency
        gain per unit of cosine lost first."""
        space = self.space
        base = space.exact_part(genome)
        candidates = set(space.architecture_genes(genome)) | {
            i for i, g in enumerate(space.genes) if g.pass_name == "depth-multiplier"}
        ranked = []
        for index in sorted(candidates):
            gain = self.gain(base, index)
            if gain >= MIN_ARCHITECTURE_GAIN and self.passes(base, [index]):
                loss = 1.0 - self.measure(base, [index]).min_cosine
                ranked.append((-gain / max(loss, 1e-9), index))
                # A search over prefixes may end at the best single change, measured
                # here: keep its model (the last one built, when it was just measured).
                key = self._key(self._with(base, [index]))
                if (min(ranked) == ranked[-1] and self._last is not None
                        and self._last[0] == key):
                    self._best_single = self._last
        return [index for _, index in sorted(ranked)]

    def choose(self, genome: Genome) -> Genome:
        """The genome with its architecture changes cut back to the longest prefix of
        their ranking that passes the floor (binary search, assuming fidelity falls as
        changes are added; the prefix kept is measured, so the floor holds either way)."""
        base = self.space.exact_part(genome)
        chosen = self.space.architecture_genes(genome)
        if not chosen or self.passes(base, chosen):
            return genome
        order = self.ranking(genome)
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.passes(base, order[:mid]):
                lo = mid
            else:
                hi = mid - 1
        return self._with(base, order[:lo])


class _RecoveryStage:
    """Choose the architecture changes to keep by their fidelity after recovery.

    Fidelity after distillation cannot be simulated and costs minutes per candidate, so:
    1. rank cheaply: the guard refits each change alone and measures it on the val
       sources; changes that pass a loose proxy floor (distillation recovers much of what
       a refit loses) are ranked by latency gain per unit of fidelity lost, and those
       that lose alone more than distillation is likely to win back (twice the floor's
       slack: it has won back about half) move behind the others, never in one chunk
       with them;
    2. add the ranked changes progressively, onto the model recovered so far (as
       iterative pruning schedules do): each stage applies the next chunk of changes to
       the last model kept, refits only the new weights, distills for a share of the
       budget (about 1/STAGES) and keeps the result when its fidelity on the eval
       sources (never fitted, trained or used for early stopping), one standard error
       down, meets the floor. A stage that measures at or above the floor but misses it
       one standard error down, and was still improving when its time ran out, trains on
       from where it stopped for one more share, and is judged again.
       A kept stage doubles the next chunk; a failed one is halved, keeping the changes
       that lost least alone, and starts again from the last model kept (so one
       damaging change, such as a depth multiplier with a large gain, does not sink every
       retry); a single change that fails is skipped,
       two in a row end the search. The first chunk is a quarter of the ranking. So every
       second of training goes into the model that is returned: the changes kept early
       are trained in every later stage, where a search over prefixes from scratch would
       train each candidate only once for a fraction of the budget.
    3. none is kept: keep the exact rewrites only, and say why (too few held-out samples
       to support the floor at all, or the changes lose too much).
    With refit only, the guard's choice at the floor is the one candidate.
    """

    PROXY_SLACK = 6.0  # the ranking's proxy floor: floor - PROXY_SLACK * (1 - floor)
    RECOVERED_SHARE = 0.5  # of a refit's fidelity loss that distillation wins back, about

    def __init__(self, space: SearchSpace, evaluator: _Evaluator, calibration: object,
                 eval_data: object, preprocess: Preprocess | None, seed: int, floor: float,
                 metric: str | None, method: str | None, budget: RecoveryBudget,
                 progress: bool, augment: str = "auto") -> None:
        self.space, self.evaluator, self.seed, self.floor = space, evaluator, seed, floor
        self.metric, self.budget, self.progress = metric, budget, progress
        self.augment = augment
        self.data = prepare_data(space.canonical, calibration, eval_data, preprocess, seed)
        self.warnings = list(self.data.warnings)
        self.method = resolve_method(method, self.warnings)
        self.notes: list[str] = []
        screen = self.data.val if self.data.val is not None else self.data.fit
        if self.data.val is None:
            self.notes.append("too few calibration sources for a validation part: "
                              "candidates were screened on their fitting data")
        self.guard = _FidelityGuard(space, evaluator, self.data.fit.batches(BATCH),
                                    screen.batches(BATCH), floor, metric)
        self.reference: dict[str, np.ndarray] = {}
        self.tried: list[tuple[bool, str]] = []  # (kept, summary) per recovery
        self.kept: tuple[Genome, Model, Fidelity] | None = None
        self.missed: tuple[Model, Fidelity] | None = None  # the last recovery that missed
        self.start = 0.0

    def _complete(self, genome: Genome) -> Genome:
        """The exact rewrites worth having once the architecture changes are fixed."""
        exact_genes = [i for i, gene in enumerate(self.space.genes) if gene.exact]
        # the architecture changes are built (and recovered) already: only exact ones go
        return _prune(self.evaluator, climb(self.evaluator, genome, exact_genes,
                                            margin=1e-12), exact_only=True)

    def attempt(self, candidate: Genome, student: Model, budget: RecoveryBudget
                ) -> Model | None:
        """Recover `student` (`candidate`'s architecture changes, built); keep it if it
        holds the floor on eval and is faster than what is kept. The recovered model, or
        None when it misses the floor."""
        trained, after = refit_and_train(self.space.canonical, student, self.data,
                                         self.method, budget, self.seed, self.progress,
                                         self.reference, augment=self.augment)
        model = trained.model
        before = after.before_recovery
        genes = self.space.architecture_genes(candidate)
        ok = meets(after, self.floor, self.metric)
        self.tried.append((ok, f"{self._label(genes)}: {after.value(self.metric):.4f} "
                               f"(bound {lower_bound(after, self.metric):.4f}, "
                               f"{before.value(self.metric):.4f} before recovery, "
                               f"{'kept' if ok else 'missed'})"))
        if not ok:
            self.missed = (model, after) if trained.improving else None
            return None
        if self.kept is None or (self.evaluator.score(candidate).latency_ms
                                 < self.evaluator.score(self.kept[0]).latency_ms):
            model.metadata[METADATA_KEY] = label_recovered(
                model.changes.label() if model.changes.passes else self._label(genes),
                self.method, after, self.metric)
            self.kept = (candidate, model, after)
        return model

    def _worthwhile(self, genome: Genome) -> Genome:
        """`genome`'s architecture changes on the best exact rewrites without them (so a
        change is judged against what the exact path does with the same convs: a fusion
        of a depthwise conv against its regrouping, not against the plain depthwise conv),
        less the changes that alone save less than MIN_ARCHITECTURE_GAIN of that
        (noted)."""
        base = self._complete(self.space.exact_part(genome))
        changes = self.space.architecture_genes(genome)
        small = [i for i in changes if self.guard.gain(base, i) < MIN_ARCHITECTURE_GAIN]
        if small:
            self.notes.append(
                f"not tried: {len(small)} architecture changes that would each save less "
                f"than {MIN_ARCHITECTURE_GAIN:.0%} of the estimated latency over the exact "
                f"rewrites ({self._label(small)})")
        return self.guard._with(base, [i for i in changes if i not in small])

    def run(self, genome: Genome) -> tuple[Genome, Model | None, Fidelity | None]:
        canonical = self.space.canonical
        self.reference = collect(canonical, self.data.eval.batches(BATCH))
        self.start = time.perf_counter()
        genome = self._worthwhile(genome)
        if self.space.architecture_genes(genome):
            if self.method == "refit":
                chosen = self.guard.choose(genome)
                if chosen != genome:
                    self.notes.append(f"architecture changes cut back to hold fidelity >= "
                                      f"{self.floor} on the screening data")
                if self.space.architecture_genes(chosen) and self.evaluator(chosen):
                    self.attempt(self._complete(chosen), self.guard.model(chosen),
                                 self.budget)
            else:
                self._search(genome)
        self.notes.append(f"fidelity screened on {len(self.guard.cache)} refitted "
                          f"candidates; {len(self.tried)} recovered by {self.method}")
        exact = self._complete(self.space.exact_part(genome))
        if self.kept is not None and (self.evaluator.score(self.kept[0]).latency_ms
                                      >= self.evaluator.score(exact).latency_ms):
            kept = self._label(self.space.architecture_genes(self.kept[0]))
            self.notes.append(f"the architecture changes kept ({kept}) are no faster than "
                              "the exact rewrites alone: exact rewrites only")
            self.kept = None
        if self.kept is not None:
            candidate, model, after = self.kept
            chosen_metric = self.metric or after.default_metric()
            self.notes.append(
                f"kept {len(self.space.architecture_genes(candidate))} architecture changes: "
                f"{chosen_metric} fidelity {after.value(self.metric):.4f} (>= {self.floor} "
                f"one standard error down) on {after.samples} held-out samples")
            if len(self.tried) > 1:
                self.notes.append("recovered in stages: " + "; ".join(
                    summary for _, summary in self.tried))
            uncertain = uncertainty_warning(after, self.metric)
            if uncertain:
                self.warnings.append(uncertain)
            return candidate, model, after
        if self.tried:
            samples = len(self.data.eval)
            metric = self.metric or ("top1" if _classifier(self.reference) else "cosine")
            if supportable_floor(samples, metric) < self.floor:
                self.warnings.append(
                    f"too few held-out samples to support a change: {samples} samples bound "
                    f"{metric} fidelity one standard error down to at most "
                    f"{supportable_floor(samples, metric):.3f} < {self.floor}; give more "
                    "calibration data or --eval-data; kept exact rewrites only")
            tried = "; ".join(summary for _, summary in self.tried)
            self.notes.append(f"no architecture change met {metric} fidelity >= "
                              f"{self.floor} after recovery ({tried}): exact rewrites only")
        return exact, None, None

    STAGES = 5  # recoveries the budget is planned for (more when they end early)

    def _search(self, genome: Genome) -> None:
        """Add the ranked changes in growing chunks onto the last recovered model."""
        self.guard.floor = max(0.0, self.floor - self.PROXY_SLACK * (1.0 - self.floor))
        order = self.guard.ranking(genome)
        self.guard.floor = self.floor
        if not order:
            return
        base = self.space.exact_part(genome)
        order, hopeful = self._hopeful_first(base, order)
        accepted: list[int] = []
        current = self.space.canonical  # the last model kept: weights recovered so far
        position, chunk, failures = 0, max(1, len(order) // 4), 0
        while position < len(order) and chunk > 0:
            spent = time.perf_counter() - self.start
            left = (self.budget.seconds - spent) if self.budget.seconds is not None else None
            if left is not None and left < 0.25 * self.budget.seconds / self.STAGES:
                self.notes.append("recovery budget spent before every ranked change was "
                                  "tried")
                break
            step = self._chunk(order, position, chunk, hopeful)
            candidate = self.guard._with(base, accepted + step)
            if self.evaluator(candidate) is None:  # over a memory budget: try fewer
                chunk = len(step) // 2
                continue
            budget = (self.budget.split(self.STAGES) if left is None else RecoveryBudget(
                max(1.0, min(left, self.budget.seconds / self.STAGES))))
            try:
                model = self.space._apply(current, set(step), exact=False)
            except Exception as exc:  # a site the earlier changes made invalid
                self.notes.append(f"could not add {self._label(step)} to the recovered "
                                  f"model: {str(exc).splitlines()[0] if str(exc) else exc}")
                position += len(step)
                continue
            kept = self.attempt(self._complete(candidate), model, budget)
            more = self._train_on(budget) if kept is None else None
            if more is not None and self.missed is not None:
                # the measured fidelity meets the floor, only its bound misses, and the
                # student still improved when time ran out: the training, not the change,
                # may be what falls short; train on from where it stopped for one more share
                kept = self.attempt(self._complete(candidate), self.missed[0], more)
            if kept is not None:
                accepted += step
                current = kept
                position += len(step)
                chunk, failures = chunk * 2, 0
            elif len(step) > 1:
                # try the half that lost least alone (refitted, on the screening data)
                # first; the riskier changes wait behind it
                safest = sorted(step, key=lambda i: -self.guard.measure(base, [i]).value(
                    self.metric))
                order[position:position + len(step)] = safest
                chunk = len(step) // 2
            else:  # this change does not recover on top of the others: skip it
                position += 1
                failures += 1
                if failures >= 2:
                    break

    @staticmethod
    def _chunk(order: list[int], position: int, size: int, hopeful: int) -> list[int]:
        """The next `size` changes of `order` from `position`; a chunk of the first
        `hopeful` (likely to hold the floor) never takes unlikely ones along."""
        end = position + size
        return order[position:min(end, hopeful) if position < hopeful else end]

    def _hopeful_first(self, base: Genome, order: list[int]) -> tuple[list[int], int]:
        """`order` with the changes that may hold the floor after recovery first, and how
        many those are.

        Distillation has won back about half of what a refit lost (PP-OCR's classifier,
        8 fused IBNs: top-1 0.960 refitted -> 0.981, benchmarks/README.md): a change that
        alone, refitted, loses more than (1 - floor) / (1 - RECOVERED_SHARE) is unlikely
        to hold the floor after recovery, and would sink the chunk it shares. Such
        changes keep their order among themselves, behind the others."""
        likely = 1.0 - (1.0 - self.floor) / (1.0 - self.RECOVERED_SHARE)
        hopeful = [i for i in order
                   if self.guard.measure(base, [i]).value(self.metric) >= likely]
        return hopeful + [i for i in order if i not in hopeful], len(hopeful)

    def _train_on(self, budget: RecoveryBudget) -> RecoveryBudget | None:
        """The budget to train on the recovery that just missed with, if it measured at or
        above the floor (only one standard error down fell below it), was still improving
        when its budget ended, and at least half a stage's time is left; else None."""
        if self.missed is None or self.method != "distill":
            return None
        if self.missed[1].value(self.metric) < self.floor:
            return None
        if self.budget.seconds is None or budget.seconds is None:
            return budget
        left = self.budget.seconds - (time.perf_counter() - self.start)
        return RecoveryBudget(min(budget.seconds, left)) if left >= 0.5 * budget.seconds \
            else None

    def _label(self, genes: Sequence[int]) -> str:
        return ", ".join(f"{self.space.genes[i].pass_name}@{self.space.genes[i].site}"
                         for i in genes)


def _classifier(outputs: Mapping[str, np.ndarray]) -> bool:
    return all(v.ndim == 2 and v.shape[1] > 1 for v in outputs.values())


def optimize(
    model: Model | str | Path,
    target: str | Path | Target = "npu-p32",
    *,
    strategy: str = "greedy",
    max_param_bytes: int | None = None,
    max_activation_bytes: int | None = None,
    budget: Budget | None = None,
    seed: int = 0,
    exact: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    progress: bool = False,
    min_fidelity: float = DEFAULT_MIN_FIDELITY,
    calibration: str | Path | Batches | None = None,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    passes: Sequence[str] | None = None,
    recover: str | None = "distill",
    recover_budget: RecoveryBudget | str | None = None,
    eval_data: object = None,
    preprocess: Preprocess | str | None = None,
    fidelity_metric: str | None = None,
    augment: str = "auto",
) -> Result:
    """Choose the rewrites that lower `model`'s estimated latency on `target`.

    exact=True keeps to rewrites that preserve the function. exact=False also allows
    architecture changes (fuse-ibn, align-channels-down, depth-multiplier at `multipliers`),
    their weights refitted on `calibration` (an .npz path or batches; None: seeded random
    inputs, with a warning), holding the fidelity on held-out inputs at `min_fidelity`.
    `passes` limits the search to those passes (default: all the mode allows).

    Architecture changes are recovered (`recover`: 'distill' trains the changed model
    against the original with PyTorch for `recover_budget`; 'refit' only refits) and judged
    on `eval_data`, or on a quarter of the calibration sources never used for fitting, by
    `fidelity_metric` (top1, top5 or cosine; default top1 for classifiers, else cosine):
    a change is kept only when that fidelity, one standard error down, meets the floor.
    `augment` says how distillation augments the fitting inputs (`rewriter.recover`).
    """
    if not 0.0 <= min_fidelity <= 1.0:
        raise BadInputError(f"--min-fidelity must be within [0, 1], not {min_fidelity}")
    if fidelity_metric is not None and fidelity_metric not in FIDELITY_METRICS:
        raise BadInputError(f"unknown --fidelity-metric {fidelity_metric!r}; choose "
                            f"{', '.join(FIDELITY_METRICS)}")
    if not isinstance(recover_budget, RecoveryBudget):
        recover_budget = RecoveryBudget.parse(recover_budget)
    check_augmentation(augment)
    if isinstance(preprocess, str):
        preprocess = Preprocess.parse(preprocess)
    if strategy not in STRATEGIES:
        raise BadInputError(f"unknown strategy {strategy!r}; strategies are: "
                            f"{', '.join(STRATEGIES)}")
    original = model if isinstance(model, Model) else load_model(model, input_shapes)
    resolved = target if isinstance(target, Target) else Target.load(target)
    budget = budget or Budget()
    if budget.candidates is None and budget.seconds is None:
        budget = Budget(candidates=DEFAULT_CANDIDATES[strategy])
    start = time.perf_counter()
    space = SearchSpace(original, resolved, architecture=not exact, multipliers=multipliers,
                        passes=passes)
    evaluator = _Evaluator(space, (max_param_bytes, max_activation_bytes), budget, progress)
    try:
        STRATEGIES[strategy](evaluator, len(space), evaluator.exhausted, random.Random(seed))
        evaluator(space.empty())
    finally:
        evaluator.close()
    if evaluator.best is None:
        raise _no_candidate(evaluator)
    genome = _prune(evaluator, evaluator.best[0])
    warnings: list[str] = []
    notes = list(space.canonical_notes)
    recovered: Model | None = None
    fidelity: Fidelity | None = None
    if not exact:
        stage = _RecoveryStage(space, evaluator, calibration, eval_data, preprocess, seed,
                               min_fidelity, fidelity_metric, recover, recover_budget,
                               progress, augment)
        genome, recovered, fidelity = stage.run(genome)
        warnings, notes = stage.warnings, notes + stage.notes
    final = evaluator.score(genome)
    decisions = []
    for index in space.active(genome):
        without = evaluator.score(genome[:index] + (0,) + genome[index + 1:])
        gene = space.genes[index]
        decisions.append(Decision(gene.pass_name, gene.site, gene.description,
                                  without.latency_ms - final.latency_ms, gene.exact))
    changed = [d for d in decisions if not d.exact]
    architecture = recovered if changed and recovered is not None else original
    built = space.build_exact(architecture if changed else space.canonical, genome)
    report = verify(architecture, built, inputs, seed=seed)
    if changed and report.refused:
        # The recovered model is the reference here and may be ill-conditioned where the
        # original was not; its fidelity to the original was measured either way.
        notes.append(f"the exact rewrites could not be verified against the recovered "
                     f"model: {report.refused}")
    elif not report.passed:
        raise VerificationError(f"the optimized model does not match the original: "
                                f"{report.summary()}; nothing written")
    if changed:
        built.metadata[METADATA_KEY] = architecture.metadata.get(
            METADATA_KEY, architecture.changes.label())
        notes.append("architecture changed: the exact rewrites were verified against the "
                     "recovered model; its fidelity to the original was measured on "
                     "held-out data never used for fitting")
    else:
        fidelity = None
    built.metadata["rewriter.optimize"] = (
        f"target={resolved.name};strategy={strategy};seed={seed};rewrites="
        + ",".join(f"{d.pass_name}@{d.site}" for d in decisions))
    before, after = resolved.estimate(original), resolved.estimate(built)
    if abs(after.latency_ms - final.latency_ms) > 1e-6 * max(1.0, final.latency_ms):
        notes.append(f"search estimate {final.latency_ms:.4f} ms differs from the built "
                     f"model's {after.latency_ms:.4f} ms")
    points = [(s.latency_ms, s.memory_bytes) for s in evaluator.scores.values()]
    return Result(
        model=built, target=resolved.name, strategy=strategy, seed=seed, decisions=decisions,
        before=before, after=after, verification=report, evaluated=len(evaluator.scores),
        elapsed_s=time.perf_counter() - start, trace=evaluator.trace,
        pareto=_pareto(evaluator.scores, evaluator.feasible, genome), points=points[:5000],
        notes=notes, exact=exact, fidelity=fidelity, min_fidelity=None if exact else min_fidelity,
        warnings=warnings, fidelity_metric=fidelity_metric)
