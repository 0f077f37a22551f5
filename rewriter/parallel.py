"""One way to run expensive, independent work units: serially, in a local process pool, or
on a Ray cluster.

A work unit is a picklable, module-level function applied to one picklable item (simulate a
layer on ZigZag, optimize one model for one target). `Executor.map(fn, items)` returns the
results in the order of `items`, whatever order they finish in, so a run gives the same
results on every backend as serially (the units carry their own seeds; none shares state).
`on_result(index, result)` is called in this process as each result arrives, for work that
must be kept at once (the ZigZag cycle cache, a written model).

Backends (`make_executor`):
- `SerialExecutor`: in this process, one unit after the other.
- `ProcessExecutor`: a local ``concurrent.futures.ProcessPoolExecutor`` of `workers`
  processes (default: the cores this process may use). The default when workers > 1.
- `RayExecutor`: Ray tasks (the optional ``[ray]`` extra). ``address`` is "auto" (the
  cluster ``ray start`` runs on this machine), ``HOST:PORT`` (a head started with ``ray start
  --head``; every node needs rewriter installed and the input paths readable) or "local" (a
  private instance of `workers` CPUs for this run). Ray does the scheduling, transport and
  retries; nothing here opens a socket.

Timing measurements (onnxruntime kernel timings, `cost measure` with the onnxruntime
backend) do not go through an executor: runs co-scheduled on one machine disturb each
other's timings, so they stay serial per machine.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from rewriter.errors import BadInputError, MissingExtraError

T = TypeVar("T")
R = TypeVar("R")
OnResult = Callable[[int, Any], None]

RAY_HINT = "pip install 'rewriter[ray]' (in a checkout: pip install -e '.[ray]')"


def default_workers() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


class Executor(ABC):
    """Runs `fn` over items; results in input order. Use as a context manager."""

    name: ClassVar[str] = ""

    @abstractmethod
    def map(self, fn: Callable[[T], R], items: Iterable[T],
            on_result: OnResult | None = None) -> list[R]:
        """`fn(item)` for every item, in the items' order; `on_result(index, result)` runs
        here as each result arrives. The first unit to raise stops the run and its
        exception propagates (units not started are cancelled)."""

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Release what the executor holds (a Ray instance it started)."""
        return None  # serial and pool executors hold nothing between maps

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SerialExecutor(Executor):
    name: ClassVar[str] = "serial"

    def map(self, fn: Callable[[T], R], items: Iterable[T],
            on_result: OnResult | None = None) -> list[R]:
        results = []
        for index, item in enumerate(items):
            results.append(fn(item))
            if on_result is not None:
                on_result(index, results[-1])
        return results


@dataclass
class ProcessExecutor(Executor):
    workers: int = field(default_factory=default_workers)
    name: ClassVar[str] = "processes"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise BadInputError(f"--workers must be at least 1, not {self.workers}")

    def describe(self) -> str:
        return f"local pool of {self.workers} processes"

    def map(self, fn: Callable[[T], R], items: Iterable[T],
            on_result: OnResult | None = None) -> list[R]:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:  # a pool would only add its start-up
            return SerialExecutor().map(fn, items, on_result)
        results: list[Any] = [None] * len(items)
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(self.workers, len(items)))
        try:
            futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_result is not None:
                    on_result(index, results[index])
        finally:
            # on an error or Ctrl-C, drop the queued units instead of running them all
            pool.shutdown(wait=True, cancel_futures=True)
        return results


@dataclass
class RayExecutor(Executor):
    """Ray tasks of one CPU each. Connects on entry or first use, and on close disconnects
    (stopping a "local" instance) only where it connected itself: a Ray already
    initialised in this process is used and left as it is."""

    address: str = "auto"
    workers: int = field(default_factory=default_workers)
    name: ClassVar[str] = "ray"
    _started: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        _import_ray()  # a missing extra fails here, before any work

    def describe(self) -> str:
        import ray

        where = "a local instance" if self.address == "local" else self.address
        if not ray.is_initialized():
            return f"Ray ({where})"
        cpus = int(ray.cluster_resources().get("CPU", 0))
        return f"Ray ({where}, {cpus} CPUs)"

    def connect(self) -> None:
        """Join the cluster (or start the local instance); BadInputError if there is none."""
        ray = _import_ray()
        if ray.is_initialized():
            return
        options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        if self.address == "local":  # a new instance, even beside a running cluster
            options.update(address="local", num_cpus=self.workers, include_dashboard=False)
        else:
            options["address"] = self.address
        try:
            ray.init(**options)
        except ConnectionError as exc:
            hint = ("start one with `ray start --head`, or use --ray local"
                    if self.address == "auto" else "is `ray start --head` running there, and "
                    "its auth token set here? see docs/scale-out.md")
            raise BadInputError(f"no Ray cluster at {self.address}: "
                                f"{str(exc).splitlines()[0]} ({hint})") from None
        self._started = True

    def __enter__(self) -> RayExecutor:
        self.connect()  # a missing cluster fails here, before any work
        return self

    def map(self, fn: Callable[[T], R], items: Iterable[T],
            on_result: OnResult | None = None) -> list[R]:
        items = list(items)
        if not items:
            return []
        self.connect()
        import ray

        task = ray.remote(num_cpus=1)(fn)
        refs = [task.remote(item) for item in items]
        index_of = {ref: index for index, ref in enumerate(refs)}
        results: list[Any] = [None] * len(items)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[index_of[ref]] = _ray_get(ray, ref)
                    if on_result is not None:
                        on_result(index_of[ref], results[index_of[ref]])
        finally:
            for ref in pending:  # an error or Ctrl-C: do not leave the cluster busy
                ray.cancel(ref)
        return results

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingExtraError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


def _ray_get(ray: Any, ref: Any) -> Any:
    """The task's result; a task's own exception is raised as itself, as it is serially."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def make_executor(workers: int | None = None, ray: str | None = None) -> Executor:
    """The executor the options ask for: Ray at `ray` ("auto", HOST:PORT or "local") when
    given, else a local pool of `workers` processes (default: the cores), serial for 1."""
    if workers is not None and workers < 1:
        raise BadInputError(f"--workers must be at least 1, not {workers}")
    if ray is not None:
        if not ray.strip():
            raise BadInputError("--ray needs auto, HOST:PORT or local")
        return RayExecutor(ray.strip(), workers or default_workers())
    workers = workers or default_workers()
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)
