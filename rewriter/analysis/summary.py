"""One analysis of a model: what `rewriter inspect` prints and returns as JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rewriter.analysis.blocks import Block, find_blocks
from rewriter.analysis.channels import ChannelGroup, channel_groups
from rewriter.analysis.memory import memory_stats
from rewriter.analysis.ops import OpRow, op_table
from rewriter.graph_io import Model


@dataclass
class Analysis:
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    opset: int
    ops: list[OpRow]
    params: int
    param_bytes: int
    macs: int
    peak_activation_bytes: int
    peak_step: str
    blocks: list[Block]
    groups: list[ChannelGroup]
    sites: dict[str, int]
    no_sites: dict[str, str]  # pass -> why it has no site in this model
    frozen_reasons: dict[str, int]  # reason -> number of frozen groups it freezes
    canonical_notes: list[str]

    def to_dict(self) -> dict[str, object]:
        return {
            "inputs": self.inputs,
            "outputs": self.outputs,
            "opset": self.opset,
            "nodes": len(self.ops),
            "op_counts": dict(Counter(r.op_type for r in self.ops).most_common()),
            "params": self.params,
            "param_bytes": self.param_bytes,
            "macs": self.macs,
            "peak_activation_bytes": self.peak_activation_bytes,
            "peak_activation_at": self.peak_step,
            "blocks": [b.to_dict() for b in self.blocks],
            "channel_groups": [g.to_dict() for g in self.groups],
            "sites": self.sites,
            "why_no_sites": self.no_sites,
            "frozen_reasons": self.frozen_reasons,
            "canonical_form": self.canonical_notes,
            "ops": [
                {"name": r.name, "op_type": r.op_type, "output_shape": list(r.output_shape),
                 "macs": r.macs, "params": r.params}
                for r in self.ops
            ],
        }


def analyse(model: Model, multiple: int = 32) -> Analysis:
    from rewriter.passes import PASSES, get_pass

    ops = op_table(model)
    mem = memory_stats(model)
    shapes = model.shapes
    blocks, groups = find_blocks(model), channel_groups(model)
    sites = {name: len(get_pass(name, multiple).sites(model)) for name in PASSES}
    return Analysis(
        inputs={k: list(v) for k, v in model.concrete_input_shapes().items()},
        outputs={t.name: list(shapes.get(t.name, ())) for t in model.graph.outputs},
        opset=model.opset,
        ops=ops,
        params=mem.params,
        param_bytes=mem.param_bytes,
        macs=sum(r.macs for r in ops),
        peak_activation_bytes=mem.peak_activation_bytes,
        peak_step=mem.peak_step,
        blocks=blocks,
        groups=groups,
        sites=sites,
        no_sites={name: why_no_sites(name, model, blocks, groups, multiple)
                  for name, count in sites.items() if count == 0},
        frozen_reasons=_frozen_reasons(groups),
        canonical_notes=list(getattr(model, "canonical_notes", [])),
    )


def _frozen_reasons(groups: list[ChannelGroup]) -> dict[str, int]:
    """How many frozen groups each kind of reason freezes (a reason without its tensor
    name, e.g. 'reaches a model output'); a group with several reasons counts under each."""
    counts: Counter[str] = Counter()
    for group in groups:
        for reason in dict.fromkeys(_reason_kind(r) for r in group.frozen):
            counts[reason] += 1
    return dict(counts.most_common())


def _reason_kind(reason: str) -> str:
    # reasons name the op or node after a colon or quote; keep the kind only
    for cut in (" '", ": ", " ("):
        if cut in reason:
            reason = reason.split(cut)[0]
    return reason.strip()


def why_no_sites(name: str, model: Model, blocks: list[Block], groups: list[ChannelGroup],
                 multiple: int) -> str:
    """One line on why pass `name` finds nothing to do in `model`."""
    ops = Counter(node.op for node in model.graph.nodes)
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    grouped = [n for n in convs if int(n.attrs.get("group", 1)) > 1]
    free = [g for g in groups if not g.is_frozen]
    ibns = [b for b in blocks if b.kind == "inverted_bottleneck"]
    if name == "fold-bn":
        return ("no BatchNormalization nodes (already folded by the exporter)"
                if not ops["BatchNormalization"] else
                "no BatchNormalization directly after a Conv whose output nothing else reads")
    if name == "dw-to-dense":
        return "no depthwise or grouped convs" if not grouped else (
            "its grouped convs cannot be made dense here")
    if name == "dw-to-grouped":
        return "no depthwise or grouped convs" if not grouped else (
            f"no grouped conv has groups to merge below P={multiple} channels per group")
    if name == "fuse-linear-conv":
        return "no 1x1 conv feeding a KxK conv with nothing between them"
    if name == "fuse-ibn":
        if not ibns:
            return "no inverted bottlenecks (1x1 expand + activation + depthwise KxK)"
        if all(b.expansion <= 1 for b in ibns):
            return "every inverted bottleneck has expansion 1 (no 1x1 expansion conv to fuse)"
        if ops["BatchNormalization"]:
            return ("its blocks carry BatchNormalization: fuse-ibn applies once BN is folded "
                    "(apply fold-bn first; optimize does)")
        return "its inverted bottlenecks cannot be fused (shared or non-1x1 expansions)"
    if name in ("align-channels-up", "align-channels-down", "depth-multiplier"):
        if not free:
            return f"all {len(groups)} channel groups are frozen"
        if name == "depth-multiplier":
            return "no free channel group with a producer to scale"
        aligned = all(g.channels % multiple == 0 for g in free)
        if aligned:
            return f"every free channel group is already a multiple of P={multiple}"
        if name == "align-channels-down":
            return f"no free channel group above P={multiple} that may be pruned"
        return "the unaligned free groups may not be padded (something divides by them)"
    return "no site matches its pattern"
