"""--workers and --ray on the cost commands that simulate on ZigZag: the pool gives the
serial run's rows; onnxruntime timings refuse them (co-scheduled timings disturb each
other)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewriter.cli import main
from rewriter.cost.measurements import read_csv


def test_timing_on_this_machine_refuses_a_pool(tmp_path: Path, capsys):
    assert main(["cost", "measure", "-n", "2", "--workers", "2",
                 "-o", str(tmp_path / "m.csv")]) == 2
    assert "serially" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()
    assert main(["cost", "validate", "--target", "cpu-ort", "--quick", "--ray", "auto"]) == 2
    assert "serially" in capsys.readouterr().err


def test_zigzag_measure_in_a_pool_gives_the_serial_rows(tmp_path: Path, monkeypatch):
    pytest.importorskip("zigzag")
    import rewriter.cost.zigzag as zigzag

    rows = {}
    for workers in ("1", "2"):  # a fresh cycle cache each: both simulate every layer
        monkeypatch.setattr(zigzag, "DEFAULT_CACHE_DIR", tmp_path / f"cache-{workers}")
        out = tmp_path / f"w{workers}.csv"
        assert main(["cost", "measure", "--backend", "zigzag", "-n", "4", "--seed", "3",
                     "--workers", workers, "-o", str(out)]) == 0
        assert any((tmp_path / f"cache-{workers}").iterdir())
        rows[workers] = [(r.spec, r.latency_ms) for r in read_csv(out)]
    assert rows["1"] and rows["1"] == rows["2"]
