"""Real pretrained models that nobody on this team built, fetched from a PyPI wheel.

The rapidocr-onnxruntime 1.4.4 wheel ships PaddleOCR's models exported by paddle2onnx:
a MobileNetV3-style text-direction classifier, a PP-OCRv4 text detector and a PP-OCRv4 text
recogniser (an SVTR-style CNN + attention; fetched only when asked for). They are what
users bring (dynamic N/H/W, BatchNormalization unfolded, HardSwish spelled out, hundreds of
Constant nodes), so the integration tests and benchmarks run on them. The wheel is
downloaded once with pip and the models are cached; nothing is committed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

WHEEL = "rapidocr-onnxruntime==1.4.4"
MEMBERS = {
    "cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "rec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
}
# Input shapes at which they are analysed (H, W dynamic in the files).
SHAPES = {"cls": {"x": (1, 3, 48, 192)}, "det": {"x": (1, 3, 320, 320)},
          "rec": {"x": (1, 3, 48, 320)}}


def cache_dir() -> Path:
    root = os.environ.get("REWRITER_TEST_CACHE") or Path.home() / ".cache" / "rewriter-tests"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def rapidocr_models(keys: Sequence[str] = ("cls", "det")) -> dict[str, Path]:
    """Paths of the cached models named by `keys` (of MEMBERS), downloading the wheel
    first if needed."""
    cache = cache_dir()
    wanted = {key: cache / Path(MEMBERS[key]).name for key in keys}
    if all(p.exists() for p in wanted.values()):
        return wanted
    wheels = sorted(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    if not wheels:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
             WHEEL], capture_output=True, text=True)
        wheels = sorted(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        if not wheels:
            raise RuntimeError(f"could not download {WHEEL}: {proc.stderr.strip()}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        for key in keys:
            tmp = wanted[key].with_suffix(".part")
            tmp.write_bytes(wheel.read(MEMBERS[key]))
            tmp.replace(wanted[key])
    return wanted


def text_image(height: int, width: int, seed: int) -> np.ndarray:
    """A synthetic page of dark glyph-like strokes, normalised as PP-OCR does [1, 3, H, W].

    The detector's probability map is saturated (~1e-5) on noise, which proves nothing in a
    comparison; on this it finds 'text', so its output has a real scale.
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
