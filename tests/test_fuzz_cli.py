"""Property-based fuzzing of the CLI (issue 17): hostile option values, output paths and
mutated model protos. Whatever the input: the exit code is 0, 1, 2 or 3 (never 70, an
internal error), stderr has no traceback, no temporary or stray file is left behind, the
input model is unchanged, and memory stays bounded. Runs in-process in well under a
minute."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from rewriter.cli import main

FUZZ = settings(deadline=None, max_examples=int(os.environ.get("REWRITER_FUZZ_EXAMPLES", 400)),
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow],
                derandomize=not os.environ.get("REWRITER_FUZZ_RANDOM"), database=None)
ALLOWED = {0, 1, 2, 3}
MEMORY_LIMIT_MB = 3072  # peak resident memory of the whole test process


def base_model() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> depthwise Conv -> Relu (fold-bn and dw-to-dense
    have sites), small enough that every command takes milliseconds."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(8, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(8, np.float32), "bias"),
        numpy_helper.from_array(np.zeros(8, np.float32), "mean"),
        numpy_helper.from_array(np.ones(8, np.float32), "var"),
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "dw"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"],
                         name="bn"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "dw"], ["d"], pads=[1, 1, 1, 1], group=8, name="dwconv"),
        helper.make_node("Relu", ["d"], ["y"], name="relu2"),
    ]
    graph = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


BASE = base_model()
BASE_BYTES = BASE.SerializeToString()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def run(args: list[str], capsys) -> tuple[int, str]:
    before = peak_mb()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    # The process's peak only grows; a command that raises it past the limit is caught
    # here, by the growth it caused.
    grown = peak_mb() - before
    assert peak_mb() < MEMORY_LIMIT_MB or grown < 256, \
        f"{args[0]} raised the peak memory by {grown} MB to {peak_mb()} MB"
    return code, captured.err


def check(code: int, err: str, folder: Path, model: Path, before: str,
          allowed_files: set[str]) -> None:
    assert code in ALLOWED, f"exit {code}: {err}"
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    if code != 0:
        assert err.strip(), "a failure must say why"
    assert digest(model) == before, "the input model changed"
    for entry in folder.rglob("*"):
        rel = entry.relative_to(folder).as_posix()
        assert not entry.name.endswith(".tmp") and not entry.name.startswith("."), \
            f"left a temporary file {rel}"
        assert entry.parent != folder or entry.name in allowed_files, f"stray file {rel}"


@contextlib.contextmanager
def workspace(data: bytes = BASE_BYTES):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        model = folder / "m.onnx"
        model.write_bytes(data)
        yield folder, model, digest(model)


# -- hostile numbers --------------------------------------------------------------------
SPECIAL = ["nan", "inf", "-inf", "1e999", "-1e999", "-0", "0", "", "abc", "1e-320", "0x10",
           "1_000", " 5", "-1", "4294967296", "99999999999999999999999"]
NUMBER = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=1e-6, max_value=2.0).map(repr),
    st.integers(min_value=0, max_value=64).map(str),
)
SIZE = st.one_of(NUMBER, st.tuples(NUMBER, st.sampled_from(["K", "M", "G", "KiB", "Q", ""]))
                 .map("".join))
DIM = st.one_of(st.integers(min_value=-2, max_value=12),
                st.integers(min_value=-2**80, max_value=2**80),
                st.sampled_from([0, 10**5, 2**31, 2**63]))
SHAPE = st.lists(DIM, min_size=0, max_size=6).map(lambda dims: "x".join(map(str, dims)))
INPUT_SHAPE = st.one_of(
    SHAPE.map(lambda s: f"x={s}"),
    st.tuples(st.sampled_from(["x", "y", "", "x=x", "nope"]), SHAPE).map("=".join),
)

OPTION_CASES = st.one_of(
    st.tuples(st.just(["apply", "{model}", "--pass", "fold-bn", "-o", "{out}"]),
              st.lists(st.tuples(st.sampled_from(["--tolerance", "--seed", "--multiple"]),
                                 NUMBER), max_size=3)),
    st.tuples(st.just(["apply", "{model}", "--pass", "depth-multiplier",
                       "--allow-architecture-changes", "--recover", "refit", "-o", "{out}"]),
              st.lists(st.tuples(st.sampled_from(["--multiplier", "--multiple"]), NUMBER),
                       min_size=1, max_size=2)),
    st.tuples(st.just(["optimize", "{model}", "--target", "npu-p32", "--budget", "4",
                       "-o", "{out}"]),
              st.lists(st.one_of(
                  st.tuples(st.sampled_from(["--max-params", "--max-activations"]), SIZE),
                  st.tuples(st.sampled_from(["--seed", "--min-fidelity", "--budget"]),
                            NUMBER)), max_size=3)),
    st.tuples(st.sampled_from([["inspect", "{model}"], ["estimate", "{model}", "--target",
                                                        "npu-p32", "--json"],
                               ["sites", "{model}", "--pass", "fold-bn"]]),
              st.lists(st.tuples(st.sampled_from(["--input-shape", "--multiple", "--top"]),
                                 NUMBER), max_size=2)),
    st.tuples(st.just(["inspect", "{model}", "--json"]),
              st.lists(st.tuples(st.just("--input-shape"), INPUT_SHAPE), min_size=1,
                       max_size=3)),
    st.tuples(st.just(["apply", "{model}", "--pass", "fold-bn", "-o", "{out}"]),
              st.lists(st.tuples(st.just("--input-shape"), INPUT_SHAPE), min_size=1,
                       max_size=2)),
)


@FUZZ
@given(case=OPTION_CASES)
def test_fuzz_numeric_options(capsys, case):
    template, options = case
    with workspace() as (folder, model, before):
        out = folder / "o.onnx"
        args = [a.format(model=model, out=out) for a in template]
        for flag, value in options:
            args.append(f"{flag}={value}")  # '=' keeps values such as -1 from reading as flags
        code, err = run(args, capsys)
        check(code, err, folder, model, before, {"m.onnx", "o.onnx"})
        if code != 0:
            assert not out.exists(), "a failed command wrote its output"


# -- hostile paths ----------------------------------------------------------------------
OUT_PATHS = st.sampled_from(["o.onnx", ".", "m.onnx", "m.onnx/o.onnx", "missing/o.onnx",
                             "a" * 300 + ".onnx", "link.onnx", "sub/../m.onnx", "r.html",
                             "", "sub/o.onnx", "./o.onnx"])
REPORTS = st.sampled_from([None, "r", "r.html", "r.md", "m.onnx", "o.onnx", "link.onnx",
                           "sub", "new/dir/r", "m.onnx/r.html"])


@FUZZ
@given(command=st.sampled_from(["apply", "optimize", "zoo", "cost-fit"]), out=OUT_PATHS,
       report=REPORTS)
def test_fuzz_output_paths(capsys, command, out, report):
    with workspace() as (folder, model, before):
        (folder / "link.onnx").symlink_to(model)
        (folder / "sub").mkdir()
        target = str(folder / out) if out else ""
        if command == "apply":
            args = ["apply", model, "--pass", "fold-bn", "-o", target]
        elif command == "optimize":
            args = ["optimize", model, "--target", "npu-p32", "--budget", "4", "-o", target]
            if report is not None:
                args += ["--report", folder / report]
        elif command == "zoo":
            args = ["zoo", "mobilenetv2", "--width", "0.1", "--resolution", "16", "-o", target]
        else:
            args = ["cost", "fit", model, "-o", target]  # the model is no CSV: exit 2
        code, err = run(args, capsys)
        allowed = {"m.onnx", "link.onnx", "sub", "o.onnx", "r.html", "r.md", "new", "sub.html",
                   "sub.md", "o.onnx.html", "o.onnx.md"}
        check(code, err, folder, model, before, allowed)
        assert (folder / "link.onnx").is_symlink()


# -- mutated model protos ----------------------------------------------------------------
def mutate(proto: onnx.ModelProto, kind: str, data) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    if kind == "input_dims":
        dims = data.draw(st.lists(st.integers(-3, 2**40) | st.just(2**62), min_size=0,
                                  max_size=6))
        shape = g.input[0].type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            shape.dim.add().dim_value = d
    elif kind == "dangling":
        node = data.draw(st.sampled_from(list(g.node)))
        i = data.draw(st.integers(0, max(len(node.input) - 1, 0)))
        node.input[i] = data.draw(st.sampled_from(["nowhere", "", "y", "d", node.output[0]]))
    elif kind == "cycle":
        first, last = g.node[0], g.node[len(g.node) - 1]
        first.input[0] = last.output[0] if data.draw(st.booleans()) else first.output[0]
    elif kind == "init_dims":
        init = data.draw(st.sampled_from(list(g.initializer)))
        dims = data.draw(st.lists(st.integers(-1, 2**40), min_size=0, max_size=5))
        del init.dims[:]
        init.dims.extend(dims)
    elif kind == "op_type":
        node = data.draw(st.sampled_from(list(g.node)))
        node.op_type = data.draw(st.sampled_from(
            ["NonZero", "Unique", "Loop", "Gemm", "Nope", "Resize", "Reshape", "Identity",
             "ConstantOfShape", "MaxPool", "Softmax", "Flatten", ""]))
    elif kind == "attribute":
        node = data.draw(st.sampled_from(list(g.node)))
        name = data.draw(st.sampled_from(["pads", "strides", "group", "kernel_shape",
                                          "dilations", "epsilon"]))
        value = data.draw(st.one_of(st.integers(-5, 2**40),
                                    st.lists(st.integers(-5, 2**33), min_size=1, max_size=4)))
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute(name, value))
    elif kind == "opset":
        m.opset_import[0].version = data.draw(st.integers(-1, 3000))
    elif kind == "external":
        init = data.draw(st.sampled_from(list(g.initializer)))
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        entries = {"location": data.draw(st.sampled_from(
            ["../secret.bin", "/etc/passwd", "m.onnx", "", "a/../../secret.bin", "link.bin",
             "sub", "sub/../m.onnx", "secret.bin", "\\..\\secret.bin", "."])),
            "offset": data.draw(st.sampled_from(["0", "-1", "99999999", "x", ""])),
            "length": data.draw(st.sampled_from(["4", "16", "-4", "99999999999", ""]))}
        for key, value in entries.items():
            init.external_data.add(key=key, value=value)
    elif kind == "constant_of_shape":
        dims = data.draw(st.lists(st.integers(0, 2**20), min_size=1, max_size=4))
        g.initializer.append(numpy_helper.from_array(np.array(dims, np.int64), "cs_shape"))
        g.node.insert(0, helper.make_node("ConstantOfShape", ["cs_shape"], ["cs"]))
        g.node.append(helper.make_node("ReduceSum", ["cs"], ["cs_sum"], keepdims=0))
        g.output.append(helper.make_tensor_value_info("cs_sum", TensorProto.FLOAT, None))
    raw = m.SerializeToString()
    if kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif kind == "bitflip":
        flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 7)),
                                   min_size=1, max_size=8))
        buf = bytearray(raw)
        for pos, bit in flips:
            buf[pos] ^= 1 << bit
        raw = bytes(buf)
    return raw


MUTATIONS = ["truncate", "bitflip", "input_dims", "dangling", "cycle", "init_dims",
             "op_type", "attribute", "opset", "external", "constant_of_shape"]


@FUZZ
@given(kind=st.sampled_from(MUTATIONS), data=st.data(),
       command=st.sampled_from(["inspect", "estimate", "apply", "sites"]))
def test_fuzz_mutated_models(capsys, kind, data, command):
    raw = mutate(BASE, kind, data)
    with workspace(raw) as (folder, model, before):
        (folder / "secret.bin").write_bytes(b"S" * 64)
        (folder / "link.bin").symlink_to(folder / "secret.bin")
        out = folder / "o.onnx"
        args = {"inspect": ["inspect", model, "--json"],
                "estimate": ["estimate", model, "--target", "npu-p32", "--json"],
                "apply": ["apply", model, "--pass", "fold-bn", "-o", out],
                "sites": ["sites", model, "--pass", "dw-to-dense"]}[command]
        code, err = run(args, capsys)
        check(code, err, folder, model, before,
              {"m.onnx", "o.onnx", "secret.bin", "link.bin"})


def test_the_base_model_works(capsys):
    """The fuzzers mutate a model every command accepts."""
    with workspace() as (folder, model, before):
        code, err = run(["apply", model, "--pass", "fold-bn", "-o", folder / "o.onnx"], capsys)
        assert code == 0, err
        assert (folder / "o.onnx").exists() and digest(model) == before
        code, err = run(["optimize", model, "--target", "npu-p32", "--budget", "4",
                         "-o", folder / "p.onnx", "--report", folder / "r"], capsys)
        assert code == 0, err


@pytest.mark.parametrize("kind", MUTATIONS)
def test_each_mutation_kind_runs(kind):
    """Every mutation produces bytes (a smoke test of the generator itself)."""
    @settings(deadline=None, max_examples=3, database=None, derandomize=True)
    @given(data=st.data())
    def inner(data):
        assert isinstance(mutate(BASE, kind, data), bytes)

    inner()
