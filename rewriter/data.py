"""Calibration and evaluation data: what a user brings, turned into model inputs.

Users bring an .npz (input name -> array, batch on axis 0), a folder of photos, or one
photo. Either way the result is `Samples`: float32 model inputs plus, per sample, the
*source* it came from (an image file, or an .npz row). Fidelity is only honest when it is
measured on sources never used for fitting (crops of a photo the refit saw would flatter
it), so `Samples.split_by_source` keeps every source whole on one side of a split.

Images are preprocessed as ImageNet evaluation does (`Preprocess`): resize the shorter
side so that the target H x W is `crop` (0.875) of it, centre-crop H x W, scale pixels to
[0, 1], optionally swap to BGR, normalise with mean/std, lay out as NCHW or NHWC. Extra
random crops (`crops_per_image`) are augmentations for the fitting set; each keeps its
image as source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rewriter.errors import BadInputError
from rewriter.graph_io import Model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SOURCE_KEYS = ("__source__", "sources")  # .npz keys naming each row's source
ORDERS = ("rgb", "bgr")
LAYOUTS = ("auto", "nchw", "nhwc")
# Extra random crops: area share of the image and aspect-ratio jitter (RandomResizedCrop
# style, milder than ImageNet training's 0.08 so the crops stay recognisable), and a
# horizontal flip with probability 1/2.
CROP_AREA = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)

_PARSE_HELP = ("expected comma-separated key=value pairs, e.g. size=224,mean=0.485:0.456:"
               "0.406,std=0.229:0.224:0.225,order=rgb,layout=nchw,scale=255,crop=0.875")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input.

    size: target (H, W), or None for the model input's H and W.
    mean, std: per channel of the model's input, in its channel order (so with
        order="bgr", mean[0] applies to blue: PaddleClas-style models give ImageNet's RGB
        mean and apply it to BGR). In the units after `scale`.
    scale: divide pixel values by 255 first (values in [0, 1]); False keeps 0..255.
    order: "rgb" or "bgr" channel order of the model input.
    layout: "nchw", "nhwc", or "auto" (default): NHWC when the model input is
        N x H x W x 3 and not N x 3 x H x W, else NCHW.
    crop: resize the shorter side so that the target is this share of it, then take the
        centre H x W (ImageNet evaluation: 0.875, i.e. 256 -> 224); 1.0 resizes the
        shorter side to the target exactly. Resampling is bicubic (Pillow).
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: bool = True
    order: str = "rgb"
    layout: str = "auto"
    crop: float = 0.875

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise BadInputError(f"bad preprocessing: {problem}")

    def _problem(self) -> str:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            return f"size must be two positive ints (H, W), not {self.size}"
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
                return f"{name} must be 1 or 3 finite numbers, not {values}"
        if any(v <= 0 for v in self.std):
            return f"std must be positive, not {self.std}"
        if self.order not in ORDERS:
            return f"order must be rgb or bgr, not {self.order!r}"
        if self.layout not in LAYOUTS:
            return f"layout must be nchw, nhwc or auto, not {self.layout!r}"
        if not 0.0 < self.crop <= 1.0:
            return f"crop must be in (0, 1], not {self.crop}"
        return ""

    @classmethod
    def parse(cls, text: str | None) -> "Preprocess":
        """A `Preprocess` from CLI text: comma-separated key=value pairs, any subset, any
        order (empty or None: the defaults).

        size=224 | size=224x192 (H x W) | size=model   target size (default: the model's)
        mean=0.485:0.456:0.406 | mean=0.5               per channel, or one for all three
        std=0.229:0.224:0.225  | std=0.5
        scale=255 | scale=1      divide pixels by 255 first (default) or keep 0..255
        order=rgb | order=bgr    channel order of the model input
        layout=nchw | nhwc | auto
        crop=0.875               target share of the resized shorter side (1 = no margin)
        imagenet                 (a bare word) the defaults, for readability

        Example: size=224,mean=0.5:0.5:0.5,std=0.5:0.5:0.5,order=bgr,layout=nchw,scale=255
        """
        if text is None or not text.strip():
            return cls()
        values: dict[str, object] = {}

        def bad(why: str) -> BadInputError:
            return BadInputError(f"bad --preprocess {text!r}: {why}; {_PARSE_HELP}")

        for part in (p.strip() for p in text.split(",")):
            if not part or part.lower() == "imagenet":
                continue
            key, sep, raw = part.partition("=")
            key, raw = key.strip().lower(), raw.strip()
            if not sep or not raw:
                raise bad(f"{part!r} is not key=value")
            if key in values:
                raise bad(f"{key} given twice")
            try:
                values[key] = _parse_value(key, raw)
            except ValueError as exc:
                raise bad(str(exc)) from None
        try:
            return cls(**values)  # type: ignore[arg-type]
        except BadInputError as exc:
            raise bad(str(exc).removeprefix("bad preprocessing: ")) from None

    def describe(self) -> str:
        """The settings in `parse` syntax (round-trips)."""
        size = "model" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        return (f"size={size},mean={':'.join(f'{v:g}' for v in self.mean)},"
                f"std={':'.join(f'{v:g}' for v in self.std)},order={self.order},"
                f"layout={self.layout},scale={255 if self.scale else 1},crop={self.crop:g}")

    def _channel(self, values: tuple[float, ...]) -> np.ndarray:
        return np.asarray(values * 3 if len(values) == 1 else values, np.float32)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (or float) [H, W, 3] RGB pixels -> float32 [H, W, 3] in the model's
        channel order, scaled and normalised (layout is applied by the caller)."""
        x = np.asarray(pixels, np.float32)
        if self.scale:
            x = x / np.float32(255.0)
        if self.order == "bgr":
            x = x[..., ::-1]
        return ((x - self._channel(self.mean)) / self._channel(self.std)).astype(np.float32)


def _parse_value(key: str, raw: str) -> object:
    if key == "size":
        if raw.lower() in ("model", "auto"):
            return None
        parts = raw.lower().split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"size {raw!r} is not N or HxW")
        dims = [int(p) for p in parts]
        return (dims[0], dims[-1])
    if key in ("mean", "std"):
        try:
            numbers = tuple(float(v) for v in raw.split(":"))
        except ValueError:
            raise ValueError(f"{key} {raw!r} is not numbers separated by ':'") from None
        return numbers
    if key == "scale":
        lowered = raw.lower()
        if lowered in ("255", "true", "yes", "on"):
            return True
        if lowered in ("1", "false", "no", "off", "none"):
            return False
        raise ValueError(f"scale {raw!r} is not 255 (divide by 255) or 1 (keep 0..255)")
    if key in ("order", "layout"):
        return raw.lower()
    if key == "crop":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"crop {raw!r} is not a number") from None
    raise ValueError(f"unknown key {key!r}")


@dataclass
class Samples:
    """Model inputs (float32, batch on axis 0) with the source of each sample.

    sources: one per sample; samples that share a source (crops of one photo) are never
    split across a fitting and a held-out part. origin: what they came from, for reports.
    """

    inputs: dict[str, np.ndarray]
    sources: list[str]
    origin: str = ""

    def __post_init__(self) -> None:
        self.inputs = {k: np.asarray(v, np.float32) for k, v in self.inputs.items()}
        self.sources = [str(s) for s in self.sources]
        counts = {k: (len(v) if v.ndim else -1) for k, v in self.inputs.items()}
        if not counts:
            raise BadInputError(f"{self.origin or 'samples'}: no inputs")
        if len(set(counts.values())) != 1 or next(iter(counts.values())) != len(self.sources):
            raise BadInputError(f"{self.origin or 'samples'}: inputs and sources disagree on "
                                f"the sample count ({counts}, {len(self.sources)} sources)")

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def source_count(self) -> int:
        return len(set(self.sources))

    def describe(self) -> str:
        return f"{len(self)} samples from {self.source_count} sources ({self.origin})"

    def take(self, indices: Sequence[int] | np.ndarray) -> "Samples":
        """The samples at `indices`, in that order (same origin)."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Samples({k: v[index] for k, v in self.inputs.items()},
                       [self.sources[i] for i in index], self.origin)

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        """Consecutive batches of at most `size` samples (the last may be smaller)."""
        if size < 1:
            raise ValueError(f"batch size must be positive, not {size}")
        return [{k: v[i:i + size] for k, v in self.inputs.items()}
                for i in range(0, len(self), size)]

    def split_by_source(self, held_fraction: float = 0.25, seed: int = 0
                        ) -> tuple["Samples", "Samples"]:
        """(fit, held): whole sources go to one side, about `held_fraction` of the sources
        (at least one, and at least one left to fit) held out, chosen by a seeded shuffle.
        Samples keep their order within each part. Needs at least two sources."""
        if not 0.0 < held_fraction < 1.0:
            raise BadInputError(f"held-out fraction must be in (0, 1), not {held_fraction}")
        unique = list(dict.fromkeys(self.sources))  # first-appearance order
        if len(unique) < 2:
            raise BadInputError(
                f"{self.origin or 'samples'}: all {len(self)} samples come from one source "
                f"({unique[0] if unique else 'none'}); a held-out part needs at least 2 "
                "sources (images, or .npz rows) so no source is both fitted and scored")
        order = np.random.default_rng(seed).permutation(len(unique))
        count = min(len(unique) - 1, max(1, round(held_fraction * len(unique))))
        held_sources = {unique[i] for i in order[:count]}
        held = [i for i, s in enumerate(self.sources) if s in held_sources]
        fit = [i for i, s in enumerate(self.sources) if s not in held_sources]
        return self.take(fit), self.take(held)

    def concat(self, *others: "Samples") -> "Samples":
        """These samples followed by `others`' (same input names and sample shapes)."""
        parts = [self, *others]
        for other in others:
            if set(other.inputs) != set(self.inputs):
                raise BadInputError(f"cannot join {other.origin!r} to {self.origin!r}: "
                                    f"inputs {sorted(other.inputs)} vs {sorted(self.inputs)}")
            for name, value in other.inputs.items():
                if value.shape[1:] != self.inputs[name].shape[1:]:
                    raise BadInputError(
                        f"cannot join {other.origin!r} to {self.origin!r}: input '{name}' "
                        f"samples are {value.shape[1:]} vs {self.inputs[name].shape[1:]}")
        return Samples({k: np.concatenate([p.inputs[k] for p in parts]) for k in self.inputs},
                       [s for p in parts for s in p.sources],
                       " + ".join(p.origin for p in parts if p.origin))


def random_samples(model: Model, count: int, seed: int = 0) -> Samples:
    """`count` seeded standard-normal inputs at the model's input shapes (the no-data case:
    fidelity on them is only a proxy for fidelity on real data). Source "random-i"."""
    if count < 1:
        raise BadInputError(f"random samples: count must be positive, not {count}")
    rng = np.random.default_rng(seed)
    inputs = {name: rng.standard_normal((count, *shape[1:])).astype(np.float32)
              for name, shape in model.concrete_input_shapes().items()}
    return Samples(inputs, [f"random-{i}" for i in range(count)],
                   f"{count} random inputs (seed {seed})")


def load_samples(path: str | Path, model: Model, preprocess: Preprocess | None = None,
                 crops_per_image: int = 1, seed: int = 0) -> Samples:
    """Samples from an .npz, a folder of images, or one image.

    .npz: input name -> array (batch on axis 0), checked against the model's inputs (every
    input present, numeric, finite, rank and fixed dims as the model's, one sample count);
    `__source__` or `sources` (strings, one per row) names each row's source, else each
    row is its own source. Other keys are ignored; so are `preprocess` and crops (the
    arrays are model inputs already).

    Folder: every .jpg/.jpeg/.png (any case) under it, recursively, in sorted order (hidden
    files skipped), read with Pillow as RGB and preprocessed for a model with one 4-D image
    input (H, W from `preprocess.size` or the model). Each image gives its centre crop
    plus `crops_per_image - 1` random crops (seeded), all with the image's relative path
    as source.
    """
    path = Path(path)
    if crops_per_image < 1:
        raise BadInputError(f"crops per image must be at least 1, not {crops_per_image}")
    if not path.exists():
        raise BadInputError(f"no such calibration data: {path}")
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path, model)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise BadInputError(f"{path}: expected an .npz, a JPEG/PNG image or a folder of "
                                "them")
        files, origin = [path], f"image {path.name}"
        names = [path.name]
    else:
        files = sorted((p for p in path.rglob("*") if p.is_file()
                        and p.suffix.lower() in IMAGE_SUFFIXES
                        and not any(part.startswith(".")
                                    for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise BadInputError(f"{path}: no JPEG or PNG images in this folder")
        names = [p.relative_to(path).as_posix() for p in files]
        origin = f"{len(files)} images from {path.as_posix().rstrip('/')}/"
    if crops_per_image > 1:
        origin += f", {crops_per_image} crops each"
    return _load_images(files, names, origin, model, preprocess or Preprocess(),
                        crops_per_image, seed)


# -- .npz --------------------------------------------------------------------------------
def _load_npz(path: Path, model: Model) -> Samples:
    names = [t.name for t in model.graph.inputs]
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except Exception as exc:
        raise BadInputError(f"cannot read calibration data {path}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BadInputError(f"calibration data {path} lacks {', '.join(missing)} (has "
                            f"{', '.join(arrays) or 'nothing'})")
    inputs: dict[str, np.ndarray] = {}
    for name in names:
        value = arrays[name]
        if value.dtype.kind not in "biuf":
            raise BadInputError(f"calibration data {path}: '{name}' is {value.dtype}, not "
                                "numbers")
        if value.ndim == 0:
            raise BadInputError(f"calibration data {path}: '{name}' is a scalar (0-d array); "
                                "expected a batch of inputs, batch first")
        expected = _expected_shape(model, name)
        if value.ndim != len(expected) or any(
                e is not None and e != d for e, d in zip(expected[1:], value.shape[1:])):
            want = "x".join("?" if e is None else str(e) for e in ("N", *expected[1:]))
            raise BadInputError(f"calibration data {path}: '{name}' is "
                                f"{'x'.join(map(str, value.shape)) or 'a scalar'}, the model "
                                f"takes {want} (batch first)")
        value = value.astype(np.float32)
        if not np.all(np.isfinite(value)):
            raise BadInputError(f"calibration data {path}: '{name}' has NaN or infinite "
                                "values")
        inputs[name] = value
    counts = {n: len(v) for n, v in inputs.items()}
    count = next(iter(counts.values()))
    if len(set(counts.values())) != 1:
        raise BadInputError(f"calibration data {path}: inputs disagree on the sample count "
                            f"({', '.join(f'{n}: {c}' for n, c in counts.items())})")
    if count == 0:
        raise BadInputError(f"calibration data {path}: no samples")
    key = next((k for k in SOURCE_KEYS if k in arrays and k not in names), None)
    if key is None:
        sources = [f"{path.name}[{i}]" for i in range(count)]
    else:
        raw = arrays[key].reshape(-1)
        if len(raw) != count:
            raise BadInputError(f"calibration data {path}: '{key}' names {len(raw)} sources "
                                f"for {count} samples")
        sources = [v.decode() if isinstance(v, bytes) else str(v) for v in raw.tolist()]
    return Samples(inputs, sources, f"{path.name} ({count} samples)")


def _expected_shape(model: Model, name: str) -> tuple[int | None, ...]:
    """The model input's shape, None where a dim is not fixed (the batch always None)."""
    concrete = model.input_shapes.get(name)
    if concrete is not None:
        dims: list[int | None] = list(concrete)
    else:
        tensor = next(t for t in model.graph.inputs if t.name == name)
        dims = [int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None
                for d in (tensor.shape or ())]
    return tuple([None, *dims[1:]]) if dims else ()


# -- images ------------------------------------------------------------------------------
def _image_input(model: Model, preprocess: Preprocess) -> tuple[str, str, tuple[int, int]]:
    """(input name, layout, (H, W)) of the model's single image input."""
    inputs = [t.name for t in model.graph.inputs]
    if len(inputs) != 1:
        raise BadInputError(f"images need a model with one image input; this one has "
                            f"{len(inputs)} ({', '.join(inputs)}): give an .npz instead")
    name = inputs[0]
    shape = _expected_shape(model, name)
    if len(shape) != 4:
        raise BadInputError(f"images need a 4-D image input; '{name}' has {len(shape)} dims: "
                            "give an .npz instead")
    layout = preprocess.layout
    if layout == "auto":
        layout = "nhwc" if shape[3] == 3 and shape[1] != 3 else "nchw"
    channels, hw = (shape[1], shape[2:4]) if layout == "nchw" else (shape[3], shape[1:3])
    if channels is not None and channels != 3:
        raise BadInputError(f"input '{name}' has {channels} channels in {layout.upper()} "
                            "layout, images give 3 (set layout= in the preprocessing, or "
                            "give an .npz)")
    if preprocess.size is not None:
        if any(m is not None and m != s for m, s in zip(hw, preprocess.size)):
            raise BadInputError(f"preprocessing size {preprocess.size[0]}x{preprocess.size[1]}"
                                f" differs from input '{name}' ({hw[0]}x{hw[1]})")
        return name, layout, preprocess.size
    if hw[0] is None or hw[1] is None:
        raise BadInputError(f"input '{name}' has no fixed height and width: give size= in "
                            "the preprocessing, or --input-shape")
    return name, layout, (int(hw[0]), int(hw[1]))


def _read_rgb(path: Path) -> "object":
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except Exception as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(f"cannot read image {path}: {why}") from None


def _resampling() -> int:
    from PIL import Image

    return getattr(Image, "Resampling", Image).BICUBIC


def _centre_crop(img: "object", size: tuple[int, int], crop: float) -> np.ndarray:
    """Resize so H x W is `crop` of the covering size, keep the centre H x W (uint8)."""
    h_out, w_out = size
    w, h = img.size  # type: ignore[attr-defined]
    scale = max(h_out / h, w_out / w) / crop
    nh, nw = max(h_out, round(h * scale)), max(w_out, round(w * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _resampling())  # type: ignore[attr-defined]
    pixels = np.asarray(img)
    top, left = (nh - h_out) // 2, (nw - w_out) // 2
    return pixels[top:top + h_out, left:left + w_out]


def _random_crop(img: "object", size: tuple[int, int], rng: np.random.Generator
                 ) -> np.ndarray:
    """A random region (CROP_AREA of the image, CROP_RATIO aspect jitter around the
    target's), resized to H x W, flipped left-right half the time (uint8)."""
    h_out, w_out = size
    w, h = img.size  # type: ignore[attr-defined]
    for _ in range(10):
        area = h * w * rng.uniform(*CROP_AREA)
        ratio = (w_out / h_out) * math.exp(rng.uniform(*np.log(CROP_RATIO)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        ch, cw = min(h, round(w * h_out / w_out)), min(w, round(h * w_out / h_out))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    region = img.resize((w_out, h_out), _resampling(),  # type: ignore[attr-defined]
                        box=(left, top, left + cw, top + ch))
    pixels = np.asarray(region)
    return pixels[:, ::-1] if rng.random() < 0.5 else pixels


def _load_images(files: list[Path], names: list[str], origin: str, model: Model,
                 preprocess: Preprocess, crops: int, seed: int) -> Samples:
    name, layout, size = _image_input(model, preprocess)
    rng = np.random.default_rng(seed)
    arrays, sources = [], []
    for path, source in zip(files, names):
        img = _read_rgb(path)
        views = [_centre_crop(img, size, preprocess.crop)]
        views += [_random_crop(img, size, rng) for _ in range(crops - 1)]
        for pixels in views:
            x = preprocess.normalise(pixels)
            arrays.append(x.transpose(2, 0, 1) if layout == "nchw" else x)
            sources.append(source)
    return Samples({name: np.stack(arrays).astype(np.float32)}, sources, origin)
