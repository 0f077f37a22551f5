"""Synthetic text-line images, the plentiful in-domain data of a text classifier.

PaddleOCR's text-direction classifier reads a 48x192 crop of one text line and says whether
it is upright or turned 180 degrees. Text lines can be synthesised without limit, so the
recovery benchmark fits on one layout and measures fidelity on another (other seed, other
placement, colours and sizes), as a user with their own scans would. Half the lines are
turned 180 degrees so that both classes occur. Glyphs come from Pillow's bundled font.

    python benchmarks/text_lines.py OUT_DIR --count 400 --seed 0 --layout a
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HEIGHT, WIDTH = 48, 192
_CHARS = string.ascii_letters + string.digits + "      .,:-"


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list(_CHARS), int(rng.integers(6, 16)))).strip() or "text"


def text_line(rng: np.random.Generator, layout: str) -> np.ndarray:
    """One HxWx3 uint8 text line drawn in `layout` ('a': dark on light, left aligned,
    large; 'b': varied colours and backgrounds, any alignment, smaller, slightly blurred;
    'c': sheared glyphs on a shaded background)."""
    if layout == "a":
        background = tuple(int(v) for v in rng.integers(215, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 60, 3))
        size, x = int(rng.integers(22, 31)), int(rng.integers(2, 12))
    elif layout == "c":  # sheared glyphs on a shaded background, sizes of both others
        background = tuple(int(v) for v in rng.integers(120, 240, 3))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        size, x = int(rng.integers(16, 31)), int(rng.integers(2, 40))
    else:
        dark = rng.random() < 0.4
        background = tuple(int(v) for v in (rng.integers(0, 70, 3) if dark
                                            else rng.integers(150, 256, 3)))
        ink = tuple(int(v) for v in (rng.integers(180, 256, 3) if dark
                                     else rng.integers(0, 110, 3)))
        size, x = int(rng.integers(16, 27)), int(rng.integers(2, 60))
    image = Image.new("RGB", (WIDTH, HEIGHT), background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    y = int(rng.integers(0, max(1, HEIGHT - size - 4)))
    draw.text((x, y), " ".join(_word(rng) for _ in range(3)), font=font, fill=ink)
    if layout == "c":
        shear = float(rng.uniform(-0.3, 0.3))
        image = image.transform(image.size, Image.Transform.AFFINE,
                                (1, shear, -shear * HEIGHT / 2, 0, 1, 0),
                                fillcolor=background)
        shade = np.linspace(float(rng.uniform(0.75, 1.0)), 1.0, WIDTH)[None, :, None]
        image = Image.fromarray((np.asarray(image, np.float32) * shade).astype(np.uint8))
    if layout != "a" and rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    if rng.random() < 0.5:
        image = image.rotate(180)
    array = np.asarray(image, dtype=np.float32)
    array += rng.normal(0.0, 4.0, array.shape)
    return np.clip(array, 0, 255).astype(np.uint8)


def write_lines(directory: str | Path, count: int, seed: int, layout: str) -> Path:
    """`count` text lines as PNG files `line-SEED-I.png` in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, ord(layout)])
    for i in range(count):
        Image.fromarray(text_line(rng, layout)).save(directory / f"line-{seed}-{i:04d}.png")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=["a", "b", "c"], default="a")
    args = parser.parse_args()
    print(write_lines(args.out, args.count, args.seed, args.layout))


if __name__ == "__main__":
    main()
