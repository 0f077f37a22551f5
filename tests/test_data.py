"""Calibration data: images and .npz files become Samples, split by source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from PIL import Image

from rewriter.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    Samples,
    load_samples,
    random_samples,
)
from rewriter.errors import BadInputError
from rewriter.fidelity import calibration_split, split_samples
from tests.helpers import load

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def image_model(shape=("N", 3, 32, 32), inputs=("x",)):
    """A tiny model: each input through GlobalAveragePool (NCHW) or ReduceMean, summed."""
    nodes, graph_inputs = [], []
    outs = []
    for name in inputs:
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        nodes.append(helper.make_node("ReduceMean", [name], [f"{name}_m"], axes=[2, 3],
                                      keepdims=0))
        outs.append(f"{name}_m")
    if len(outs) > 1:
        nodes.append(helper.make_node("Add", outs[:2], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", outs, ["y"]))
    graph = helper.make_graph(nodes, "tiny", graph_inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C"])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return load(proto)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of four skimage photos: two PNG (one upper-case .PNG), two JPEG."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    names = {"astronaut": "astronaut.png", "coffee": "coffee.JPG", "chelsea": "chelsea.PNG",
             "rocket": "rocket.jpeg"}
    for photo, file in names.items():
        Image.fromarray(getattr(data, photo)()).save(folder / file)
    (folder / "notes.txt").write_text("not an image")
    return folder


# -- Preprocess ------------------------------------------------------------------------
def test_parse_full_syntax():
    p = Preprocess.parse("size=224x192,mean=0.5:0.5:0.5,std=0.5,order=BGR,layout=nhwc,"
                         "scale=1,crop=1")
    assert p == Preprocess((224, 192), (0.5, 0.5, 0.5), (0.5,), False, "bgr", "nhwc", 1.0)
    assert Preprocess.parse(p.describe()) == p
    assert Preprocess.parse("size=96").size == (96, 96)
    assert Preprocess.parse(None) == Preprocess.parse("") == Preprocess.parse("imagenet")
    assert Preprocess().mean == IMAGENET_MEAN and Preprocess().std == IMAGENET_STD
    assert Preprocess.parse("scale=255").scale is True


@pytest.mark.parametrize("text", ["size=abc", "size=0", "bogus=1", "mean=1:2", "std=0",
                                  "order=grb", "layout=chw", "crop=1.5", "scale=3", "size",
                                  "size=1,size=2", "mean=a:b:c"])
def test_parse_bad_text_is_one_line(text):
    with pytest.raises(BadInputError) as info:
        Preprocess.parse(text)
    message = str(info.value)
    assert "\n" not in message and repr(text) in message


def one_colour_png(path: Path, size=(32, 32), colour=(200, 100, 50)) -> Path:
    Image.new("RGB", (size[1], size[0]), colour).save(path)
    return path


def test_preprocess_maths_on_one_pixel(tmp_path):
    """A 32x32 image of one colour fed to a 32x32 model: no resize, every pixel is
    ((pixel / 255) - mean) / std."""
    path = one_colour_png(tmp_path / "red.png")
    samples = load_samples(path, image_model())
    x = samples.inputs["x"]
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    expected = [(200 / 255 - 0.485) / 0.229, (100 / 255 - 0.456) / 0.224,
                (50 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[0, :, 5, 7], expected, rtol=1e-6)
    assert samples.sources == ["red.png"] and "red.png" in samples.origin


def test_bgr_nhwc_and_unscaled(tmp_path):
    path = one_colour_png(tmp_path / "c.png")
    nhwc = image_model(shape=("N", 32, 32, 3))
    p = Preprocess(mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 5.0), scale=False, order="bgr",
                   layout="nhwc")
    x = load_samples(path, nhwc, p).inputs["x"]
    assert x.shape == (1, 32, 32, 3)
    # BGR: blue first, and mean[0] / std[0] apply to it (the model's channel order)
    np.testing.assert_allclose(x[0, 3, 4], [(50 - 1) / 2, (100 - 2) / 4, (200 - 3) / 5])
    # layout=auto finds NHWC by itself
    auto = load_samples(path, nhwc, Preprocess(mean=(0.0,), std=(1.0,))).inputs["x"]
    np.testing.assert_allclose(auto[0, 0, 0], np.array([200, 100, 50]) / 255, rtol=1e-6)


def test_resize_shorter_side_then_centre_crop(tmp_path):
    """A 40x80 image (left half black, right half white) to 32x32 at crop=0.5: the shorter
    side becomes 64 (the image 64x128), the centre 32x32 straddles the boundary."""
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 40:] = 255
    Image.fromarray(img).save(tmp_path / "half.png")
    p = Preprocess(mean=(0.0,), std=(1.0,), crop=0.5)
    x = load_samples(tmp_path / "half.png", image_model(), p).inputs["x"][0]
    assert x.shape == (3, 32, 32)
    np.testing.assert_allclose(x[:, :, :12], 0.0, atol=0.01)
    np.testing.assert_allclose(x[:, :, 20:], 1.0, atol=0.01)
    assert Preprocess().crop == 0.875


def test_size_from_preprocess_for_dynamic_model(tmp_path):
    path = one_colour_png(tmp_path / "a.png", size=(50, 60))
    dynamic = image_model(shape=("N", 3, "H", "W"))
    with pytest.raises(BadInputError, match="size="):
        load_samples(path, dynamic)
    assert load_samples(path, dynamic, Preprocess(size=(24, 40))).inputs["x"].shape == (
        1, 3, 24, 40)
    with pytest.raises(BadInputError, match="differs"):
        load_samples(path, image_model(), Preprocess(size=(24, 40)))


def test_folder_of_photos(photos):
    samples = load_samples(photos, image_model())
    assert samples.sources == ["astronaut.png", "chelsea.PNG", "coffee.JPG", "rocket.jpeg"]
    assert samples.inputs["x"].shape == (4, 3, 32, 32)
    assert samples.origin.startswith("4 images from ") and samples.origin.endswith("/")
    assert np.all(np.isfinite(samples.inputs["x"]))
    # photos differ from each other, and differ from the flat grey of their mean
    assert np.std(samples.inputs["x"][0]) > 0.1


def test_crops_share_their_image_source(photos):
    samples = load_samples(photos, image_model(), crops_per_image=3, seed=1)
    assert len(samples) == 12
    assert samples.sources == [s for s in sorted(["astronaut.png", "chelsea.PNG",
                                                  "coffee.JPG", "rocket.jpeg"])
                               for _ in range(3)]
    x = samples.inputs["x"]
    single = load_samples(photos, image_model()).inputs["x"]
    np.testing.assert_array_equal(x[0], single[0])  # the first view is the centre crop
    assert not np.allclose(x[0], x[1]) and not np.allclose(x[1], x[2])
    again = load_samples(photos, image_model(), crops_per_image=3, seed=1).inputs["x"]
    np.testing.assert_array_equal(x, again)  # seeded
    fit, held = samples.split_by_source(0.25, seed=0)
    assert not set(fit.sources) & set(held.sources)
    assert len(held) == 3 and len(set(held.sources)) == 1


def test_bad_folders_and_files(tmp_path, photos):
    model = image_model()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    cases = [(empty, "no JPEG or PNG"), (tmp_path / "missing", "no such")]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"this is not a jpeg")
    cases.append((broken, "cannot read image"))
    (tmp_path / "data.csv").write_text("1,2")
    cases.append((tmp_path / "data.csv", "expected an .npz"))
    for path, why in cases:
        with pytest.raises(BadInputError, match=why) as info:
            load_samples(path, model)
        assert "\n" not in str(info.value)
    with pytest.raises(BadInputError, match="one image input"):
        load_samples(photos, image_model(inputs=("a", "b")))
    with pytest.raises(BadInputError, match="channels"):
        load_samples(photos, image_model(shape=("N", 1, 32, 32)))
    with pytest.raises(BadInputError, match="crops"):
        load_samples(photos, model, crops_per_image=0)


# -- .npz ------------------------------------------------------------------------------
def test_npz_with_and_without_sources(tmp_path):
    model = image_model(shape=("N", 3, 8, 8), inputs=("a", "b"))
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 3, 8, 8)), rng.standard_normal((6, 3, 8, 8))
    np.savez(tmp_path / "plain.npz", a=a, b=b, extra=np.zeros(2))
    plain = load_samples(tmp_path / "plain.npz", model)
    assert plain.sources == [f"plain.npz[{i}]" for i in range(6)]
    assert plain.origin == "plain.npz (6 samples)"
    assert plain.inputs["a"].dtype == np.float32 and set(plain.inputs) == {"a", "b"}
    np.testing.assert_allclose(plain.inputs["b"], b.astype(np.float32))
    tags = np.array(["p1", "p1", "p2", "p2", "p3", "p3"])
    np.savez(tmp_path / "tagged.npz", a=a, b=b, __source__=tags)
    tagged = load_samples(tmp_path / "tagged.npz", model)
    assert tagged.sources == list(tags)
    np.savez(tmp_path / "tagged2.npz", a=a, b=b, sources=tags)
    assert load_samples(tmp_path / "tagged2.npz", model).sources == list(tags)


@pytest.mark.parametrize("arrays, why", [
    ({"a": np.zeros((2, 3, 8, 8))}, "lacks b"),
    ({"a": np.zeros((2, 3, 8, 8)), "b": np.zeros((2, 3, 8, 9))}, "'b' is 2x3x8x9"),
    ({"a": np.zeros((2, 3, 8, 8)), "b": np.zeros((3, 8, 8))}, "batch first"),
    ({"a": np.zeros((2, 3, 8, 8)), "b": np.zeros((3, 3, 8, 8))}, "sample count"),
    ({"a": np.zeros((2, 3, 8, 8)), "b": np.full((2, 3, 8, 8), np.nan)}, "NaN"),
    ({"a": np.zeros((2, 3, 8, 8)), "b": np.full((2, 3, 8, 8), "x")}, "not numbers"),
    ({"a": np.zeros((0, 3, 8, 8)), "b": np.zeros((0, 3, 8, 8))}, "no samples"),
    ({"a": np.zeros((2, 3, 8, 8)), "b": np.zeros((2, 3, 8, 8)),
      "__source__": np.array(["x"])}, "1 sources for 2"),
])
def test_bad_npz(tmp_path, arrays, why):
    model = image_model(shape=("N", 3, 8, 8), inputs=("a", "b"))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BadInputError, match=why) as info:
        load_samples(tmp_path / "bad.npz", model)
    assert "\n" not in str(info.value)


def test_unreadable_npz(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(BadInputError, match="cannot read"):
        load_samples(tmp_path / "junk.npz", image_model())


# -- Samples ---------------------------------------------------------------------------
def samples_with(sources: list[str]) -> Samples:
    n = len(sources)
    return Samples({"x": np.arange(n, dtype=np.float32).reshape(n, 1)}, sources, "test")


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(sources=st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=40),
       fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_split_keeps_sources_apart(sources, fraction, seed):
    samples = samples_with(sources)
    if len(set(sources)) < 2:
        with pytest.raises(BadInputError, match="2 sources"):
            samples.split_by_source(fraction, seed)
        return
    fit, held = samples.split_by_source(fraction, seed)
    assert not set(fit.sources) & set(held.sources)  # no source on both sides
    ids = sorted(fit.inputs["x"][:, 0].tolist() + held.inputs["x"][:, 0].tolist())
    assert ids == list(range(len(sources)))  # every sample in exactly one part
    for part in (fit, held):
        assert len(part) > 0
        assert [sources[int(i)] for i in part.inputs["x"][:, 0]] == part.sources
        assert part.inputs["x"][:, 0].tolist() == sorted(part.inputs["x"][:, 0].tolist())
    again = samples.split_by_source(fraction, seed)
    assert again[1].sources == held.sources  # seeded


def test_split_fraction_of_sources():
    samples = samples_with([f"s{i}" for i in range(20) for _ in range(2)])
    fit, held = samples.split_by_source(0.25, seed=3)
    assert len(set(held.sources)) == 5 and len(set(fit.sources)) == 15
    assert held.origin == "test"


def test_take_batches_concat():
    samples = samples_with(["a", "b", "c", "d", "e"])
    part = samples.take([4, 0])
    assert part.sources == ["e", "a"] and part.inputs["x"][:, 0].tolist() == [4, 0]
    batches = samples.batches(2)
    assert [len(b["x"]) for b in batches] == [2, 2, 1]
    joined = samples.concat(part)
    assert len(joined) == 7 and joined.sources[-2:] == ["e", "a"]
    with pytest.raises(BadInputError):
        samples.concat(Samples({"y": np.zeros((1, 1))}, ["z"], "other"))
    with pytest.raises(BadInputError, match="disagree"):
        Samples({"x": np.zeros((2, 1))}, ["a"], "bad")


def test_random_samples():
    model = image_model(shape=(1, 3, 8, 8))
    samples = random_samples(model, 5, seed=2)
    assert samples.inputs["x"].shape == (5, 3, 8, 8)
    assert samples.sources == [f"random-{i}" for i in range(5)]
    np.testing.assert_array_equal(samples.inputs["x"], random_samples(model, 5, 2).inputs["x"])


# -- calibration_split -----------------------------------------------------------------
def test_calibration_split_by_source(photos):
    model = image_model()
    samples = load_samples(photos, model, crops_per_image=2)
    fit, held, warnings = split_samples(samples, seed=0)
    assert not set(fit.sources) & set(held.sources) and len(fit) + len(held) == 8
    assert any("held-out samples" in w for w in warnings)
    fit_b, held_b, _ = calibration_split(model, samples, seed=0)
    assert sum(len(b["x"]) for b in held_b) == len(held)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in held_b]), held.inputs["x"])
    # a path is loaded and split by source too
    fit_p, held_p, _ = calibration_split(model, photos)
    assert sum(len(b["x"]) for b in fit_p) == 3 and sum(len(b["x"]) for b in held_p) == 1


def test_calibration_split_npz_by_sample(tmp_path):
    model = image_model(shape=("N", 3, 8, 8))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((16, 3, 8, 8)))
    fit, held, _ = calibration_split(model, tmp_path / "c.npz")
    assert sum(len(b["x"]) for b in fit) == 12 and sum(len(b["x"]) for b in held) == 4
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 3, 8, 8)))
    with pytest.raises(BadInputError, match="one source"):
        calibration_split(model, tmp_path / "one.npz")


def test_calibration_split_old_forms_unchanged():
    model = image_model(shape=(1, 3, 8, 8))
    fit, held, warnings = calibration_split(model, None)
    assert (len(fit), len(held)) == (3, 1) and "random" in warnings[0]
    batches = [{"x": np.zeros((4, 3, 8, 8), np.float32)} for _ in range(8)]
    fit, held, warnings = calibration_split(model, batches)
    assert (len(fit), len(held), warnings) == (6, 2, [])
    with pytest.raises(BadInputError):
        calibration_split(model, batches[:1])
