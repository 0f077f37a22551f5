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
        blocks=find_blocks(model),
        groups=channel_groups(model),
        sites={name: len(get_pass(name, multiple).sites(model)) for name in PASSES},
    )
