"""Shared fixtures: real pretrained models from a PyPI wheel, cached between runs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
REAL_MODELS = {
    "cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
}


def _cache_dir() -> Path:
    root = os.environ.get("REWRITER_TEST_CACHE") or Path.home() / ".cache" / "rewriter-tests"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """The ONNX models shipped in the rapidocr-onnxruntime 1.4.4 wheel (downloaded once)."""
    cache = _cache_dir()
    wanted = {key: cache / Path(member).name for key, member in REAL_MODELS.items()}
    if all(p.exists() for p in wanted.values()):
        return wanted
    wheels = list(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    if not wheels:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
             RAPIDOCR], capture_output=True, text=True)
        wheels = list(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        if not wheels:
            if os.environ.get("REWRITER_OFFLINE"):
                pytest.skip("REWRITER_OFFLINE set and the rapidocr wheel is not cached")
            raise RuntimeError(f"could not download {RAPIDOCR}: {proc.stderr.strip()}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        for key, member in REAL_MODELS.items():
            wanted[key].write_bytes(wheel.read(member))
    return wanted


def text_image(height: int, width: int, seed: int) -> np.ndarray:
    """A synthetic page of dark glyph-like strokes, normalised as PP-OCR does.

    The real detector gives a saturated (near-zero) probability map on noise, which proves
    nothing in a comparison; on this it finds 'text', so its output has a real scale.
    """
    rng = np.random.default_rng(seed)
    img = np.ones((height, width, 3), np.float32)
    for row in range(8, height - 12, 20):
        x = 6
        while x < width - 10:
            glyph = int(rng.integers(4, 9))
            img[row:row + 12, x:x + glyph] = 0.0
            img[row + 3:row + 9, x + 1:x + glyph - 1] = float(rng.random() < 0.5)
            x += glyph + int(rng.integers(2, 5))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((img - mean) / std).transpose(2, 0, 1)[None]
