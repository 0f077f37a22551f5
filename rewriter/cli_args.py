"""Argument types, shared options and input checks of the `rewriter` command line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

from rewriter.errors import BadInputError


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


def _map_tile(text: str) -> tuple[int, int]:
    """An argparse `type` for --map-tile OXxOY: the output pixels an array unrolls."""
    ox, _, oy = text.partition("x")
    if not (ox.isdigit() and oy.isdigit() and int(ox) > 0 and int(oy) > 0):
        raise argparse.ArgumentTypeError(f"expected OXxOY such as 4x4, got {text!r}")
    return int(ox), int(oy)


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


def _add_recovery_options(p: argparse.ArgumentParser) -> None:
    from rewriter.distill import AUGMENT_CHOICES

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
    p.add_argument("--augment", choices=AUGMENT_CHOICES,
                   help="how distillation augments the calibration inputs: auto (default: "
                        "light crops from 500 inputs on, crops, flips and mixup below), "
                        "robust (adds small turns, shears, lighting ramps, blur, noise: "
                        "for deployment inputs broader than the calibration data), none")
    p.add_argument("--fidelity-metric", choices=["top1", "top5", "cosine"],
                   help="what --min-fidelity bounds (default: top1 for classifier outputs, "
                        "else cosine)")


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


def _add_scale_out_options(p: argparse.ArgumentParser, units: str) -> None:
    """--workers and --ray for commands whose `units` run in parallel (rewriter.parallel)."""
    p.add_argument("--workers", type=_POSITIVE_INT, metavar="N",
                   help=f"processes of the local pool that runs the {units} (default: the "
                        "cores; 1: serial), or the CPUs of --ray local. onnxruntime timings "
                        "always run serially, since co-scheduled runs disturb each other")
    p.add_argument("--ray", metavar="auto|ADDRESS|local",
                   help="run on Ray (pip install 'rewriter[ray]'): auto (the cluster of "
                        "`ray start` on this machine), HEAD:6379, or local (a private "
                        "instance for this run)")
