"""The execution interface (rewriter.parallel): every backend returns what a serial run
returns, in input order, whatever order the units finish in; a unit's error comes back as
itself; Ray runs on a real local instance started inside the test."""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import pytest

from rewriter.errors import BadInputError, MissingExtraError
from rewriter.parallel import (
    ProcessExecutor,
    RayExecutor,
    SerialExecutor,
    make_executor,
)

# (seed, delay): later items sleep less, so a pool finishes them first
WORK = [(seed, 0.05 * (5 - seed)) for seed in range(6)]


def draw(item: tuple[int, float]) -> list[float]:
    """A seeded unit of work that takes a while."""
    seed, delay = item
    time.sleep(delay)
    return np.random.default_rng(seed).standard_normal(3).tolist()


def refuse(item: int) -> int:
    if item == 3:
        raise ValueError(f"unit {item} refused")
    return item


def _run(executor, fn=draw, items=WORK):
    arrived: list[int] = []
    results = executor.map(fn, items, lambda index, result: arrived.append(index))
    return results, arrived


def test_a_process_pool_returns_the_serial_results_in_input_order() -> None:
    serial, serial_order = _run(SerialExecutor())
    pooled, pooled_order = _run(ProcessExecutor(2))
    assert pooled == serial
    assert serial_order == list(range(len(WORK)))
    assert sorted(pooled_order) == list(range(len(WORK)))  # each result reported once


def test_a_units_error_is_raised_as_itself() -> None:
    for executor in (SerialExecutor(), ProcessExecutor(2)):
        with pytest.raises(ValueError, match="unit 3 refused"):
            executor.map(refuse, range(6))


def test_make_executor_follows_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_executor(1), SerialExecutor)
    pool = make_executor(3)
    assert isinstance(pool, ProcessExecutor) and pool.workers == 3
    with pytest.raises(BadInputError, match="--workers"):
        make_executor(0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were missing
    with pytest.raises(MissingExtraError, match=r"pip install 'rewriter\[ray\]'"):
        make_executor(2, "auto")


@pytest.fixture(scope="module")
def ray_instance():
    """A real local Ray instance of 2 CPUs, shut down after the module's tests."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    # the test module is not importable on Ray's workers: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()


def test_ray_returns_the_serial_results_in_input_order(ray_instance) -> None:
    serial, _ = _run(SerialExecutor())
    with RayExecutor("local", 2) as executor:
        on_ray, order = _run(executor)
        assert "2 CPUs" in executor.describe()
    assert on_ray == serial
    assert sorted(order) == list(range(len(WORK)))
    assert ray_instance.is_initialized()  # an instance it did not start is left running


def test_ray_raises_a_units_error_as_itself(ray_instance) -> None:
    with RayExecutor("local", 2) as executor, pytest.raises(ValueError, match="unit 3"):
        executor.map(refuse, range(6))


def test_zigzag_layers_on_ray_match_the_serial_simulation(ray_instance, tmp_path) -> None:
    pytest.importorskip("zigzag")
    from rewriter.cost import zigzag as zz
    from rewriter.cost.opspec import OpSpec

    layers = [OpSpec("conv1x1", cin=16, cout=8, h_in=8, w_in=8, h_out=8, w_out=8),
              OpSpec("conv", cin=8, cout=16, h_in=8, w_in=8, h_out=8, w_out=8, kh=3, kw=3)]
    serial = zz.measure_zigzag(layers, "edge_tpu_like", cache_dir=tmp_path / "serial",
                               executor=SerialExecutor(), progress=False)
    with RayExecutor("local", 2) as executor:
        on_ray = zz.measure_zigzag(layers, "edge_tpu_like", cache_dir=tmp_path / "ray",
                                   executor=executor, progress=False)
    assert on_ray == serial
    cached = [(p.name, p.read_text()) for p in (tmp_path / "ray").iterdir()]
    assert cached == [(p.name, p.read_text()) for p in (tmp_path / "serial").iterdir()]


def test_optimize_many_on_ray_matches_the_local_run(ray_instance, tmp_path, capsys) -> None:
    from tests.test_optimize_many import run_many, zoo_folder

    models = zoo_folder(tmp_path / "zoo")
    local = run_many(capsys, models, tmp_path / "local", "--workers", "1")
    on_ray = run_many(capsys, models, tmp_path / "ray", "--ray", "local")
    assert on_ray["executor"].startswith("Ray")
    assert on_ray["rows"] == local["rows"]
    for row in local["rows"]:
        name = row["output"].rsplit("/", 1)[-1]
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
