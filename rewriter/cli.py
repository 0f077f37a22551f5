"""The `rewriter` command line.

Exit codes: 0 success; 1 verification failed (nothing written); 2 bad input (missing or
corrupt file, unknown pass, site or strategy, unsupported op or dynamic shape, a feature
not built yet); 3 no candidate within the memory budget; 70 internal error (a bug: set
REWRITER_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from rewriter.errors import BadInputError, RewriterError, VerificationError
from rewriter.tables import human, human_bytes, table


def _finite(value):
    """`value` with every non-finite float (inf, nan) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(value, indent: int | None = 2) -> str:
    """Strict JSON: never Infinity or NaN (a non-finite number prints as null)."""
    try:
        return json.dumps(value, indent=indent, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), indent=indent, allow_nan=False)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: type, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, what: str = ""):
    """An argparse `type` for a finite int/float within bounds (exit 2 with one line)."""

    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            fmt = "d" if kind is int else "g"
            lo = "" if low is None else f"{'(' if low_open else '['}{low:{fmt}}"
            hi = "" if high is None else f"{high:{fmt}}{')' if high_open else ']'}"
            span = (f"within {lo}, {hi}" if low is not None and high is not None
                    else f"{'>' if low_open else '>='} {low:{fmt}}" if low is not None
                    else f"{'<' if high_open else '<='} {high:{fmt}}")
            raise argparse.ArgumentTypeError(f"must be {span}{what}, got {text!r}")
        return value

    parse.__name__ = "integer" if kind is int else "number"
    return parse


_SEED = _number(int, low=0, high=2**32 - 1)
_POSITIVE_INT = _number(int, low=1, high=2**20)
_POSITIVE = _number(float, low=0.0, low_open=True)
_FRACTION = _number(float, low=0.0, high=1.0)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to an ONNX file")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3xHxW",
                   help="fix an input's dims (needed where H or W are dynamic); repeatable")


def _add_target_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, metavar="NAME|PATH",
                   help="built-in profile (npu-p32, npu-p16, cpu-ort) or a profile TOML")


def _read_files(args: argparse.Namespace, *names: str) -> list[str]:
    """The files (and folders) among `args.<name>` that the command reads."""
    return [getattr(args, n) for n in names if getattr(args, n, None)]


def _check_output(out, inputs: Sequence[str] = (), others: Sequence = (),
                  what: str = "output") -> Path:
    """Refuse a bad output path before any work (exit 2; rewriter.paths)."""
    from rewriter.paths import check_output_path

    return check_output_path(out, inputs=list(inputs), others=list(others), what=what)


def _load(args: argparse.Namespace):
    from rewriter.graph_io import load_model, parse_input_shapes

    return load_model(args.model, parse_input_shapes(args.input_shape))


# Ops whose output shape depends on the input values: a latency estimate needs every
# tensor's size, so these cannot be priced.
_DATA_DEPENDENT = {"NonZero", "Unique", "NonMaxSuppression", "Compress", "Loop", "If",
                   "Scan", "StringSplit"}


def _check_priceable(model) -> None:
    """Refuse (exit 2) what estimates cannot price: data-dependent or zero-size tensors."""
    for node in model.graph.nodes:
        if node.op in _DATA_DEPENDENT:
            raise BadInputError(f"data-dependent shape at node {node.name} ({node.op}): its "
                                "output size depends on the input values; latency cannot be "
                                "estimated")
    shapes = model.shapes
    for node in model.graph.nodes:
        for tensor in node.outputs:
            shape = shapes.get(tensor.name)
            if shape is not None and any(d <= 0 for d in shape):
                what = "zero-size" if min(shape) == 0 else "negative-size"
                raise BadInputError(f"{what} tensor '{tensor.name}' "
                                    f"({'x'.join(map(str, shape))}) at node {node.name} "
                                    f"({node.op}); latency cannot be estimated")


# Commands that run the model (verification, calibration) refuse one whose single tensor
# would exceed this (float32 at the analysis shapes; runs in float64 double it): a
# hostile model with a ConstantOfShape of a huge shape would otherwise exhaust memory.
MAX_TENSOR_BYTES = 2**30


def _check_runnable(model) -> None:
    """Refuse (exit 2) a model whose tensors are too large to run here."""
    shapes = model.shapes
    produced = [(node, tensor) for node in model.graph.nodes for tensor in node.outputs]
    for node, tensor in [*((None, t) for t in model.graph.inputs), *produced]:
        shape = shapes.get(tensor.name)
        if shape is None:
            continue
        where = "input" if node is None else f"of node {node.name} ({node.op})"
        if any(d < 0 for d in shape):
            raise BadInputError(f"tensor '{tensor.name}' {where} has the impossible shape "
                                f"{'x'.join(map(str, shape))}")
        size = 4 * math.prod(shape)
        if size > MAX_TENSOR_BYTES:
            raise BadInputError(
                f"tensor '{tensor.name}' {where} is {'x'.join(map(str, shape))}: it would "
                f"need {size / 2**30:,.1f} GiB; at most {MAX_TENSOR_BYTES / 2**30:g} GiB per "
                "tensor is supported")


@contextlib.contextmanager
def _geometry_errors():
    """The cost model's OpSpec refuses impossible layer geometry (channels not a multiple
    of the groups, say) that onnx's checker lets through: a bad model, exit 2."""
    try:
        yield
    except ValueError as exc:
        if not str(exc).startswith("OpSpec"):
            raise
        raise BadInputError(f"the model's layers are inconsistent: {exc}") from None


def _add_recovery_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="DATA",
                   help="unlabeled inputs to refit and recover weights: an .npz (input name "
                        "-> array), a folder of JPEG/PNG images or one image (default: "
                        "random inputs, with a warning)")
    p.add_argument("--eval-data", metavar="DATA",
                   help="inputs (same forms) to measure fidelity on, never used for "
                        "fitting (default: a quarter of the calibration sources)")
    p.add_argument("--preprocess", metavar="SPEC",
                   help="how images become inputs, e.g. size=224,mean=0.485:0.456:0.406,"
                        "std=0.229:0.224:0.225,order=rgb,layout=nchw (ImageNet defaults)")
    p.add_argument("--recover", choices=["distill", "refit"], default="distill",
                   help="distill: train the changed model against the original with PyTorch "
                        "(the [train] extra; default); refit: layer-wise ridge refit only")
    p.add_argument("--recover-budget", metavar="TIME|Nsteps",
                   help="distillation budget: 90s, 15m, 1h or 500steps (default 5m)")
    p.add_argument("--fidelity-metric", choices=["top1", "top5", "cosine"],
                   help="what --min-fidelity bounds (default: top1 for classifier outputs, "
                        "else cosine)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rewriter", description=__doc__.splitlines()[0])
    from rewriter import __version__

    parser.add_argument("--version", action="version", version=f"rewriter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("passes", help="list the passes and whether each is exact")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("inspect", help="analyse a model: ops, MACs, memory, blocks, sites")
    _add_model_options(p)
    p.add_argument("--multiple", type=_POSITIVE_INT, default=32, metavar="P",
                   help="parallelism factor for the channel-alignment sites (default 32)")
    p.add_argument("--ops", action="store_true", help="also print the per-op table")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("sites", help="list the sites where a pass applies, with their ids")
    _add_model_options(p)
    p.add_argument("--pass", dest="pass_name", required=True, metavar="NAME")
    p.add_argument("--multiple", type=_POSITIVE_INT, default=32, metavar="P")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("apply", help="apply a pass, verify in onnxruntime, write the result")
    _add_model_options(p)
    p.add_argument("--pass", dest="pass_name", required=True, metavar="NAME")
    p.add_argument("--site", action="append", metavar="ID", help="only these sites (repeatable)")
    p.add_argument("--multiple", type=_POSITIVE_INT, default=32, metavar="P",
                   help="P for align-channels-up/down and depth-multiplier (default 32)")
    p.add_argument("--multiplier", type=_number(float, low=0.0, high=1.0, low_open=True,
                                                high_open=True), metavar="M",
                   help="factor of depth-multiplier (default 0.5)")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--inputs", metavar="FILE.npz", help="verification inputs keyed by input name")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the random verification inputs")
    p.add_argument("--tolerance", type=_POSITIVE, default=1e-4,
                   help="max error relative to each output's scale (default 1e-4)")
    p.add_argument("--allow-architecture-changes", action="store_true",
                   help="needed for passes that change the function (fuse-ibn, "
                   "align-channels-down, depth-multiplier)")
    _add_recovery_options(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("recover", help="recover a model changed by `apply` from unlabeled "
                                       "data (distillation) and measure its fidelity")
    p.add_argument("original", help="the original ONNX model (the teacher)")
    p.add_argument("model", help="the architecture-changed ONNX model (the student)")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3xHxW",
                   help="fix an input's dims (needed where H or W are dynamic); repeatable")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--min-fidelity", type=_FRACTION, metavar="F",
                   help="exit 1 and write nothing when the recovered fidelity, one standard "
                        "error down, is below F")
    _add_recovery_options(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("estimate", help="estimate latency and memory on a target")
    _add_model_options(p)
    _add_target_option(p)
    p.add_argument("--top", type=int, default=15, metavar="N",
                   help="print the N slowest kernels (0: all)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("optimize", help="choose the rewrites that lower latency on a target")
    _add_model_options(p)
    _add_target_option(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--strategy", default="greedy", help="greedy (default), evolution or random")
    p.add_argument("--max-params", metavar="BYTES", help="parameter budget, e.g. 4M")
    p.add_argument("--max-activations", metavar="BYTES", help="peak activation budget, e.g. 2M")
    p.add_argument("--budget", metavar="N|Ns", help="candidates (500) or seconds (30s)")
    p.add_argument("--seed", type=_SEED, default=0)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", action="store_true", help="exact rewrites only (the default)")
    mode.add_argument("--allow-architecture-changes", action="store_true",
                      help="also rewrites that change the function (fuse-ibn, "
                           "align-channels-down, depth-multiplier), weights refitted")
    p.add_argument("--min-fidelity", type=_FRACTION, metavar="F",
                   help="lowest fidelity (--fidelity-metric) of any output to the original's "
                        "on held-out data after recovery, one standard error down "
                        "(default 0.99)")
    _add_recovery_options(p)
    p.add_argument("--multipliers", metavar="M,M",
                   help="depth multipliers to try (default 0.75,0.5)")
    p.add_argument("--passes", metavar="NAME,NAME",
                   help="search only these passes (default: all the mode allows)")
    p.add_argument("--validate-with", choices=["zigzag"],
                   help="re-simulate the original and the result on the ZigZag accelerator "
                        "a ZigZag-fitted target (edge-tpu-zz, tpu-zz) was fitted on")
    p.add_argument("--inputs", metavar="FILE.npz", help="verification inputs keyed by input name")
    p.add_argument("--report", metavar="PATH", help="write an HTML/Markdown report")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("optimize-many", help="optimize many models for one or more targets "
                                             "in parallel; one summary table",
                       epilog="exit codes: 0 every model x target optimized; "
                              f"{OPTIMIZE_MANY_FAILED} some failed (each row says why; the "
                              "others were written); 2 bad options, before any work")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="ONNX files, or folders (their *.onnx)")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3xHxW",
                   help="fix an input's dims in every model (where H or W are dynamic); "
                        "repeatable")
    p.add_argument("--target", required=True, metavar="NAME[,NAME]",
                   help="built-in profiles or profile TOMLs, comma-separated")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="writes OUTDIR/<model>.<target>.onnx, summary.md and summary.json")
    p.add_argument("--strategy", default="greedy", help="greedy (default), evolution or random")
    p.add_argument("--budget", metavar="N|Ns",
                   help="candidates (500) or seconds (30s; a time budget makes results "
                        "depend on the machine's load)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--max-params", metavar="BYTES", help="parameter budget, e.g. 4M")
    p.add_argument("--max-activations", metavar="BYTES", help="peak activation budget, e.g. 2M")
    p.add_argument("--workers", type=_POSITIVE_INT, metavar="N",
                   help="processes of the local pool (default: the cores; 1: serial), or "
                        "the CPUs of --ray local. Latency here is estimated, not timed; "
                        "onnxruntime timings (cost measure) always run serially, since "
                        "co-scheduled runs disturb each other's timings")
    p.add_argument("--ray", metavar="auto|ADDRESS|local",
                   help="run on Ray (pip install 'rewriter[ray]'): auto (the cluster of "
                        "`ray start` on this machine), HEAD:6379, or local (a private "
                        "instance for this run)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    cost = sub.add_parser("cost", help="measure ops, fit and validate latency estimators")
    cost_sub = cost.add_subparsers(dest="cost_command", required=True, parser_class=_Parser)
    p = cost_sub.add_parser("measure", help="time sampled one-op models in onnxruntime -> CSV")
    p.add_argument("-n", type=_number(int, low=1, high=10**7), default=2000,
                   help="number of sampled ops (default 2000)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--parallelism", type=_POSITIVE_INT, default=32, metavar="P",
                   help="channel counts are sampled around multiples of P (default 32)")
    p.add_argument("--space", default="default",
                   choices=["default", "wide", "oblong", "stem", "layout", "head"],
                   help="wide: MAC layers only, from the corners the default space samples "
                        "thinly (1x1 maps, 8-1280 channels log-uniform); oblong: gemms over "
                        "2-512 rows and convs on non-square maps; stem: first convs (1-4 "
                        "input channels on 32-640 pixel images); layout: onnxruntime's "
                        "layout conversions and x2-x8 upsampling, blocked or not; head: 1-64 "
                        "channel class maps upsampled x2-x16 to the image, and their "
                        "conversion out of the blocked layout")
    p.add_argument("--repeats", type=_number(int, low=1, high=10**6), default=20)
    p.add_argument("--threads", type=_number(int, low=0, high=4096), default=1,
                   help="onnxruntime intra-op threads, recorded in the CSV (default 1)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "zigzag"],
                   help="time on this machine, or simulate on a ZigZag accelerator "
                        "(pip install -e '.[zigzag]')")
    p.add_argument("--accelerator", default="edge_tpu_like",
                   help="ZigZag accelerator description (default edge_tpu_like)")
    p.add_argument("--clock-hz", type=_number(float, low=1e3, high=1e13), default=1e9,
                   help="ZigZag cycles to ms at this clock (default 1e9: 1 ms = 1e6 cycles)")
    p.add_argument("-o", "--output", required=True, metavar="CSV")
    p.add_argument("--append", action="store_true",
                   help="add the new rows to those already in the output CSV (the file is "
                        "rewritten in this tool's columns: columns it does not know are "
                        "dropped, latencies kept to 6 significant digits)")
    p = cost_sub.add_parser("fit", help="fit a regression estimator on a measurement CSV")
    p.add_argument("csv", help="measurements (ours, or your device's; see docs of columns)")
    p.add_argument("-o", "--output", required=True, metavar="ESTIMATOR.json")
    p.add_argument("--parallelism", type=_POSITIVE_INT, default=8, metavar="P",
                   help="P for the channel-tile features (default 8, a CPU's SIMD lanes)")
    p.add_argument("--map-tile", default="1x1", metavar="OXxOY",
                   help="output pixels the array unrolls, columns x rows (default 1x1; "
                        "ZigZag's edge_tpu_like: 4x4), for the ideal-cycles feature")
    p.add_argument("--holdout", type=_number(float, low=0.0, high=1.0, high_open=True),
                   default=0.2,
                   help="share of rows held out to report accuracy (default 0.2)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--json", action="store_true")
    p = cost_sub.add_parser("validate", help="whole models: measured latency vs estimate")
    p.add_argument("--target", default="cpu-ort", metavar="NAME|PATH",
                   help="a measured target on this machine (default cpu-ort), or a "
                        "ZigZag-fitted one (edge-tpu-zz, tpu-zz): models simulated whole")
    p.add_argument("--model", action="append", default=[], metavar="PATH[,NAME=SHAPE]",
                   help="also validate on this model (repeatable)")
    p.add_argument("--quick", action="store_true", help="8 zoo variants instead of 48")
    p.add_argument("--no-zoo", action="store_true", help="only the --model models")
    p.add_argument("--pairs", action="store_true",
                   help="ZigZag-fitted targets: also each model against its exact optimize "
                        "result and its every-site fuse-ibn form (is the gain's sign right?)")
    p.add_argument("--repeats", type=_number(int, low=1, high=10**6), default=30)
    p.add_argument("--retime-ops", type=int, default=0, metavar="N",
                   help="measured targets of this machine: after the models, time N of the "
                        "target's own ops again and scale its estimates by how fast they run "
                        "now (the machine's speed drifts; default 0: as fitted)")
    p.add_argument("--json", action="store_true")

    p = cost_sub.add_parser("kit", help="write a folder of small ONNX models to time on any "
                                        "device (a measurement kit)")
    p.add_argument("-o", "--output", required=True, metavar="KIT/",
                   help="the kit folder (new or empty)")
    p.add_argument("--models", metavar="M.onnx,M.onnx",
                   help="time these models' kernels and their candidate rewrites' first, then "
                        "their neighbours")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3xHxW",
                   help="fix an input's dims of the --models (repeatable)")
    p.add_argument("-n", type=_number(int, low=0, high=100_000), default=500,
                   help="one-op models from the models, their neighbours and the spaces "
                        "(default 500; the rewrite pairs, blocks and baselines come on top)")
    p.add_argument("--space", default="default", metavar="SPACE[,SPACE]",
                   help="sampling spaces of `cost measure` to draw the rest from (default "
                        "default)")
    p.add_argument("--like", metavar="NAME|PATH",
                   help="order the models' kernels by their estimate on this target, and "
                        "sample channels around its parallelism")
    p.add_argument("--parallelism", type=_POSITIVE_INT, metavar="P",
                   help="channel counts are sampled around multiples of P (default: "
                        "--like's, else 32)")
    p.add_argument("--seed", type=_SEED, default=0)
    p = cost_sub.add_parser("run-kit", help="time a kit's models in onnxruntime on an "
                                            "execution provider -> id,latency_ms CSV")
    p.add_argument("kit", metavar="KIT/")
    p.add_argument("--provider", default="CPUExecutionProvider",
                   help="onnxruntime execution provider (default CPUExecutionProvider; "
                        "CUDAExecutionProvider, TensorrtExecutionProvider, ... where installed)")
    p.add_argument("--warmup", type=_number(int, low=0, high=10**6), default=10)
    p.add_argument("--repeats", type=_number(int, low=1, high=10**6), default=50,
                   help="timed runs per model; the median is kept (default 50)")
    p.add_argument("--threads", type=_number(int, low=0, high=4096), default=0,
                   help="onnxruntime intra-op threads (default 0: onnxruntime's choice)")
    p.add_argument("-o", "--output", required=True, metavar="TIMINGS.csv")
    p = cost_sub.add_parser("import", help="a measured profile from a kit's timings: check, "
                                           "fit, report held-out accuracy")
    p.add_argument("kit", metavar="KIT/")
    p.add_argument("timings", metavar="TIMINGS.csv", help="id,latency_ms rows")
    p.add_argument("-o", "--output", required=True, metavar="DEVICE.toml",
                   help="the profile; DEVICE.csv (kernel times) and DEVICE.timings.csv (every "
                        "timing imported so far) are written beside it")
    p.add_argument("--like", metavar="NAME|PATH",
                   help="also try this target's op model corrected to the timings, and keep "
                        "it where it cross-validates better (few-shot)")
    p.add_argument("--estimator", default="auto", choices=["auto", "scratch", "corrected"],
                   help="auto (default): the better cross-validated of fitting from scratch "
                        "and correcting --like's op model; or either one")
    p.add_argument("--name", help="the target's name (default: the profile's file name)")
    p.add_argument("--device", help="the device, as recorded in the CSV (default: the name)")
    p.add_argument("--free-kinds", default="", metavar="KIND,KIND",
                   help="op kinds that cost nothing on the device (a simulator of MAC layers)")
    p.add_argument("--parallelism", type=_POSITIVE_INT, metavar="P",
                   help="the device's channel lanes, for the tile features (default: "
                        "--like's, else 8)")
    p.add_argument("--map-tile", metavar="OXxOY",
                   help="output pixels the device unrolls (default: --like's, else 1x1)")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the cross-validation folds")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("zoo", help="build a model of the project's zoo")
    p.add_argument("name", help="mobilenetv2, mobilenetv3, ssdlite or lraspp")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--width", type=_number(float, low=0.0, low_open=True, high=16.0),
                   default=1.0)
    p.add_argument("--resolution", type=_number(int, low=1, high=4096), default=224)
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--opset", type=_number(int, low=1, high=1000), default=13)
    p.add_argument("--static-padding", action="store_true",
                   help="write each padded conv as an explicit zero Pad + unpadded conv, as "
                        "TF-style 'SAME' exports (EfficientNet-Lite ports, tf2onnx) do")
    return parser


# -- commands ----------------------------------------------------------------------------
def cmd_passes(args: argparse.Namespace) -> int:
    from rewriter.passes import PASSES

    if args.json:
        print(_json([{"name": c.name, "exact": c.exact, "summary": c.summary}
                          for c in PASSES.values()], indent=2))
        return 0
    width = max(len(n) for n in PASSES)
    for name, cls in PASSES.items():
        print(f"{name:<{width}}  {'exact' if cls.exact else 'architecture change':<19}  "
              f"{cls.summary}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from rewriter.analysis.summary import analyse

    model = _load(args)
    result = analyse(model, multiple=args.multiple)
    if args.json:
        data = result.to_dict()
        if not args.ops:
            data.pop("ops")
        data["model"] = args.model
        print(_json(data, indent=2))
        return 0
    print(f"model   {args.model}  (opset {result.opset}, {len(result.ops)} nodes)")
    print("inputs  " + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in result.inputs.items()))
    print("outputs " + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in result.outputs.items()))
    print(f"params  {result.params:,} ({human_bytes(result.param_bytes)})   "
          f"MACs {human(result.macs)}"
          f"   peak activations {human_bytes(result.peak_activation_bytes)} "
          f"(at {result.peak_step})")
    counts = result.to_dict()["op_counts"]
    print("ops     " + ", ".join(f"{op} {n}" for op, n in counts.items()))
    ibns = [b for b in result.blocks if b.kind == "inverted_bottleneck"]
    print(f"\ninverted bottlenecks: {len(ibns)}")
    if ibns:
        rows = [[b.nodes[0], b.in_channels, b.out_channels, f"{b.expansion:g}",
                 f"{b.kernel}x{b.kernel}", b.stride, "yes" if b.residual else "",
                 "yes" if b.squeeze_excite else "", b.activation] for b in ibns]
        print(table(["first node", "in", "out", "expansion", "kernel", "stride", "residual",
                     "SE", "activation"], rows))
    others = len(result.blocks) - len(ibns)
    print(f"conv -> BN -> act chains outside them: {others}")
    free = [g for g in result.groups if not g.is_frozen]
    shrink_only = sum(not g.can_pad for g in free)
    print(f"\nchannel groups: {len(result.groups)} ({len(free)} free"
          f"{f', {shrink_only} of them may only shrink' if shrink_only else ''}, "
          f"{len(result.groups) - len(free)} frozen)")
    for reason, count in result.frozen_reasons.items():
        print(f"  frozen: {count} {'group' if count == 1 else 'groups'} {reason}")
    print("\nsites   " + ", ".join(f"{k} {v}" for k, v in result.sites.items())
          + f"   (align at P={args.multiple})")
    for name, why in result.no_sites.items():
        print(f"  {name}: {why}")
    if result.canonical_notes:
        print("\ncanonical form: " + "; ".join(result.canonical_notes))
    if args.ops:
        rows = [[r.name, r.op_type, "x".join(map(str, r.output_shape)), human(r.macs), r.params]
                for r in result.ops]
        print("\n" + table(["node", "op", "output", "MACs", "params"], rows))
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    from rewriter.passes import get_pass

    rule = get_pass(args.pass_name, args.multiple)
    model = _load(args)
    found = rule.sites(model)
    if args.json:
        print(_json([s.to_dict() for s in found], indent=2))
        return 0
    if not found:
        print(f"{rule.name}: no sites")
    for site in found:
        print(f"{site.id}\t{site.description}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from rewriter.graph_io import save_model
    from rewriter.passes import get_pass
    from rewriter.rewrite import apply_pass
    from rewriter.verify import load_inputs, verify

    out = _check_output(args.output, _read_files(args, "model", "inputs", "calibration",
                                                 "eval_data"))
    rule = get_pass(args.pass_name, args.multiple, multiplier=args.multiplier)
    if not rule.exact:
        return _apply_architecture_change(args, rule, out)
    model = _load(args)
    _check_runnable(model)
    inputs = load_inputs(args.inputs, model) if args.inputs else None
    result = apply_pass(model, rule, args.site)
    report = verify(model, result.model, inputs, seed=args.seed, tolerance=args.tolerance)
    summary = {
        "model": args.model,
        "pass": rule.name,
        "exact": rule.exact,
        "applied": [s.to_dict() for s in result.applied],
        "skipped": [{"id": i, "why": w} for i, w in result.skipped],
        "verification": report.to_dict(),
        "output": None,
    }
    if report.passed and result.applied:
        result.model.metadata["rewriter.passes"] = ",".join(
            filter(None, [model.metadata.get("rewriter.passes", ""),
                          *(f"{s.pass_name}@{s.id}" for s in result.applied)]))
        save_model(result.model, out)
        summary["output"] = str(out)
    if args.json:
        print(_json(summary, indent=2))
    else:
        shown = result.applied if len(result.applied) <= 12 else result.applied[:10]
        for site in shown:
            print(f"applied  {rule.name} @ {site.id}: {site.description}")
        if len(shown) < len(result.applied):
            print(f"applied  {rule.name} at {len(result.applied) - len(shown)} more sites "
                  "(--json lists all)")
        for site_id, why in result.skipped:
            print(f"skipped  {rule.name} @ {site_id}: {why}")
        if not result.applied:
            print(f"{rule.name}: no sites to apply; nothing written")
        print(report.summary())
        if summary["output"]:
            print(f"wrote {out}")
    if not report.passed:
        raise VerificationError(f"{report.summary()}; nothing written")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    target = _target(args.target)
    model = _load(args)
    _check_priceable(model)
    with _geometry_errors():
        result = target.estimate(model)
    if args.json:
        print(_json({"model": args.model, **result.to_dict()}, indent=2))
        return 0
    util = result.utilisation
    print(f"target  {result.target}   latency {result.latency_ms:.4f} ms"
          + (f"   MAC-array utilisation {100 * util:.1f}%" if util is not None else ""))
    print(f"memory  params {human_bytes(result.param_bytes)}   peak activations "
          f"{human_bytes(result.peak_activation_bytes)}")
    ranked = sorted(result.ops, key=lambda o: -o.latency_ms)
    shown = ranked if args.top <= 0 else ranked[:args.top]
    rows = [[o.name, o.kind, f"{o.latency_ms:.4f}",
             f"{100 * o.latency_ms / result.latency_ms:.1f}%",
             "" if o.utilisation is None else f"{100 * o.utilisation:.0f}%"] for o in shown]
    print(f"\n{len(result.ops)} kernels; the {len(shown)} slowest:")
    print(table(["kernel", "kind", "ms", "share", "util"], rows))
    return 0


def _target(name_or_path: str):
    from rewriter.cost.estimate import Target
    from rewriter.cost.profile import ProfileError

    try:
        return Target.load(name_or_path)
    except ProfileError as exc:
        raise BadInputError(str(exc)) from None


def _multipliers(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise BadInputError(f"bad --multipliers {text!r}: numbers between 0 and 1, e.g. 0.75,0.5")
    return values


def cmd_optimize(args: argparse.Namespace) -> int:
    from rewriter.cost.memory import parse_bytes
    from rewriter.graph_io import save_model
    from rewriter.paths import check_output_path, same_file
    from rewriter.search import Budget, optimize
    from rewriter.search.report import report_paths
    from rewriter.verify import load_inputs

    read = _read_files(args, "model", "inputs", "calibration", "eval_data")
    if Path(args.target).is_file():
        read.append(args.target)
    reports = report_paths(args.report) if args.report else []
    out = _check_output(args.output, read, [*reports, *([args.report] if args.report else [])])
    if args.report:  # the path as given, too: a report named like an input is a slip
        for given in read:
            if same_file(Path(args.report), Path(given)):
                raise BadInputError(f"--report {args.report} names the input {given}; "
                                    "choose another path")
    for report in reports:
        check_output_path(report, inputs=read, others=[out, *(r for r in reports if r != report)],
                          what="--report", create_parents=True)
    max_params = parse_bytes(args.max_params) if args.max_params else None
    max_acts = parse_bytes(args.max_activations) if args.max_activations else None
    budget = Budget.parse(args.budget)
    target = _target(args.target)
    model = _load(args)
    _check_priceable(model)
    _check_runnable(model)
    inputs = load_inputs(args.inputs, model) if args.inputs else None
    if not args.allow_architecture_changes:
        ignored = [flag for flag, value in (
            ("--min-fidelity", args.min_fidelity), ("--calibration", args.calibration),
            ("--eval-data", args.eval_data), ("--recover-budget", args.recover_budget),
            ("--fidelity-metric", args.fidelity_metric), ("--multipliers", args.multipliers))
            if value is not None]
        if ignored:
            verb = "matters" if len(ignored) == 1 else "matter"
            print(f"warning: {', '.join(ignored)} only {verb} with "
                  "--allow-architecture-changes; ignored", file=sys.stderr)
    given = {}  # the rest keep optimize's defaults
    if args.min_fidelity is not None:
        given["min_fidelity"] = args.min_fidelity
    if args.multipliers is not None:
        given["multipliers"] = _multipliers(args.multipliers)
    with _geometry_errors():
        result = optimize(model, target, strategy=args.strategy, max_param_bytes=max_params,
                          max_activation_bytes=max_acts, budget=budget, seed=args.seed,
                          exact=not args.allow_architecture_changes, inputs=inputs,
                          progress=not args.json and sys.stderr.isatty(),
                          calibration=args.calibration, eval_data=args.eval_data,
                          preprocess=args.preprocess, recover=args.recover,
                          recover_budget=args.recover_budget,
                          fidelity_metric=args.fidelity_metric,
                          passes=args.passes.split(",") if args.passes else None, **given)
    emulated = None
    if args.validate_with == "zigzag":
        from rewriter.cost.zigzag import ZigZagError
        from rewriter.cost.zigzag_models import validate_with_zigzag

        try:
            emulated = validate_with_zigzag(model, result.model, target,
                                            progress=not args.json and sys.stderr.isatty())
        except ZigZagError as exc:
            raise BadInputError(f"--validate-with zigzag: {exc}") from None
        result.notes.append(
            f"ZigZag {emulated['accelerator']}: {emulated['zigzag_original_ms']:.4f} -> "
            f"{emulated['zigzag_optimized_ms']:.4f} ms simulated "
            f"({-emulated['zigzag_gain_pct']:+.1f}%; estimated "
            f"{-emulated['estimated_gain_pct']:+.1f}%)")
    save_model(result.model, out)
    written = [str(out)]
    if args.report:
        from rewriter.search.report import write_report

        data = result.report_data(args.model, {"max_param_bytes": max_params,
                                               "max_activation_bytes": max_acts})
        written += [str(p) for p in write_report(data, args.report)]
    if args.json:
        print(_json({"model": args.model, "output": str(out), **result.to_dict(),
                          "zigzag": emulated, "written": written}, indent=2))
        return 0
    b, a = result.before, result.after

    def change(x: float, y: float) -> str:
        return f"{100 * (y - x) / x:+.1f}%" if x else ""

    print(table(["", "before", "after", "change"], [
        ["latency (ms)", f"{b.latency_ms:.4f}", f"{a.latency_ms:.4f}",
         change(b.latency_ms, a.latency_ms)],
        ["params", human_bytes(b.param_bytes), human_bytes(a.param_bytes),
         change(b.param_bytes, a.param_bytes)],
        ["peak activations", human_bytes(b.peak_activation_bytes),
         human_bytes(a.peak_activation_bytes),
         change(b.peak_activation_bytes, a.peak_activation_bytes)],
    ]))
    print(f"\n{result.target}, {result.strategy}, {result.evaluated} candidates in "
          f"{result.elapsed_s:.1f} s; {len(result.decisions)} rewrites kept")
    for d in sorted(result.decisions, key=lambda d: -d.gain_ms):
        label = "" if d.exact else " [architecture change]"
        print(f"  {d.pass_name} @ {d.site}: -{d.gain_ms:.4f} ms  ({d.description}){label}")
    for note in result.notes:
        print(f"note: {note}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.fidelity is not None:
        if result.fidelity.before_recovery is not None:
            print(f"fidelity before recovery: {result.fidelity.before_recovery.summary()}")
        print(f"fidelity (floor {result.min_fidelity}): {result.fidelity.summary()}")
    print(result.verification.summary())
    print("wrote " + ", ".join(written))
    return 0


# optimize-many: some model x target pairs failed (their rows say why), the others written
OPTIMIZE_MANY_FAILED = 4


def _model_files(given: Sequence[str]) -> list[str]:
    """MODELS as given, a folder replaced by its *.onnx files (sorted); each file once."""
    from rewriter.paths import same_file

    found: list[str] = []
    for text in given:
        path = Path(text)
        if path.is_dir():
            inside = sorted(str(p) for p in path.glob("*.onnx") if p.is_file())
            if not inside:
                raise BadInputError(f"no *.onnx files in the folder {path}")
            found += inside
        else:
            found.append(text)  # a missing or bad file fails its rows, not the run
    unique: list[str] = []
    for name in found:
        if not any(same_file(Path(name), Path(kept)) for kept in unique):
            unique.append(name)
    return unique


def cmd_optimize_many(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rewriter.cost.memory import parse_bytes
    from rewriter.graph_io import parse_input_shapes
    from rewriter.parallel import make_executor
    from rewriter.paths import check_output_path, same_file
    from rewriter.search import STRATEGIES, Budget
    from rewriter.search.batch import HEADERS, Job, optimize_many, write_summary

    if args.strategy not in STRATEGIES:
        raise BadInputError(f"unknown strategy {args.strategy!r}; strategies are: "
                            f"{', '.join(STRATEGIES)}")
    budget = Budget.parse(args.budget)
    max_params = parse_bytes(args.max_params) if args.max_params else None
    max_acts = parse_bytes(args.max_activations) if args.max_activations else None
    shapes = parse_input_shapes(args.input_shape) or None
    models = _model_files(args.models)
    targets: dict[str, object] = {}
    for name in (n.strip() for n in args.target.split(",")):
        if not name:
            continue
        target = _target(name)
        if target.name in targets:
            raise BadInputError(f"--target names {target.name} twice")
        targets[target.name] = target
    if not targets:
        raise BadInputError("--target needs at least one target")
    read = [*models, *(n for n in args.target.split(",") if Path(n.strip()).is_file())]
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise BadInputError(f"output folder {outdir} is a file")
    jobs, writers = [], {}
    for model in models:
        for target in targets.values():
            out = outdir / f"{Path(model).stem}.{target.name}.onnx"
            if out in writers:
                raise BadInputError(f"{writers[out]} and {model} would both write {out}: "
                                    "rename one")
            writers[out] = model
            jobs.append(Job(model, target, str(out), args.strategy, args.seed, budget,
                            max_params, max_acts, checks=(_check_priceable, _check_runnable),
                            input_shapes=shapes))
    # the outputs have distinct names by construction; only an input in OUTDIR can collide
    inside = [r for r in read if same_file(Path(r).parent, outdir)]
    for out in [*writers, outdir / "summary.md", outdir / "summary.json"]:
        check_output_path(out, inputs=inside, create_parents=True)  # OUTDIR may not exist yet
    with make_executor(args.workers, args.ray) as executor:  # Ray connects here
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInputError(f"cannot create {outdir}: {exc.strerror or exc}") from None
        with tqdm(total=len(jobs), desc="optimize-many", unit="run",
                  disable=args.json or not sys.stderr.isatty()) as bar:
            summary = optimize_many(jobs, executor, on_row=lambda row: bar.update())
    written = [str(p) for p in write_summary(summary, outdir)]
    models_written = [r.output for r in summary.rows if r.output]
    if args.json:
        print(_json({**summary.to_dict(), "written": [*models_written, *written]}))
    else:
        print(table(HEADERS[:-1], [cells[:-1] for cells in summary.cells()]))
        print(f"\n{summary.headline()}")
        print(f"wrote {len(models_written)} models in {outdir}, " + ", ".join(written))
    for row in summary.failed:
        print(f"rewriter: error: {row.model} for {row.target}: {row.error}", file=sys.stderr)
    return OPTIMIZE_MANY_FAILED if summary.failed else 0


def cmd_cost(args: argparse.Namespace) -> int:
    return {"measure": _cost_measure, "fit": _cost_fit, "validate": _cost_validate,
            "kit": _cost_kit, "run-kit": _cost_run_kit, "import": _cost_import}[
        args.cost_command](args)


def _cost_measure(args: argparse.Namespace) -> int:
    from rewriter.cost.measure import calibrate, measure_specs, read_csv, sample_specs, write_csv

    if args.n < 1 or args.repeats < 1 or args.threads < 0:
        raise BadInputError("-n and --repeats must be positive, --threads >= 0")
    out = _check_output(args.output)
    kept = []
    if args.append and out.exists():
        kept = read_csv(out)  # a bad file fails here, before any measuring
    specs = sample_specs(args.n, args.seed, args.parallelism, args.space)
    if args.backend == "zigzag":
        from rewriter.cost.zigzag import SUPPORTED_KINDS, measure_zigzag

        specs = [s for s in specs if s.kind in SUPPORTED_KINDS]  # it simulates MAC layers only
        rows = measure_zigzag(specs, args.accelerator, clock_hz=args.clock_hz)
    else:
        dispatch, floor = calibrate(args.threads)  # the floor measure_specs removes, too
        rows = measure_specs(specs, repeats=args.repeats, threads=args.threads,
                             floor_ms=floor * 1e3)
    write_csv(out, [*kept, *rows])  # atomically (rewriter.atomic)
    added = f" (after the {len(kept)} already there)" if kept else ""
    if args.backend == "zigzag":
        print(f"wrote {out}: {len(rows)} ops simulated on ZigZag {args.accelerator}{added}")
        return 0
    print(f"wrote {out}: {len(rows)} ops{added}, median of {args.repeats} runs, "
          f"{args.threads or 'default'} thread(s)")
    print(f"for a measured profile of this machine: overhead_s = {dispatch:.2e} "
          f"(the profiler's {floor:.2e} s per node is already removed from the timings)")
    return 0


def _cost_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from rewriter.cost.measure import read_csv
    from rewriter.cost.regression import RegressionEstimator

    _check_output(args.output, [args.csv])
    rows = read_csv(args.csv)
    if not 0 <= args.holdout < 1:
        raise BadInputError("--holdout must be in [0, 1)")
    order = np.random.default_rng(args.seed).permutation(len(rows))
    cut = int(len(rows) * (1 - args.holdout))
    train, test = [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]
    if len(train) < 10:
        raise BadInputError(f"{args.csv}: {len(train)} training rows; at least 10 are needed")
    ox, _, oy = args.map_tile.partition("x")
    if not (ox.isdigit() and oy.isdigit() and int(ox) > 0 and int(oy) > 0):
        raise BadInputError(f"--map-tile: expected OXxOY such as 4x4, got {args.map_tile!r}")
    array = {"parallelism": args.parallelism, "parallelism_ox": int(ox),
             "parallelism_oy": int(oy)}
    report = RegressionEstimator(**array).fit(train).fit_report(test) if test else None
    final = RegressionEstimator(**array).fit(rows)
    final.save(args.output)
    if args.json:
        print(_json({"rows": len(rows), "held_out": len(test), "output": args.output,
                          "report": None if report is None else report.__dict__}, indent=2))
    else:
        if report is not None:
            print(f"held-out {len(test)} of {len(rows)} ops: {report.summary()}")
        print(f"wrote {args.output} (fitted on all {len(rows)} ops)")
    return 0


def _parse_model_arg(spec: str):
    from rewriter.graph_io import load_model, parse_input_shapes

    path, _, shapes = spec.partition(",")
    shape_specs = shapes.split(",") if shapes else []
    return Path(path).stem, load_model(path, parse_input_shapes(shape_specs))


def _cost_validate(args: argparse.Namespace) -> int:
    from rewriter.cost.profile import ProfileError
    from rewriter.cost.validate import Case, validate, zoo_cases

    target = _target(args.target)
    if target.profile.kind != "measured":
        raise BadInputError(
            f"target {target.name} is analytic: there is no device here to measure it on; "
            "validate a measured target such as cpu-ort")
    accelerator = target.profile.accelerator  # set: fitted on ZigZag, so simulate there
    if args.pairs and accelerator is None:
        raise BadInputError(f"--pairs needs a ZigZag-fitted target such as edge-tpu-zz, not "
                            f"{target.name}")
    if args.retime_ops < 0:
        raise BadInputError(f"--retime-ops must be 0 or more, not {args.retime_ops}")
    if args.retime_ops and accelerator is not None:
        raise BadInputError(f"--retime-ops: {target.name} is fitted on ZigZag, whose cycles "
                            "do not drift; nothing to re-time")
    cases = [] if args.no_zoo else zoo_cases(quick=args.quick)
    cases += [Case(*_parse_model_arg(spec)) for spec in args.model]
    if not cases:
        raise BadInputError("no models to validate (--no-zoo without --model)")
    gains = None
    if accelerator is None:
        try:
            report = validate(target, cases, repeats=args.repeats, retime_ops=args.retime_ops)
        except ProfileError as exc:
            raise BadInputError(str(exc)) from None
    else:
        from rewriter.cost.zigzag_models import gains_on_zigzag, validate_on_zigzag
        from rewriter.search.gain_pairs import rewrite_pairs

        progress = not args.json and sys.stderr.isatty()
        report = validate_on_zigzag(target, cases, progress=progress)
        if args.pairs:
            pairs = [pair for case in cases for pair in rewrite_pairs(case, target)]
            gains = gains_on_zigzag(target, pairs, progress=progress)
    if args.json:
        print(_json({**report.to_dict(), **({"gains": gains.to_dict()} if gains else {})},
                         indent=2))
        return 0
    print(report.text("measured ms" if accelerator is None else f"ZigZag {accelerator} ms"))
    if gains is not None:
        print(f"\n{gains.text('ZigZag')}")
    return 0


def _cost_kit(args: argparse.Namespace) -> int:
    from rewriter.cost.kit import choose, write_kit
    from rewriter.cost.sampling import SPACES
    from rewriter.graph_io import load_model, parse_input_shapes

    spaces = [s.strip() for s in args.space.split(",") if s.strip()]
    unknown = [s for s in spaces if s not in SPACES]
    if unknown or not spaces:
        raise BadInputError(f"--space: unknown space {unknown[0] if unknown else ''!r}; "
                            f"spaces: {', '.join(SPACES)}")
    paths = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    shapes = parse_input_shapes(args.input_shape)
    models = []
    for path in paths:
        model = load_model(path, shapes)
        _check_priceable(model)
        models.append(model)
    like = _target(args.like) if args.like else None
    parallelism = args.parallelism or (like.profile.parallelism_in if like else 32)
    summary = choose(models=models, n=args.n, spaces=spaces, parallelism=parallelism,
                     seed=args.seed, time_of=(lambda s: like.kernel(s)[0]) if like else None)
    write_kit(args.output, summary)
    print(f"wrote {args.output}: {summary.text()}")
    print(f"time them (`rewriter cost run-kit {args.output}` where onnxruntime runs, or see "
          f"{Path(args.output) / 'README.md'}), then `rewriter cost import {args.output} "
          "TIMINGS.csv -o DEVICE.toml`")
    return 0


def _cost_run_kit(args: argparse.Namespace) -> int:
    from rewriter.cost.kit_manifest import write_timings
    from rewriter.cost.kit_run import run_kit

    out = _check_output(args.output)
    result = run_kit(args.kit, provider=args.provider, warmup=args.warmup,
                     repeats=args.repeats, threads=args.threads,
                     progress=sys.stderr.isatty())
    write_timings(out, result.timings)  # atomically (rewriter.atomic)
    for ident, error in result.failed:
        print(f"not timed: {ident}: {error}", file=sys.stderr)
    print(f"wrote {out}: {len(result.timings)} models timed on {args.provider} (median of "
          f"{args.repeats} runs after {args.warmup} warm-up)"
          + (f"; {len(result.failed)} could not run" if result.failed else ""))
    return 0


def _cost_import(args: argparse.Namespace) -> int:
    from rewriter.cost.kit_import import import_timings, store_path

    out = Path(args.output)
    _check_output(out, [args.timings], [out.with_suffix(".csv"), store_path(out)])
    for beside in (out.with_suffix(".csv"), store_path(out)):  # never over the timings
        _check_output(beside, [args.timings])
    tile = None
    if args.map_tile is not None:
        ox, _, oy = args.map_tile.partition("x")
        if not (ox.isdigit() and oy.isdigit() and int(ox) > 0 and int(oy) > 0):
            raise BadInputError(f"--map-tile: expected OXxOY such as 4x4, got {args.map_tile!r}")
        tile = (int(ox), int(oy))
    free = tuple(k.strip() for k in args.free_kinds.split(",") if k.strip())
    result = import_timings(args.kit, args.timings, out, like=args.like, name=args.name,
                            free_kinds=free, parallelism=args.parallelism, map_tile=tile,
                            device=args.device, estimator=args.estimator, seed=args.seed)
    if args.json:
        choice = result.choice
        print(_json({
            "kit": result.kit, "timed": result.timed, "kit_models": result.kit_size,
            "kernel_rows": result.rows, "prior": result.prior if result.use_prior else None,
            "held_out": None if choice is None else {
                "scratch": choice.scratch.__dict__,
                "corrected": choice.corrected.__dict__ if choice.corrected else None},
            "pairs_right": sum(p.sign_agrees for p in result.pairs), "pairs": len(result.pairs),
            "written": [str(p) for p in result.written]}))
        return 0
    print("\n".join(result.lines()))
    print(f"wrote {', '.join(str(p) for p in result.written)}")
    print(f"use it: rewriter estimate MODEL --target {out}")
    return 0


def _apply_architecture_change(args: argparse.Namespace, rule, out: Path) -> int:
    """A pass that changes the function: refit, recover, report fidelity on held-out data."""
    from rewriter.passes import get_pass
    from rewriter.recovery import recover
    from rewriter.rewrite import apply_pass

    if not args.allow_architecture_changes:
        raise BadInputError(f"{rule.name} changes the architecture (the model computes "
                            "something else); pass --allow-architecture-changes to apply it, "
                            "with --calibration DATA to recover its weights on real inputs")
    original = _load(args)
    _check_runnable(original)
    folded = apply_pass(original, get_pass("fold-bn")).model  # same function, BN folded
    result = apply_pass(folded, rule, args.site)
    if not result.applied:
        print(f"{rule.name}: no sites to apply; nothing written")
        return 0
    recovery = recover(folded, result.model, args.calibration, eval_data=args.eval_data,
                       preprocess=args.preprocess, method=args.recover,
                       budget=args.recover_budget, metric=args.fidelity_metric,
                       seed=args.seed, progress=not args.json and sys.stderr.isatty())
    _write(recovery.model, out)
    summary = {"model": args.model, "pass": rule.name, "exact": False,
               "applied": [s.to_dict() for s in result.applied], **recovery.to_dict(),
               "output": str(out)}
    _print_recovery(args, summary, recovery, f"applied  {rule.name} at "
                    f"{len(result.applied)} sites", out)
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from rewriter.graph_io import load_model, parse_input_shapes
    from rewriter.recovery import lower_bound, recover

    out = _check_output(args.output, _read_files(args, "original", "model", "calibration",
                                                 "eval_data"))
    if args.min_fidelity is not None and not 0.0 <= args.min_fidelity <= 1.0:
        raise BadInputError(f"--min-fidelity must be within [0, 1], not {args.min_fidelity}")
    shapes = parse_input_shapes(args.input_shape)
    teacher, student = load_model(args.original, shapes), load_model(args.model, shapes)
    _check_runnable(teacher)
    _check_runnable(student)
    recovery = recover(teacher, student,
                       args.calibration, eval_data=args.eval_data, preprocess=args.preprocess,
                       method=args.recover, budget=args.recover_budget,
                       metric=args.fidelity_metric, seed=args.seed,
                       progress=not args.json and sys.stderr.isatty())
    bound = lower_bound(recovery.fidelity, args.fidelity_metric)
    if args.min_fidelity is not None and bound < args.min_fidelity:
        raise VerificationError(
            f"recovered fidelity {recovery.fidelity.value(args.fidelity_metric):.4f} "
            f"(one standard error down: {bound:.4f}) is below --min-fidelity "
            f"{args.min_fidelity} on {recovery.fidelity.measured_on}; nothing written")
    _write(recovery.model, out)
    summary = {"original": args.original, "model": args.model, **recovery.to_dict(),
               "output": str(out)}
    _print_recovery(args, summary, recovery, f"recovered {args.model}", out)
    return 0


def _write(model, out: Path) -> None:
    from rewriter.graph_io import save_model

    save_model(model, out)


def _print_recovery(args: argparse.Namespace, summary: dict, recovery, headline: str,
                    out: Path) -> None:
    if args.json:
        print(_json(summary, indent=2))
        return
    for warning in recovery.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    fidelity = recovery.fidelity
    print(f"{headline}; {recovery.method} in {recovery.seconds:.0f} s"
          + (f" ({recovery.steps} steps)" if recovery.steps else ""))
    if fidelity.before_recovery is not None:
        print(f"before recovery: {fidelity.before_recovery.summary()}")
    print(f"after recovery:  {fidelity.summary()}")
    print(f"wrote {out} (architecture changed; labelled in its metadata)")


def cmd_zoo(args: argparse.Namespace) -> int:
    from rewriter import zoo
    from rewriter.graph_io import save_model

    _check_output(args.output)
    try:
        proto = zoo.build(args.name, width=args.width, resolution=args.resolution,
                          seed=args.seed, opset=args.opset,
                          static_padding=args.static_padding)
    except ValueError as exc:
        raise BadInputError(str(exc)) from None
    save_model(proto, args.output)
    print(f"wrote {args.output} ({args.name}, width {args.width:g}, {args.resolution}x"
          f"{args.resolution}, seed {args.seed})")
    return 0


COMMANDS = {"passes": cmd_passes, "inspect": cmd_inspect, "sites": cmd_sites,
            "apply": cmd_apply, "recover": cmd_recover, "estimate": cmd_estimate,
            "optimize": cmd_optimize, "optimize-many": cmd_optimize_many,
            "cost": cmd_cost, "zoo": cmd_zoo}


def _user_errors() -> tuple[type[Exception], ...]:
    from rewriter.cost.measure import MeasurementError
    from rewriter.cost.profile import ProfileError
    from rewriter.cost.regression import EstimatorError
    from rewriter.cost.zigzag import ZigZagError

    return (ProfileError, MeasurementError, EstimatorError, ZigZagError)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a usage error (one line already printed), --help, --version
        return exc.code if isinstance(exc.code, int) else 2
    if args.command != "passes":
        import rewriter.runtime  # noqa: F401  onnxruntime logs errors only (its warnings leak)
    try:
        return COMMANDS[args.command](args)
    except RewriterError as exc:
        print(f"rewriter: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except _user_errors() as exc:  # the cost module's own one-line errors
        print(f"rewriter: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rewriter: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("REWRITER_DEBUG"):
            raise
        print(f"rewriter: internal error: {type(exc).__name__}: {exc} "
              "(a bug; REWRITER_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
