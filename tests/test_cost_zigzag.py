"""ZigZag measurement backend: three small layers simulated once, then the cache reused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("zigzag")

from rewriter.cost import zigzag as zz  # noqa: E402
from rewriter.cost.opspec import OpSpec  # noqa: E402
from rewriter.parallel import SerialExecutor  # noqa: E402

CONV = OpSpec("conv", cin=16, cout=16, h_in=16, w_in=16, h_out=16, w_out=16, kh=3, kw=3)
DW = OpSpec("dwconv", cin=16, cout=16, h_in=16, w_in=16, h_out=16, w_out=16, kh=3, kw=3,
            groups=16)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory):
    cache_dir = tmp_path_factory.mktemp("cache")
    cwd = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        ms = zz.measure_zigzag([CONV, DW], "edge_tpu_like", cache_dir=cache_dir,
                               executor=SerialExecutor(), progress=False)
    finally:
        os.chdir(old)
    return cache_dir, cwd, ms


def test_depthwise_maps_badly(measured) -> None:
    _, _, (conv, dw) = measured
    assert conv.latency_ms > 0 and dw.latency_ms > 0
    assert conv.device == f"zigzag-{zz.zigzag_version()} edge_tpu_like"
    assert (conv.threads, conv.repeats) == (0, 1)
    # 16x the MACs, but far less than 16x the latency
    assert conv.latency_ms < 4 * dw.latency_ms


def test_no_files_left_in_cwd(measured) -> None:
    _, cwd, _ = measured
    assert list(Path(cwd).iterdir()) == []


def test_cache_is_reused(measured, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir, _, first = measured
    files = list(Path(cache_dir).iterdir())
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert set(data) == {zz.cache_key(CONV), zz.cache_key(DW)}
    # keys predate the layout field, so caches written before it still hit
    assert zz.cache_key(CONV) == "('conv', 1, 16, 16, 16, 16, 16, 16, 3, 3, 1, 1, '', 1, 4)"

    def fail(*args, **kwargs):
        raise AssertionError("simulated a cached spec")

    monkeypatch.setattr(zz, "simulate_cycles", fail)
    # serially: a miss would simulate in this process, where `fail` is patched in
    again = zz.measure_zigzag([DW, CONV], "edge_tpu_like", cache_dir=cache_dir,
                              executor=SerialExecutor(), progress=False)
    assert again == [first[1], first[0]]
    slower = zz.measure_zigzag([CONV], "edge_tpu_like", cache_dir=cache_dir, clock_hz=5e8,
                               executor=SerialExecutor(), progress=False)
    assert slower[0].latency_ms == pytest.approx(2 * first[0].latency_ms)


def test_errors(tmp_path: Path) -> None:
    assert {"edge_tpu_like", "tpu_like"} <= set(zz.ACCELERATORS)
    with pytest.raises(zz.ZigZagError, match="unknown ZigZag accelerator"):
        zz.measure_zigzag([CONV], "no_such_chip", cache_dir=tmp_path)
    with pytest.raises(zz.ZigZagError, match="unknown ZigZag accelerator"):
        zz.simulate_cycles(None, "no_such_chip")  # type: ignore[arg-type]
    with pytest.raises(zz.ZigZagError, match="pool"):
        zz.measure_zigzag([OpSpec("pool", cin=8, cout=8, h_in=4, w_in=4, h_out=2, w_out=2,
                                  kh=2, kw=2, stride=2)], "edge_tpu_like", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_layer_that_fits_the_array_in_one_step_is_simulated(tmp_path: Path) -> None:
    # No temporal loop is left on tpu_like's 32x32 array; zigzag-dse 3.9's mapping printer
    # raises on that (a squeeze-excite conv of PP-OCR cls), so it is kept from failing.
    squeeze = OpSpec("conv1x1", cin=16, cout=16)
    (row,) = zz.measure_zigzag([squeeze], "tpu_like", cache_dir=tmp_path,
                               executor=SerialExecutor(),
                               progress=False)
    assert 0 < row.latency_ms < 1e-3  # some 65 cycles


def test_a_process_pool_simulates_what_one_process_does(measured, tmp_path: Path) -> None:
    from rewriter.parallel import ProcessExecutor

    _, _, serial = measured
    pooled = zz.measure_zigzag([CONV, DW], "edge_tpu_like", cache_dir=tmp_path,
                               executor=ProcessExecutor(2), progress=False)
    assert pooled == serial


def test_each_result_is_cached_as_it_arrives(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # an interrupted batch keeps what it simulated: the cache file grows result by result
    cycles = {zz.cache_key(CONV): 1000.0, zz.cache_key(DW): 250.0}
    monkeypatch.setattr(zz, "_spec_cycles", lambda job: cycles[zz.cache_key(job[0])])
    seen: list[set[str]] = []

    class Snooping(SerialExecutor):
        def map(self, fn, items, on_result=None):
            def after(index, result):
                on_result(index, result)
                (cache,) = tmp_path.iterdir()
                seen.append(set(json.loads(cache.read_text())))

            return super().map(fn, items, after)

    rows = zz.measure_zigzag([DW, CONV], "edge_tpu_like", cache_dir=tmp_path,
                             executor=Snooping(), progress=False)
    assert seen == [{zz.cache_key(DW)}, {zz.cache_key(DW), zz.cache_key(CONV)}]
    assert [r.latency_ms for r in rows] == [250.0 / 1e6, 1000.0 / 1e6]
