"""The search space of exact rewrites, and candidates scored without rebuilding the graph.

The space is built on the model's canonical form (every BatchNormalization folded: exact,
and free on targets that fuse BN into the conv). It has one gene per rewrite site:
align-channels-up per free channel group whose count is not a multiple of the target's P
(pad to the next multiple), dw-to-dense per depthwise/grouped conv, fuse-linear-conv per
linear 1x1 -> conv pair. Genes are applied in that order; where two genes want the same
conv (fusing a 1x1 into a depthwise conv that another gene would make dense), the fusion
wins and the other gene is inert, so every genome is a valid model.

A candidate is scored from the canonical model's kernels: each gene changes the channel
counts, groups or inputs of the kernels it touches, and the changed kernel specs are looked
up in the target's per-signature cache. Peak activations come from liveness over the
kernels' tensors; parameter bytes from the kernels' weight deltas. The chosen genome is
then built with the real passes and verified (search/driver.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod

import onnx_graphsurgeon as gs

from rewriter.analysis.channels import analyse_channels
from rewriter.analysis.memory import memory_stats
from rewriter.cost.estimate import Target
from rewriter.cost.kernels import Kernel, decompose
from rewriter.cost.opspec import OpSpec
from rewriter.graph_io import Model
from rewriter.passes import get_pass
from rewriter.rewrite import apply_pass

ORDER = ("align-channels-up", "dw-to-dense", "fuse-linear-conv")

Genome = tuple[int, ...]


@dataclass(frozen=True)
class Gene:
    pass_name: str
    site: str
    description: str


@dataclass(frozen=True)
class Score:
    latency_ms: float
    param_bytes: int
    peak_activation_bytes: int

    @property
    def memory_bytes(self) -> int:
        return self.param_bytes + self.peak_activation_bytes


@dataclass(frozen=True)
class _KernelInfo:
    kernel: Kernel
    input: str  # the data input of its first node
    output: str  # the tensor its last node writes


class SearchSpace:
    def __init__(self, model: Model, target: Target) -> None:
        self.original = model
        self.target = target
        self.multiple = target.profile.parallelism_out
        self.canonical = apply_pass(model, get_pass("fold-bn")).model
        self.kernels = [self._info(k) for k in decompose(self.canonical)]
        analysis = analyse_channels(self.canonical)
        self.layout = analysis.layout
        self.channels0 = {g.id: g.channels for g in analysis.groups}
        shapes = self.canonical.shapes
        self.size0 = {name: prod(shape) * 4 for name, shape in shapes.items()}
        self.inputs = [t.name for t in self.canonical.graph.inputs]
        self.outputs = {t.name for t in self.canonical.graph.outputs}
        self.genes: list[Gene] = []
        self._align: dict[int, tuple[str, int]] = {}  # gene -> (group id, pad)
        self._dense: dict[int, int] = {}  # gene -> kernel index
        self._fuse: dict[int, tuple[int, int, bool]] = {}  # gene -> (a, b, border)
        by_node = {k.kernel.nodes[0]: i for i, k in enumerate(self.kernels)}
        for name in ORDER:
            rule = get_pass(name, self.multiple)
            for site in rule.sites(self.canonical):
                index = len(self.genes)
                if name == "align-channels-up":
                    pad = int(site.detail["to"]) - int(site.detail["channels"])
                    self._align[index] = (site.id, pad)
                elif name == "dw-to-dense":
                    if site.nodes[0] not in by_node:
                        continue
                    self._dense[index] = by_node[site.nodes[0]]
                else:
                    a, b = site.nodes
                    if a not in by_node or b not in by_node:
                        continue
                    self._fuse[index] = (by_node[a], by_node[b], bool(site.detail["border_term"]))
                self.genes.append(Gene(name, site.id, site.description))
        self.base_ms = [target.kernel(k.kernel.spec)[0] for k in self.kernels]
        nodes = self.canonical.graph.nodes
        self._step = {n.name: i for i, n in enumerate(nodes)}
        self._node_io = [
            (tuple(t.name for t in n.inputs if isinstance(t, gs.Variable) and t.name),
             tuple(t.name for t in n.outputs)) for n in nodes]
        self._last_use: dict[str, int] = {}
        for step, (reads, _) in enumerate(self._node_io):
            for name in reads:
                self._last_use[name] = step
        for name in self.outputs:
            self._last_use[name] = len(nodes)
        self.base_param_bytes = memory_stats(self.canonical).param_bytes

    def _info(self, kernel: Kernel) -> _KernelInfo:
        first, last = self.canonical.node(kernel.nodes[0]), self.canonical.node(kernel.nodes[-1])
        first_in = next((t.name for t in first.inputs if isinstance(t, gs.Variable)), "")
        return _KernelInfo(kernel, first_in, last.outputs[0].name)

    def __len__(self) -> int:
        return len(self.genes)

    def empty(self) -> Genome:
        return (0,) * len(self.genes)

    # -- scoring ---------------------------------------------------------------------
    def _channels(self, tensor: str, pads: dict[str, int], default: int) -> int:
        segments = self.layout.get(tensor)
        if not segments:
            return default
        return sum(width + pads.get(group, 0) for group, width in segments)

    def score(self, genome: Genome) -> Score:
        pads = {self._align[i][0]: self._align[i][1] for i in self._align if genome[i]}
        fused_b = {b: (a, border) for i, (a, b, border) in self._fuse.items() if genome[i]}
        removed = {a for a, _ in fused_b.values()}
        dense = {k for i, k in self._dense.items() if genome[i] and k not in fused_b}
        latency = 0.0
        weight_delta = 0
        for index, info in enumerate(self.kernels):
            if index in removed:
                continue
            spec = info.kernel.spec
            cin = self._channels(info.input, pads, spec.cin)
            cout = self._channels(info.output, pads, spec.cout)
            kind, groups = spec.kind, spec.groups
            if spec.kind == "dwconv" and spec.cin == spec.cout:
                groups = cin
            if index in fused_b:
                a, border = fused_b[index]
                source = self.kernels[a]
                cin = self._channels(source.input, pads, source.kernel.spec.cin)
                weight_delta -= source.kernel.spec.weight_elements
                if border:
                    latency += self.target.kernel(OpSpec(
                        kind="elementwise", n=spec.n, cin=cout, cout=cout, h_in=spec.h_out,
                        w_in=spec.w_out, h_out=spec.h_out, w_out=spec.w_out, n_inputs=2))[0]
                    weight_delta += cout * spec.h_out * spec.w_out
            if index in dense or index in fused_b:
                groups = 1
                kind = "conv1x1" if (spec.kh, spec.kw) == (1, 1) else "conv"
            if (cin, cout, groups, kind) == (spec.cin, spec.cout, spec.groups, spec.kind):
                latency += self.base_ms[index]
            else:
                new = replace(spec, cin=cin, cout=cout, groups=groups, kind=kind)
                latency += self.target.kernel(new)[0]
                weight_delta += new.weight_elements - spec.weight_elements
        skipped = {self._step[self.kernels[a].kernel.nodes[0]] for a in removed}
        redirect = {self._step[self.kernels[b].kernel.nodes[0]]: self.kernels[a].input
                    for b, (a, _) in fused_b.items()}
        return Score(latency, self.base_param_bytes + 4 * weight_delta,
                     self._peak(pads, skipped, redirect))

    def _scaled(self, tensor: str, pads: dict[str, int]) -> int:
        base = self.size0.get(tensor, 0)
        segments = self.layout.get(tensor)
        if not segments or not pads:
            return base
        c0 = sum(w for _, w in segments)
        return base * self._channels(tensor, pads, c0) // max(c0, 1)

    def _peak(self, pads: dict[str, int], skipped: set[int], redirect: dict[int, str]) -> int:
        """Node-level liveness, as rewriter.analysis.memory computes it on a built model."""
        last = self._last_use
        if redirect:
            last = dict(last)
            for step, tensor in redirect.items():
                last[tensor] = max(last.get(tensor, -1), step)
        live = {name: self._scaled(name, pads) for name in self.inputs}
        current = sum(live.values())
        peak = current
        for step, (reads, outs) in enumerate(self._node_io):
            if step in skipped:
                continue
            for name in outs:
                size = self._scaled(name, pads)
                live[name] = size
                current += size
            peak = max(peak, current)
            extra = (redirect[step],) if step in redirect else ()
            for name in (*reads, *extra, *outs):
                if name in live and last.get(name, -1) <= step:
                    current -= live.pop(name)
        return peak

    # -- building ----------------------------------------------------------------------
    def active(self, genome: Genome) -> list[int]:
        """Genes that take effect (a dense gene under a fusion does not)."""
        fused_b = {b for i, (_, b, _) in self._fuse.items() if genome[i]}
        return [i for i, bit in enumerate(genome)
                if bit and not (i in self._dense and self._dense[i] in fused_b)]

    def build(self, genome: Genome) -> Model:
        """The canonical model with the genome's rewrites applied by the real passes."""
        model = self.canonical
        chosen = set(self.active(genome))
        for name in ORDER:
            ids = [self.genes[i].site for i in range(len(self.genes))
                   if i in chosen and self.genes[i].pass_name == name]
            if ids:
                model = apply_pass(model, get_pass(name, self.multiple), ids).model
        return model
