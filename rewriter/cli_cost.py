"""`rewriter cost ...`: measure ops, fit and validate estimators, and the measurement
kit for a device of your own (kit, run-kit, import)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rewriter.cli_args import (
    _POSITIVE_INT,
    _SEED,
    _add_scale_out_options,
    _check_output,
    _check_priceable,
    _json,
    _map_tile,
    _number,
    _Parser,
    _target,
)
from rewriter.errors import BadInputError
from rewriter.parallel import make_executor


def add_cost_commands(sub: argparse._SubParsersAction) -> None:
    """The `rewriter cost ...` subcommands and their options."""
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
    _add_scale_out_options(p, "ZigZag simulations (--backend zigzag)")
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
    p.add_argument("--map-tile", type=_map_tile, default="1x1", metavar="OXxOY",
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
    _add_scale_out_options(p, "ZigZag simulations (ZigZag-fitted targets)")
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
    p.add_argument("--map-tile", type=_map_tile, metavar="OXxOY",
                   help="output pixels the device unrolls (default: --like's, else 1x1)")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the cross-validation folds")
    p.add_argument("--json", action="store_true")


def cmd_cost(args: argparse.Namespace) -> int:
    return {"measure": _cost_measure, "fit": _cost_fit, "validate": _cost_validate,
            "kit": _cost_kit, "run-kit": _cost_run_kit, "import": _cost_import}[
        args.cost_command](args)


def _cost_measure(args: argparse.Namespace) -> int:
    from rewriter.cost.measure import calibrate, measure_specs
    from rewriter.cost.measurements import read_csv, write_csv
    from rewriter.cost.sampling import sample_specs

    if args.n < 1 or args.repeats < 1 or args.threads < 0:
        raise BadInputError("-n and --repeats must be positive, --threads >= 0")
    if args.backend != "zigzag" and (args.workers is not None or args.ray is not None):
        raise BadInputError("--workers and --ray run ZigZag simulations (--backend zigzag); "
                            "onnxruntime timings run serially, since co-scheduled runs "
                            "disturb each other's timings")
    out = _check_output(args.output)
    kept = []
    if args.append and out.exists():
        kept = read_csv(out)  # a bad file fails here, before any measuring
    specs = sample_specs(args.n, args.seed, args.parallelism, args.space)
    if args.backend == "zigzag":
        from rewriter.cost.zigzag import SUPPORTED_KINDS, measure_zigzag

        specs = [s for s in specs if s.kind in SUPPORTED_KINDS]  # it simulates MAC layers only
        with make_executor(args.workers, args.ray) as executor:
            rows = measure_zigzag(specs, args.accelerator, clock_hz=args.clock_hz,
                                  executor=executor)
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

    from rewriter.cost.measurements import read_csv
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
    ox, oy = args.map_tile
    array = {"parallelism": args.parallelism, "parallelism_ox": ox, "parallelism_oy": oy}
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
    if accelerator is None and (args.workers is not None or args.ray is not None):
        raise BadInputError(f"--workers and --ray run ZigZag simulations; {target.name} is "
                            "timed on this machine, serially (co-scheduled runs disturb "
                            "each other's timings)")
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
        with make_executor(args.workers, args.ray) as executor:
            report = validate_on_zigzag(target, cases, progress=progress, executor=executor)
            if args.pairs:
                pairs = [pair for case in cases for pair in rewrite_pairs(case, target)]
                gains = gains_on_zigzag(target, pairs, progress=progress, executor=executor)
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
    free = tuple(k.strip() for k in args.free_kinds.split(",") if k.strip())
    result = import_timings(args.kit, args.timings, out, like=args.like, name=args.name,
                            free_kinds=free, parallelism=args.parallelism, map_tile=args.map_tile,
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
