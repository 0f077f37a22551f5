"""Shared fixtures: real pretrained models from a PyPI wheel, cached between runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rewriter.samples import rapidocr_models

# Fixtures that download a wheel from PyPI on first use (then cached): a test using one is
# an integration test whether or not its module says so (`pytest -m "not integration"`
# runs offline).
DOWNLOADING_FIXTURES = {"real_models"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DOWNLOADING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """The ONNX models shipped in the rapidocr-onnxruntime 1.4.4 wheel (downloaded once)."""
    try:
        return rapidocr_models()
    except RuntimeError:
        if os.environ.get("REWRITER_OFFLINE"):
            pytest.skip("REWRITER_OFFLINE set and the rapidocr wheel is not cached")
        raise


@pytest.fixture(scope="session")
def mnv2_folded():
    """MobileNetV2 0.5/96 from the zoo with BatchNorm folded: the architecture passes'
    canonical input, small enough that a refit takes a fraction of a second."""
    from rewriter import zoo
    from rewriter.graph_io import model_from_proto
    from rewriter.passes import get_pass
    from rewriter.rewrite import apply_pass

    model = model_from_proto(zoo.build("mobilenetv2", width=0.5, resolution=96))
    return apply_pass(model, get_pass("fold-bn")).model


@pytest.fixture(scope="session")
def mnv2_data(mnv2_folded):
    """(fitting, held-out) random calibration batches for `mnv2_folded`: 16 inputs each."""
    from rewriter.fidelity import calibration_batches

    fit, _ = calibration_batches(mnv2_folded, None, count=16, batch=4, seed=0)
    held, _ = calibration_batches(mnv2_folded, None, count=16, batch=4, seed=1)
    return fit, held


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: on the shared 2-core test machines two threads
    ran 3-100x slower (spinning against other processes), not faster."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
