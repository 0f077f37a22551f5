"""Shared fixtures: real pretrained models from a PyPI wheel, cached between runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rewriter.samples import rapidocr_models


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """The ONNX models shipped in the rapidocr-onnxruntime 1.4.4 wheel (downloaded once)."""
    try:
        return rapidocr_models()
    except RuntimeError:
        if os.environ.get("REWRITER_OFFLINE"):
            pytest.skip("REWRITER_OFFLINE set and the rapidocr wheel is not cached")
        raise
