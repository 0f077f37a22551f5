"""Many models for many targets: the fan-out behind `rewriter optimize-many`.

Every (model, target) pair is one work unit (`optimize_one`) run on a `rewriter.parallel`
executor: serially, in a local process pool or on Ray. A unit reads its model from its path
(so on several machines the paths must be readable on every node), runs `optimize` with the
run's options and seed, and returns the optimized model as bytes with its summary row. This
process writes each model atomically (`save_model`) as its result arrives, so the output
folder need exist only here. A unit that fails (unreadable model, unsupported op, nothing
within the budget) returns its row with the error and the exit code `rewriter optimize`
would have given; the other units go on.

The rows come back in the order of the jobs (models x targets), and each unit is
deterministic given its options (a candidate budget, the default, not seconds), so every
backend gives the rows and files a serial run gives.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from rewriter.atomic import atomic_write_text
from rewriter.cost.estimate import Target
from rewriter.errors import exit_status
from rewriter.graph_io import Model, load_model, save_model
from rewriter.parallel import Executor
from rewriter.search.driver import Budget, optimize

INTERNAL = 70


@dataclass(frozen=True)
class Job:
    """One model for one target; `checks` run on the loaded model first (the CLI's refusals
    of what cannot be priced or run), each a module-level function so the job pickles."""

    model: str
    target: Target
    output: str
    strategy: str = "greedy"
    seed: int = 0
    budget: Budget | None = None
    max_param_bytes: int | None = None
    max_activation_bytes: int | None = None
    checks: tuple[Callable[[Model], None], ...] = ()
    input_shapes: dict[str, tuple[int, ...]] | None = None  # --input-shape, for every model


@dataclass
class Row:
    """A line of the summary; gain_pct is positive when the optimized model is faster."""

    model: str
    target: str
    output: str | None
    status: str  # "ok" or "failed"
    before_ms: float | None = None
    after_ms: float | None = None
    gain_pct: float | None = None
    rewrites: int | None = None
    sites: list[str] = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0  # what `rewriter optimize` would have returned for this pair


@dataclass
class Outcome:
    row: Row
    model: bytes | None  # the serialized optimized model; None when the unit failed


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def failure(exc: Exception) -> tuple[int, str]:
    """(exit code, one-line message) of an error, as the CLI reports it
    (`rewriter.errors.exit_status`)."""
    status = exit_status(exc)
    if status is not None:
        return status[0], _one_line(status[1])
    return INTERNAL, _one_line(f"internal error: {type(exc).__name__}: {exc}")


def optimize_one(job: Job) -> Outcome:
    """The work unit: optimize `job.model` for `job.target`; never raises (a failure is
    the row's status, error and exit code)."""
    try:
        model = load_model(job.model, job.input_shapes)
        for check in job.checks:
            check(model)
        result = optimize(model, job.target, strategy=job.strategy, seed=job.seed,
                          budget=job.budget, max_param_bytes=job.max_param_bytes,
                          max_activation_bytes=job.max_activation_bytes, exact=True)
        data = result.model.to_onnx().SerializeToString()
    except Exception as exc:  # reported in the row; the other units go on
        code, message = failure(exc)
        return Outcome(Row(job.model, job.target.name, None, "failed", error=message,
                           exit_code=code), None)
    before, after = result.before.latency_ms, result.after.latency_ms
    gain = 100 * (before - after) / before if before else 0.0
    return Outcome(Row(job.model, job.target.name, job.output, "ok", _finite(before),
                       _finite(after), _finite(gain), len(result.decisions),
                       [f"{d.pass_name}@{d.site}" for d in result.decisions]), data)


@dataclass
class Summary:
    rows: list[Row]
    strategy: str
    seed: int
    executor: str
    elapsed_s: float

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status != "ok"]

    def to_dict(self) -> dict[str, object]:
        return {"strategy": self.strategy, "seed": self.seed, "executor": self.executor,
                "elapsed_s": self.elapsed_s, "runs": len(self.rows),
                "failed": len(self.failed), "rows": [asdict(r) for r in self.rows]}

    def cells(self) -> list[list[str]]:
        """The table's cells, one list per row (model, target, before, after, gain,
        rewrites, status, error)."""
        def number(value: float | None, fmt: str) -> str:
            return "" if value is None else format(value, fmt)

        return [[r.model, r.target, number(r.before_ms, ".4f"), number(r.after_ms, ".4f"),
                 number(r.gain_pct, "+.1f"), "" if r.rewrites is None else str(r.rewrites),
                 r.status, r.error or ""] for r in self.rows]

    def headline(self) -> str:
        failed = f"; {len(self.failed)} failed" if self.failed else ""
        return (f"{len(self.rows)} runs ({self.strategy}, seed {self.seed}) on "
                f"{self.executor} in {self.elapsed_s:.1f} s{failed}")

    def markdown(self) -> str:
        def cell(text: str) -> str:  # a | in an error message would split the cell
            return text.replace("|", "\\|")

        lines = ["# rewriter optimize-many", "", self.headline(), "",
                 "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.cells()]
        return "\n".join(lines) + "\n"


HEADERS = ["model", "target", "before ms", "after ms", "gain %", "rewrites", "status", "error"]


def optimize_many(jobs: Sequence[Job], executor: Executor, *,
                  on_row: Callable[[Row], None] | None = None) -> Summary:
    """Run every job on `executor`; each model is written as its result arrives (a write
    that fails fails its row). Rows in the jobs' order."""
    if not jobs:
        raise ValueError("optimize_many needs at least one job")
    rows: list[Row | None] = [None] * len(jobs)

    def arrived(index: int, outcome: Outcome) -> None:
        row = outcome.row
        if outcome.model is not None:
            try:
                save_model(onnx.load_from_string(outcome.model), jobs[index].output)
            except Exception as exc:
                row.exit_code, row.error = failure(exc)
                row.status, row.output = "failed", None
        rows[index] = row
        if on_row is not None:
            on_row(row)

    start = time.perf_counter()
    executor.map(optimize_one, jobs, arrived)
    return Summary([r for r in rows if r is not None], jobs[0].strategy, jobs[0].seed,
                   executor.describe(), time.perf_counter() - start)


def write_summary(summary: Summary, folder: Path) -> list[Path]:
    """summary.md and summary.json in `folder`, each written atomically."""
    md = atomic_write_text(folder / "summary.md", summary.markdown())
    data = json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n"
    return [md, atomic_write_text(folder / "summary.json", data)]
