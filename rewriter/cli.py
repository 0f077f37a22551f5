"""The `rewriter` command line.

Exit codes: 0 success; 1 verification failed (nothing written); 2 bad input (missing or
corrupt file, unknown pass, site or strategy, unsupported op or dynamic shape, a feature
not built yet); 3 no candidate within the memory budget; 70 internal error (a bug: set
REWRITER_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from rewriter.cli_args import (
    _FRACTION,
    _POSITIVE,
    _POSITIVE_INT,
    _SEED,
    _add_model_options,
    _add_recovery_options,
    _add_scale_out_options,
    _add_target_option,
    _check_output,
    _check_priceable,
    _check_runnable,
    _json,
    _load,
    _multipliers,
    _number,
    _Parser,
    _read_files,
    _target,
)
from rewriter.cli_cost import add_cost_commands, cmd_cost
from rewriter.errors import BadInputError, VerificationError, exit_status
from rewriter.tables import human, human_bytes, table


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
    _add_scale_out_options(p, "optimizations (latency is estimated here, not timed)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_cost_commands(sub)

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
            ("--fidelity-metric", args.fidelity_metric), ("--multipliers", args.multipliers),
            ("--augment", args.augment))
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
    result = optimize(model, target, strategy=args.strategy, max_param_bytes=max_params,
                      max_activation_bytes=max_acts, budget=budget, seed=args.seed,
                      exact=not args.allow_architecture_changes, inputs=inputs,
                      progress=not args.json and sys.stderr.isatty(),
                      calibration=args.calibration, eval_data=args.eval_data,
                      preprocess=args.preprocess, recover=args.recover,
                      recover_budget=args.recover_budget,
                      fidelity_metric=args.fidelity_metric, augment=args.augment or "auto",
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
                       seed=args.seed, progress=not args.json and sys.stderr.isatty(),
                       augment=args.augment or "auto")
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
                       progress=not args.json and sys.stderr.isatty(),
                       augment=args.augment or "auto")
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a usage error (one line already printed), --help, --version
        return exc.code if isinstance(exc.code, int) else 2
    if args.command != "passes":
        import rewriter.runtime  # noqa: F401  onnxruntime logs errors only (its warnings leak)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("rewriter: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        status = exit_status(exc)
        if status is not None:
            print(f"rewriter: error: {status[1]}", file=sys.stderr)
            return status[0]
        if os.environ.get("REWRITER_DEBUG"):
            raise
        print(f"rewriter: internal error: {type(exc).__name__}: {exc} "
              "(a bug; REWRITER_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
