"""Synthetic text-line images, the plentiful in-domain data of a text classifier.

PaddleOCR's text-direction classifier reads a 48x192 crop of one text line and says whether
it is upright or turned 180 degrees. Text lines can be synthesised without limit, so the
recovery benchmark fits on one layout and measures fidelity on another (other seed, other
placement, colours and sizes), as a user with their own scans would. Half the lines are
turned 180 degrees so that both classes occur. Glyphs come from Pillow's bundled font.

    python benchmarks/text_lines.py OUT_DIR --count 400 --seed 0 --layout a
    python benchmarks/text_lines.py --accuracy    # the classifier itself on each layout
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HEIGHT, WIDTH = 48, 192
# Words as text lines carry them (a fixed list, so the lines are the same everywhere):
# ascenders, descenders and capitals are what tells upright text from text turned over.
_WORDS = """the of and to in is was for that with as on by at from his her they which
this be are or an had not but were have one all their has there been would when who
will more no if out so said what up its about into than them can only other new some
could time these two may then do first any my now such like our over man me even most
made after also did many before must through back years where much your way well down
should because each just those people how too little state good very make world still
own see men work long get here between both life being under never day same another
know while last might us great old year off come since against go came right used take
three Paper Invoice Total Amount Date Street Road London Paris Berlin Madrid Account
Number Order Customer Price Quantity Subtotal Payment Receipt Bank Office Company Report
Summary Chapter Section Figure Table Page Address Phone Email Name Signature Monday
Tuesday Friday January March October 2019 2021 2024 12.50 3,400 No. Ltd. Inc. Tel:""".split()
_PUNCT = ["", "", "", "", ",", ".", ":"]
# (seed, layout) of the lines the recovery benchmarks check on and never fit or judge on
INDEPENDENT_LINES = ((2, "c"), (6, "d"))


def _line_text(rng: np.random.Generator) -> str:
    words = [str(rng.choice(_WORDS)) + str(rng.choice(_PUNCT)) for _ in range(8)]
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    return " ".join(words)


def text_line(rng: np.random.Generator, layout: str) -> np.ndarray:
    """One HxWx3 uint8 text line (see `labelled_line`)."""
    return labelled_line(rng, layout)[0]


def labelled_line(rng: np.random.Generator, layout: str) -> tuple[np.ndarray, bool]:
    """One HxWx3 uint8 text line, as a text detector would crop it (the line near the
    middle, filling most of the height), drawn in `layout` ('a': dark on light, left
    aligned, large; 'b': tinted paper and coloured ink (a tenth light on dark), indented,
    smaller, slightly blurred; 'c': sheared glyphs on a shaded background; 'd': a poor scan:
    grey paper with speckles, the line turned a few degrees, resolution lost and JPEG
    compressed), and whether it was turned 180 degrees."""
    if layout == "a":
        background = tuple(int(v) for v in rng.integers(215, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 60, 3))
        size, x = int(rng.integers(22, 31)), int(rng.integers(2, 12))
    elif layout == "c":  # sheared glyphs on a shaded background, sizes of both others
        background = tuple(int(v) for v in rng.integers(120, 240, 3))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        size, x = int(rng.integers(20, 33)), int(rng.integers(2, 30))
    elif layout == "d":  # a poor scan: grey paper, grey ink
        grey = int(rng.integers(160, 235))
        background = (grey, grey, int(grey * rng.uniform(0.9, 1.0)))
        ink = (int(rng.integers(20, 100)),) * 3
        size, x = int(rng.integers(18, 32)), int(rng.integers(0, 25))
    else:  # tinted paper and coloured ink, a tenth of lines light on dark
        dark = rng.random() < 0.1
        background = tuple(int(v) for v in (rng.integers(0, 70, 3) if dark
                                            else rng.integers(150, 256, 3)))
        ink = tuple(int(v) for v in (rng.integers(180, 256, 3) if dark
                                     else rng.integers(0, 110, 3)))
        size, x = int(rng.integers(20, 31)), int(rng.integers(2, 40))
    image = Image.new("RGB", (WIDTH, HEIGHT), background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    # a text detector's box: the line near the middle, filling most of the height
    y = (HEIGHT - size) // 2 - 2 + int(rng.integers(-3, 4))
    draw.text((x, y), _line_text(rng), font=font, fill=ink)
    if layout == "c":
        shear = float(rng.uniform(-0.3, 0.3))
        image = image.transform(image.size, Image.Transform.AFFINE,
                                (1, shear, -shear * HEIGHT / 2, 0, 1, 0),
                                fillcolor=background)
        shade = np.linspace(float(rng.uniform(0.75, 1.0)), 1.0, WIDTH)[None, :, None]
        image = Image.fromarray((np.asarray(image, np.float32) * shade).astype(np.uint8))
    if layout == "d":
        image = _poor_scan(image, background, rng)
    if layout in "bc" and rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    upside_down = bool(rng.random() < 0.5)
    if upside_down:
        image = image.rotate(180)
    array = np.asarray(image, dtype=np.float32)
    array += rng.normal(0.0, 4.0, array.shape)
    return np.clip(array, 0, 255).astype(np.uint8), upside_down


def _poor_scan(image: Image.Image, background: tuple[int, ...],
               rng: np.random.Generator) -> Image.Image:
    """Speckles, a turn of a few degrees, lost resolution and JPEG compression."""
    array = np.asarray(image, dtype=np.float32).copy()
    speckles = rng.random(array.shape[:2]) < 0.01
    array[speckles] *= rng.uniform(0.3, 0.7)
    image = Image.fromarray(array.astype(np.uint8)).rotate(
        float(rng.uniform(-3.0, 3.0)), resample=Image.Resampling.BILINEAR,
        fillcolor=background)
    scale = float(rng.uniform(0.45, 0.75))
    image = image.resize((int(WIDTH * scale), int(HEIGHT * scale)),
                         Image.Resampling.BILINEAR).resize((WIDTH, HEIGHT),
                                                           Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(25, 60)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def write_lines(directory: str | Path, count: int, seed: int, layout: str) -> Path:
    """`count` text lines as PNG files `line-SEED-I.png` in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, ord(layout)])
    for i in range(count):
        Image.fromarray(text_line(rng, layout)).save(directory / f"line-{seed}-{i:04d}.png")
    return directory


def teacher_accuracy(count: int = 300, seed: int = 7) -> str:
    """How often PP-OCR's classifier itself reads each layout the right way up: the lines
    must be in its domain for agreement with it to mean anything."""
    from rewriter.graph_io import load_model
    from rewriter.samples import SHAPES, rapidocr_models
    from rewriter.staged import collect
    from rewriter.tables import table

    model = load_model(rapidocr_models(("cls",))["cls"], SHAPES["cls"])
    rows = []
    for layout in "abcd":
        rng = np.random.default_rng([seed, ord(layout)])
        lines = [labelled_line(rng, layout) for _ in range(count)]
        x = np.stack([(a.astype(np.float32) / 255 - 0.5) / 0.5 for a, _ in lines])
        x = x.transpose(0, 3, 1, 2)
        name = model.graph.inputs[0].name
        probs = next(iter(collect(model, [{name: x[i:i + 32]}
                                          for i in range(0, count, 32)]).values()))
        upside = np.array([flag for _, flag in lines])
        rows.append([layout, f"{np.mean((probs.argmax(1) == 1) == upside):.3f}",
                     f"{np.mean(probs.max(1) < 0.9):.3f}"])
    return table(["layout", "accuracy", "share below 0.9 confidence"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accuracy", action="store_true",
                        help="print how often PP-OCR's classifier reads each layout right")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=["a", "b", "c", "d"], default="a")
    args = parser.parse_args()
    if args.accuracy:
        print(teacher_accuracy())
    elif args.out:
        print(write_lines(args.out, args.count, args.seed, args.layout))
    else:
        parser.error("give OUT_DIR, or --accuracy")


if __name__ == "__main__":
    main()
