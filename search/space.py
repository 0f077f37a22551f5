"""The search space of rewrites, and candidates scored without rebuilding the graph.

The space is built on the model's canonical form (every BatchNormalization folded: exact,
and free on targets that fuse BN into the conv). It has one gene per rewrite site.
Exact genes: align-channels-up per free channel group whose count is not a multiple of the
target's P (pad to the next multiple), dw-to-dense per depthwise/grouped conv,
fuse-linear-conv per linear 1x1 -> conv pair. With architecture changes allowed, also:
depth-multiplier per multiplier (every free group scaled and rounded to multiples of P),
align-channels-down per unaligned group (prune to the multiple below), fuse-ibn per
inverted bottleneck (1x1 expand + act + depthwise -> one dense conv).

Genes are built in this order: depth-multiplier, align-channels-down, fuse-ibn (then the
weights they changed are refitted), align-channels-up, dw-to-dense, fuse-linear-conv.
Where two genes want the same thing, the first in that order wins and the other is inert,
so every genome is a valid model: the smallest active multiplier wins over the others and
over align-channels-down on the groups it changes; padding up applies only to a group
that is still unaligned; a fusion wins over dw-to-dense on its depthwise conv; fuse-ibn
wins over fuse-linear-conv on its expansion conv.

A candidate is scored from the canonical model's kernels: each gene changes the channel
counts, groups or inputs of the kernels it touches, and the changed kernel specs are looked
up in the target's per-signature cache. Peak activations come from liveness over the
kernels' tensors; parameter bytes from the kernels' weight deltas. The chosen genome is
then built with the real passes (search/driver.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod
from typing import Iterable, Mapping, Sequence

import onnx_graphsurgeon as gs

from rewriter.analysis.channels import analyse_channels
from rewriter.analysis.memory import last_uses, liveness_peak, memory_stats, node_io
from rewriter.cost.estimate import Target
from rewriter.cost.kernels import Kernel, decompose
from rewriter.cost.opspec import OpSpec
from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.passes import PASSES, get_pass
from rewriter.rewrite import apply_pass
from rewriter.staged import Batches

EXACT_ORDER = ("align-channels-up", "dw-to-dense", "fuse-linear-conv")
ARCHITECTURE_ORDER = ("depth-multiplier", "align-channels-down", "fuse-ibn")
DEFAULT_MULTIPLIERS = (0.75, 0.5)

Genome = tuple[int, ...]


@dataclass(frozen=True)
class Gene:
    pass_name: str
    site: str
    description: str
    exact: bool = True
    multiplier: float | None = None  # depth-multiplier genes only


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


@dataclass(frozen=True)
class _Fusion:
    first: int  # kernel removed
    second: int  # kernel that becomes a dense conv reading the first one's input
    border: bool  # fuse-linear-conv's exact border bias map (an Add)
    skipped: tuple[int, ...]  # steps of the first kernel's nodes (conv and its activation)
    reads: tuple[int, str]  # (step of the second kernel, the first kernel's input it now reads)


@dataclass(frozen=True)
class _State:
    """What a genome does once conflicts are settled."""

    effective: frozenset[int]
    channels: dict[str, int]  # group id -> channels, where changed
    fusions: dict[int, _Fusion]  # second kernel -> fusion
    dense: frozenset[int]  # kernels made dense


class SearchSpace:
    def __init__(self, model: Model, target: Target, *, architecture: bool = False,
                 multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
                 passes: Sequence[str] | None = None) -> None:
        self.target = target
        self.multiple = target.profile.parallelism_out
        self.canonical = apply_pass(model, get_pass("fold-bn")).model
        nodes = {n.name: n for n in self.canonical.graph.nodes}
        self.kernels = [self._info(k, nodes) for k in decompose(self.canonical)]
        analysis = analyse_channels(self.canonical)
        self.layout = analysis.layout
        self.channels0 = {g.id: g.channels for g in analysis.groups}
        self.inputs = [t.name for t in self.canonical.graph.inputs]
        self.outputs = {t.name for t in self.canonical.graph.outputs}
        self._step = {name: i for i, name in enumerate(nodes)}
        self.genes: list[Gene] = []
        self._align_up: dict[int, str] = {}  # gene -> group id
        self._align_down: dict[int, tuple[str, int]] = {}  # gene -> (group id, channels)
        self._multiplier: dict[int, dict[str, int]] = {}  # gene -> {group id: channels}
        self._dense: dict[int, int] = {}  # gene -> kernel index
        self._fuse: dict[int, _Fusion] = {}  # fuse-linear-conv and fuse-ibn genes
        self._ibn: set[int] = set()
        by_node = {k.kernel.nodes[0]: i for i, k in enumerate(self.kernels)}
        order = (*ARCHITECTURE_ORDER, *EXACT_ORDER) if architecture else EXACT_ORDER
        if passes is not None:
            unknown = sorted(set(passes) - set(order))
            if unknown:
                raise BadInputError(
                    f"the search cannot use pass {', '.join(map(repr, unknown))}"
                    f"{'' if architecture else ' in exact mode'}; it can use: {', '.join(order)}")
            order = tuple(name for name in order if name in passes)
        for name in order:
            levels = multipliers if name == "depth-multiplier" else (None,)
            for level in levels:
                rule = get_pass(name, self.multiple, multiplier=level)
                for site in rule.sites(self.canonical):
                    if self._add_gene(len(self.genes), name, site, by_node):
                        self.genes.append(Gene(name, site.id, site.description,
                                               PASSES[name].exact, level))
        self._node_io = node_io(self.canonical)
        self._last_use = last_uses(self._node_io, self.outputs)
        self.base_param_bytes = memory_stats(self.canonical).param_bytes
        self._prepare_scoring()

    def _add_gene(self, index: int, name: str, site, by_node: dict[str, int]) -> bool:
        detail = site.detail
        if name == "align-channels-up":
            self._align_up[index] = site.id
        elif name == "align-channels-down":
            self._align_down[index] = (site.id, int(detail["to"]))
        elif name == "depth-multiplier":
            self._multiplier[index] = {g: int(c[1]) for g, c in dict(detail["groups"]).items()}
        elif name == "dw-to-dense":
            if site.nodes[0] not in by_node:
                return False
            self._dense[index] = by_node[site.nodes[0]]
        else:  # the fusions: site.nodes = (first conv, [its activation...], second conv)
            first, second = site.nodes[0], site.nodes[-1]
            if first not in by_node or second not in by_node:
                return False
            first_kernel, second_kernel = by_node[first], by_node[second]
            self._fuse[index] = _Fusion(
                first_kernel, second_kernel, bool(detail.get("border_term", False)),
                tuple(self._step[node] for node in site.nodes[:-1]),
                (self._step[second], self.kernels[first_kernel].input))
            if name == "fuse-ibn":
                self._ibn.add(index)
        return True

    def _info(self, kernel: Kernel, nodes: Mapping[str, gs.Node]) -> _KernelInfo:
        first, last = nodes[kernel.nodes[0]], nodes[kernel.nodes[-1]]
        first_in = next((t.name for t in first.inputs if isinstance(t, gs.Variable)), "")
        return _KernelInfo(kernel, first_in, last.outputs[0].name)

    def __len__(self) -> int:
        return len(self.genes)

    def empty(self) -> Genome:
        return (0,) * len(self.genes)

    # -- conflicts -------------------------------------------------------------------
    def _state(self, genome: Genome) -> _State:
        effective: set[int] = set()
        channels: dict[str, int] = {}
        multipliers = [i for i in self._multiplier if genome[i]]
        if multipliers:
            chosen = min(multipliers, key=lambda i: self.genes[i].multiplier or 1.0)
            effective.add(chosen)
            channels.update(self._multiplier[chosen])
        for i, (group, to) in self._align_down.items():
            if genome[i] and group not in channels:
                effective.add(i)
                channels[group] = to
        for i, group in self._align_up.items():
            current = channels.get(group, self.channels0[group])
            if genome[i] and current % self.multiple:
                effective.add(i)
                channels[group] = -(-current // self.multiple) * self.multiple
        fusions: dict[int, _Fusion] = {}
        ibn_nodes: set[int] = set()
        for i in self._ibn:
            if genome[i]:
                fusion = self._fuse[i]
                effective.add(i)
                fusions[fusion.second] = fusion
                ibn_nodes.update((fusion.first, fusion.second))
        for i, fusion in self._fuse.items():
            if (genome[i] and i not in self._ibn and fusion.first not in ibn_nodes
                    and fusion.second not in ibn_nodes):
                effective.add(i)
                fusions[fusion.second] = fusion
        dense = set()
        for i, kernel in self._dense.items():
            if genome[i] and kernel not in fusions:
                effective.add(i)
                dense.add(kernel)
        return _State(frozenset(effective), channels, fusions, frozenset(dense))

    def active(self, genome: Genome) -> list[int]:
        """Genes that take effect (the others are overridden by a conflicting gene)."""
        return sorted(self._state(genome).effective)

    # -- scoring ---------------------------------------------------------------------
    def _prepare_scoring(self) -> None:
        """What `score` needs per genome, computed once: which kernels and tensors each
        channel group touches, every kernel's cost when no gene touches it, and the
        activation size of every tensor the liveness reads."""
        self._kernel_costs: dict[tuple, tuple[float, ...]] = {}
        self._peaks: dict[frozenset[int], int] = {}  # effective genes but dense -> peak
        self._dense_genes = frozenset(self._dense)
        self._group_kernels: dict[str, set[int]] = {}
        for index, info in enumerate(self.kernels):
            for tensor in (info.input, info.output):
                for group, _ in self.layout.get(tensor) or ():
                    self._group_kernels.setdefault(group, set()).add(index)
        self._static = [self._kernel_cost(index, {}, None, False)
                        for index in range(len(self.kernels))]
        shapes = self.canonical.shapes
        names = {*self.inputs, *(name for io in self._node_io for part in io for name in part)}
        self._sizes0 = {name: prod(shapes[name]) * 4 if name in shapes else 0 for name in names}
        self._group_tensors: dict[str, set[str]] = {}
        for tensor, segments in self.layout.items():
            if tensor not in self._sizes0:
                continue
            for group, _ in segments:
                self._group_tensors.setdefault(group, set()).add(tensor)

    def _channels(self, tensor: str, groups: Mapping[str, int], default: int) -> int:
        segments = self.layout.get(tensor)
        if not segments:
            return default
        return sum(groups.get(group, width) for group, width in segments)

    def _kernel_cost(self, index: int, groups: Mapping[str, int], fusion: _Fusion | None,
                     dense: bool) -> tuple[float, ...]:
        """Kernel `index` under a genome's channel counts, fusion and dense choice: its
        latency terms in the order they are summed (a fusion's border term first), then
        the weight elements it adds. Cached by what decides them."""
        info = self.kernels[index]
        spec = info.kernel.spec
        cin = self._channels(info.input, groups, spec.cin)
        cout = self._channels(info.output, groups, spec.cout)
        kind, groups_attr = spec.kind, spec.groups
        if spec.kind == "dwconv" and spec.cin == spec.cout:
            groups_attr = cin
        if fusion is not None:
            source = self.kernels[fusion.first]
            cin = self._channels(source.input, groups, source.kernel.spec.cin)
        if dense or fusion is not None:
            groups_attr = 1
            kind = "conv1x1" if (spec.kh, spec.kw) == (1, 1) else "conv"
        key = (index, cin, cout, groups_attr, kind, fusion)
        hit = self._kernel_costs.get(key)
        if hit is None:
            hit = self._kernel_costs[key] = self._new_cost(spec, cin, cout, groups_attr, kind,
                                                           fusion)
        return hit

    def _new_cost(self, spec: OpSpec, cin: int, cout: int, groups: int, kind: str,
                  fusion: _Fusion | None) -> tuple[float, ...]:
        terms, weight_delta = [], 0
        if fusion is not None:
            weight_delta -= self.kernels[fusion.first].kernel.spec.weight_elements
            if fusion.border:
                terms.append(self.target.kernel(OpSpec(
                    kind="elementwise", n=spec.n, cin=cout, cout=cout, h_in=spec.h_out,
                    w_in=spec.w_out, h_out=spec.h_out, w_out=spec.w_out, n_inputs=2))[0])
                weight_delta += cout * spec.h_out * spec.w_out
        if (cin, cout, groups, kind) == (spec.cin, spec.cout, spec.groups, spec.kind):
            terms.append(self.target.kernel(spec)[0])
        else:
            new = replace(spec, cin=cin, cout=cout, groups=groups, kind=kind)
            terms.append(self.target.kernel(new)[0])
            weight_delta += new.weight_elements - spec.weight_elements
        return (*terms, weight_delta)

    def score(self, genome: Genome) -> Score:
        state = self._state(genome)
        groups, fusions, dense = state.channels, state.fusions, state.dense
        touched = set(dense)
        touched.update(fusions)
        for group in groups:
            touched.update(self._group_kernels.get(group, ()))
        removed = {fusion.first for fusion in fusions.values()}
        latency = 0.0
        weight_delta = 0
        for index, static in enumerate(self._static):
            if index in removed:
                continue
            parts = (static if index not in touched else
                     self._kernel_cost(index, groups, fusions.get(index), index in dense))
            if len(parts) == 3:  # a fusion's border term, summed before its conv
                latency += parts[0]
            latency += parts[-2]
            weight_delta += parts[-1]
        # Dense genes change no tensor, so the peak is shared by genomes that differ in them.
        key = state.effective - self._dense_genes
        peak = self._peaks.get(key)
        if peak is None:
            peak = self._peaks[key] = self._peak(groups, fusions.values())
        return Score(latency, self.base_param_bytes + 4 * weight_delta, peak)

    def _peak(self, groups: Mapping[str, int], fusions: Iterable[_Fusion]) -> int:
        """Node-level liveness, as rewriter.analysis.memory computes it on a built model;
        a tensor's size scales with the channels its groups have in the genome, a fusion
        skips the first conv's nodes and has the second read the first one's input."""
        skipped: set[int] = set()
        redirect: dict[int, str] = {}
        for fusion in fusions:
            skipped.update(fusion.skipped)
            redirect[fusion.reads[0]] = fusion.reads[1]
        sizes = self._sizes0
        if groups:
            sizes = dict(sizes)
            scaled: set[str] = set()
            for group in groups:
                scaled.update(self._group_tensors.get(group, ()))
            for tensor in scaled:
                c0 = sum(width for _, width in self.layout[tensor])
                sizes[tensor] = sizes[tensor] * self._channels(tensor, groups, c0) // max(c0, 1)
        return liveness_peak(self._node_io, self.inputs, sizes.__getitem__, self._last_use,
                             skipped, redirect)[0]

    # -- building ----------------------------------------------------------------------
    def exact_part(self, genome: Genome) -> Genome:
        """The genome with every architecture-changing gene off."""
        return tuple(bit if self.genes[i].exact else 0 for i, bit in enumerate(genome))

    def architecture_genes(self, genome: Genome) -> list[int]:
        return [i for i in self.active(genome) if not self.genes[i].exact]

    def _apply(self, model: Model, chosen: set[int], names: Sequence[str]) -> Model:
        for name in names:
            picked = [self.genes[i] for i in sorted(chosen) if self.genes[i].pass_name == name]
            # One rule per multiplier (depth-multiplier genes; at most one is effective).
            for level in dict.fromkeys(gene.multiplier for gene in picked):
                model = apply_pass(model, get_pass(name, self.multiple, multiplier=level),
                                   [gene.site for gene in picked if gene.multiplier == level]).model
        return model

    def build_architecture(self, genome: Genome, calibration: Batches | None = None) -> Model:
        """The canonical model with the genome's architecture changes applied and, given
        calibration batches, the weights they changed refitted layer by layer."""
        model = self._apply(self.canonical, set(self.active(genome)), ARCHITECTURE_ORDER)
        if calibration is not None and model.changes.refit:
            from rewriter.reconstruct import refit

            model = refit(self.canonical, model, calibration)
        return model

    def build_exact(self, model: Model, genome: Genome) -> Model:
        """The genome's exact rewrites applied on `model` (from `build_architecture`)."""
        return self._apply(model, set(self.active(genome)), EXACT_ORDER)

    def build(self, genome: Genome) -> Model:
        """The canonical model with the genome's rewrites applied by the real passes
        (architecture changes with their initial weights, not refitted)."""
        return self.build_exact(self.build_architecture(genome), genome)
