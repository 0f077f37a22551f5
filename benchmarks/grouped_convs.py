"""Depthwise convs against their exact replacements on the ZigZag targets: the
estimate the search prices them by next to ZigZag's simulation of the same layer.

    python benchmarks/grouped_convs.py [--targets edge-tpu-zz,tpu-zz] [--models cls,zoo]

For every depthwise conv of PaddleOCR's text classifier (at its analysis shape, kernels
trimmed as the search's canonical form has them) and of the zoo models (width 1.0, 96x96,
BN folded), three exact forms of the same layer: depthwise as it is, its groups merged
into groups of P input channels (`dw-to-grouped` at the target's P) and dense
(`dw-to-dense`). Prints, per model and target, the summed latency of those layers in each
form, estimated and simulated, then the classifier's layers one by one. No ZigZag layer is
part of the targets' fits (cost/data/*-zz.csv holds sampled layers only).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from rewriter import zoo
from rewriter.cost.estimate import Target
from rewriter.cost.opspec import OpSpec, conv_kind
from rewriter.cost.zigzag import measure_zigzag
from rewriter.cost.zigzag_models import target_accelerator
from rewriter.graph_io import Model, model_from_proto
from rewriter.passes.base import merged_groups
from rewriter.rewrite import canonical_form
from rewriter.tables import table


def models(which: list[str]) -> dict[str, Model]:
    found = {}
    if "cls" in which:
        from rewriter.graph_io import load_model
        from rewriter.samples import SHAPES, rapidocr_models

        path = rapidocr_models(("cls",))["cls"]
        found["paddleocr-cls"] = canonical_form(load_model(path, SHAPES["cls"]))[0]
    if "zoo" in which:
        for name in zoo.NAMES:
            proto = zoo.build(name, width=1.0, resolution=96, fold_bn=True)
            found[f"{name}-w1-r96"] = canonical_form(model_from_proto(proto))[0]
    return found


def forms(spec: OpSpec, p: int) -> tuple[OpSpec, OpSpec | None, OpSpec]:
    """(depthwise, merged into groups of up to P channels or None, dense)."""
    groups = merged_groups(spec.groups, spec.cin, p)
    merged = None if groups == spec.groups else replace(
        spec, groups=groups, kind=conv_kind(spec.cin, spec.cout, spec.kh, groups))
    return spec, merged, replace(spec, groups=1, kind="conv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="edge-tpu-zz,tpu-zz")
    parser.add_argument("--models", default="cls,zoo")
    args = parser.parse_args()
    cases = models(args.models.split(","))
    for target_name in args.targets.split(","):
        target = Target.load(target_name)
        p = target.profile.parallelism_in
        accelerator = target_accelerator(target)
        layers = {name: [(part[0], forms(part[3], p)) for part in target.parts(model)
                         if part[3].kind == "dwconv"]
                  for name, model in cases.items()}
        specs = {s.signature(): s for rows in layers.values() for _, f in rows
                 for s in f if s is not None}
        simulated = {s.signature(): m.latency_ms for s, m in zip(
            specs.values(), measure_zigzag(specs.values(), accelerator, progress=False))}

        def both(spec: OpSpec | None) -> tuple[float, float]:
            if spec is None:
                return float("nan"), float("nan")
            return target.kernel(spec)[0], simulated[spec.signature()]

        print(f"\n{target_name} (ZigZag {accelerator}, P = {p}): summed over the "
              "depthwise convs, ms estimated / simulated\n")
        rows = []
        for name, found in layers.items():
            sums = []
            for index in range(3):
                # a conv whose groups cannot merge keeps its depthwise form there
                pairs = [both(f[index] if f[index] is not None else f[0]) for _, f in found]
                sums.append(tuple(map(sum, zip(*pairs))) if pairs else (0.0, 0.0))
            merged = sum(1 for _, f in found if f[1] is not None)
            rows.append([name, f"{len(found)} ({merged})",
                         *(f"{e:.4f} / {z:.4f}" for e, z in sums)])
        print(table(["model", "dw convs (mergeable)", "depthwise", f"groups of <= {p}", "dense"],
                    rows))
        if "paddleocr-cls" in layers:
            print(f"\npaddleocr-cls on {target_name}, layer by layer (ms estimated / "
                  "simulated)\n")
            rows = []
            for kernel, f in layers["paddleocr-cls"]:
                spec = f[0]
                rows.append([kernel, f"{spec.cin} ch {spec.kh}x{spec.kw} {spec.h_out}x"
                             f"{spec.w_out}",
                             *(("-" if s is None else "{:.4f} / {:.4f}".format(*both(s)))
                               for s in f)])
            print(table(["conv", "layer", "depthwise", f"groups of <= {p}", "dense"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
