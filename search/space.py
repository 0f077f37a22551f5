"""The search space of rewrites, and candidates scored without rebuilding the graph.

The space is built on the model's canonical form (rewriter.passes.CANONICAL_PASSES: every
BatchNormalization folded, exact and free on targets that fuse BN into the conv; kernel
taps that only read padding dropped, exact and cheaper everywhere). It has
one gene per rewrite site of every pass with an `order` (rewriter.passes.SEARCH_PASSES),
exact ones only unless architecture changes are allowed; genes come pass by pass in that
order (a pass with several variants, such as one depth multiplier per factor, gives one
gene per variant and site).

Each pass declares what a site does (`Pass.effect`, rewriter.passes.base): groups resized,
kernels regrouped (or made dense), a kernel fused into the next, and claim keys. The space settles a
genome's conflicts from those declarations alone, so every genome is a valid model: genes
are resolved in the passes' `precedence` order (then the effect's rank, then gene index),
and a gene whose claim an effective one took, or that changes nothing, is inert.

A candidate is scored from the canonical model's kernels: the effective effects change the
channel counts, groups or inputs of the kernels they touch, and the changed kernel specs
are looked up in the target's per-signature cache. Peak activations come from liveness over
the kernels' tensors; parameter bytes from the kernels' weight deltas (a spec counts a
bias; the graph's kernels without one are known) plus, for each resized group, its change
in channels times the per-channel constants no kernel counts (an unfolded BN, a bias Add).
The chosen genome is then built with the real passes (search/driver.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod
from typing import Iterable, Mapping, Sequence

import onnx_graphsurgeon as gs

from rewriter.analysis.channels import ChannelGroup, analyse_channels, channel_params, output_rank
from rewriter.analysis.memory import last_uses, liveness_peak, memory_stats, node_io
from rewriter.cost.estimate import Target
from rewriter.cost.kernels import Kernel, decompose
from rewriter.cost.opspec import OpSpec, conv_kind
from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.graph_query import const_value, is_empty_input
from rewriter.passes import SEARCH_PASSES, Pass
from rewriter.passes.base import Effect, Fusion, KernelInfo, SearchView
from rewriter.rewrite import apply_pass, canonical_form
from rewriter.staged import Batches

DEFAULT_MULTIPLIERS = (0.75, 0.5)

Genome = tuple[int, ...]


@dataclass(frozen=True)
class Gene:
    pass_name: str
    site: str
    description: str
    exact: bool = True
    multiplier: float | None = None  # the factor of a multiplier pass's gene (Pass.multiplier)


@dataclass(frozen=True)
class Score:
    latency_ms: float
    param_bytes: int
    peak_activation_bytes: int

    @property
    def memory_bytes(self) -> int:
        return self.param_bytes + self.peak_activation_bytes


@dataclass(frozen=True)
class _State:
    """What a genome does once conflicts are settled."""

    effective: frozenset[int]
    channels: dict[str, int]  # group id -> channels, where changed
    fusions: dict[int, Fusion]  # second kernel -> fusion
    regroup: dict[int, int]  # kernel -> its new group count (1: dense)


class SearchSpace:
    def __init__(self, model: Model, target: Target, *, architecture: bool = False,
                 multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
                 passes: Sequence[str] | None = None) -> None:
        self.target = target
        self.multiple = target.profile.parallelism_out
        # canonical_notes: what the canonical passes tell the user
        self.canonical, self.canonical_notes = canonical_form(model)
        nodes = {n.name: n for n in self.canonical.graph.nodes}
        self.kernels = [self._info(k, nodes) for k in decompose(self.canonical)]
        analysis = analyse_channels(self.canonical)
        self.layout = analysis.layout
        self.channels0 = {g.id: g.channels for g in analysis.groups}
        weighted = {info.kernel.nodes[0] for info in self.kernels
                    if info.kernel.spec.weight_elements}
        self._follower_params = {g.id: self._per_channel_params(g, nodes, weighted)
                                 for g in analysis.groups}
        self.inputs = [t.name for t in self.canonical.graph.inputs]
        self.outputs = {t.name for t in self.canonical.graph.outputs}
        self._step = {name: i for i, name in enumerate(nodes)}
        self.view = SearchView.of(self.kernels, self.channels0, self._step, self.multiple)
        self.genes: list[Gene] = []
        self._rules: list[Pass] = []  # the pass instance of each gene
        self._effects: list[Effect] = []
        searched = [cls for cls in SEARCH_PASSES if architecture or cls.exact]
        order = tuple(cls.name for cls in searched)
        if passes is not None:
            unknown = sorted(set(passes) - set(order))
            if unknown:
                raise BadInputError(
                    f"the search cannot use pass {', '.join(map(repr, unknown))}"
                    f"{'' if architecture else ' in exact mode'}; it can use: {', '.join(order)}")
            searched = [cls for cls in searched if cls.name in passes]
        for cls in searched:
            for rule in cls.variants(self.multiple, multipliers):
                for site in rule.sites(self.canonical):
                    effect = rule.effect(site, self.view)
                    if effect is None:
                        continue
                    self.genes.append(Gene(rule.name, site.id, site.description, rule.exact,
                                           rule.multiplier))
                    self._rules.append(rule)
                    self._effects.append(effect)
        # Genes in the order their effects are settled: the first to claim a key wins.
        self._resolution = sorted(
            range(len(self.genes)),
            key=lambda i: (self._rules[i].precedence, self._effects[i].rank, i))
        self._node_io = node_io(self.canonical)
        self._last_use = last_uses(self._node_io, self.outputs)
        self.base_param_bytes = memory_stats(self.canonical).param_bytes
        self._prepare_scoring()

    def _info(self, kernel: Kernel, nodes: Mapping[str, gs.Node]) -> KernelInfo:
        first, last = nodes[kernel.nodes[0]], nodes[kernel.nodes[-1]]
        first_in = next((t.name for t in first.inputs if isinstance(t, gs.Variable)), "")
        # Only these ops say in the graph whether they have a bias; the others keep the
        # spec's assumption.
        bias = (first.op not in ("Conv", "ConvTranspose", "Gemm")
                or (len(first.inputs) > 2 and not is_empty_input(first.inputs[2])))
        return KernelInfo(kernel, first_in, last.outputs[0].name, bias)

    def _per_channel_params(self, group: ChannelGroup, nodes: Mapping[str, gs.Node],
                            weighted: set[str]) -> int:
        """Constant elements per channel of `group` that no kernel spec counts: the
        per-channel parameters of members that are not a weighted kernel's first node (an
        unfolded BN's four vectors, a bias Add's or PRelu's constant). Resizing the group
        by d channels changes the parameters by d times this."""
        elements = 0
        for member in group.members:
            if member.node in weighted:
                continue
            node = nodes[member.node]
            for index, axis, _ in channel_params(node, member.role, member.input_index,
                                                 output_rank(self.canonical, node)):
                values = const_value(node.inputs[index])
                if values is not None and values.ndim and values.shape[axis] > 1:
                    elements += values.size // values.shape[axis]
        return elements

    def __len__(self) -> int:
        return len(self.genes)

    def empty(self) -> Genome:
        return (0,) * len(self.genes)

    def effect(self, gene: int) -> Effect:
        """What gene `gene` declares it does when it is effective."""
        return self._effects[gene]

    # -- conflicts -------------------------------------------------------------------
    def _state(self, genome: Genome) -> _State:
        """Compose the declared effects of the genome's genes in resolution order."""
        effective: set[int] = set()
        claimed: set[object] = set()
        channels: dict[str, int] = {}
        fusions: dict[int, Fusion] = {}
        regroup: dict[int, int] = {}
        for i in self._resolution:
            if not genome[i]:
                continue
            effect = self._effects[i]
            if not claimed.isdisjoint(effect.claims):
                continue
            resized = {}
            for group, resize in effect.channels.items():
                current = channels.get(group, self.channels0[group])
                new = resize(current)
                if new != current:
                    resized[group] = new
            regrouped = {}
            for kernel, rule in effect.regroup.items():
                groups, cin = self._groups(kernel, channels)
                new = rule(groups, cin)
                if new != groups:
                    regrouped[kernel] = new
            if not (resized or effect.fusion or regrouped):
                continue  # it changes nothing: inert, and claims nothing
            effective.add(i)
            claimed.update(effect.claims)
            channels.update(resized)
            regroup.update(regrouped)
            if effect.fusion is not None:
                fusions[effect.fusion.second] = effect.fusion
        return _State(frozenset(effective), channels, fusions, regroup)

    def _groups(self, index: int, groups: Mapping[str, int]) -> tuple[int, int]:
        """(group count, input channels) of kernel `index` under the channel counts
        `groups` (a depthwise conv's groups follow its channels)."""
        info = self.kernels[index]
        spec = info.kernel.spec
        cin = self._channels(info.input, groups, spec.cin)
        depthwise = spec.kind == "dwconv" and spec.cin == spec.cout
        return (cin if depthwise else spec.groups), cin

    def active(self, genome: Genome) -> list[int]:
        """Genes that take effect (the others are overridden by a conflicting gene)."""
        return sorted(self._state(genome).effective)

    # -- scoring ---------------------------------------------------------------------
    def _prepare_scoring(self) -> None:
        """What `score` needs per genome, computed once: which kernels and tensors each
        channel group touches, every kernel's cost when no gene touches it, and the
        activation size of every tensor the liveness reads."""
        self._kernel_costs: dict[tuple, tuple[float, ...]] = {}
        self._peaks: dict[frozenset[int], int] = {}  # effective genes changing tensors -> peak
        self._tensor_genes = frozenset(i for i, e in enumerate(self._effects)
                                       if e.changes_tensors)
        self._group_kernels: dict[str, set[int]] = {}
        for index, info in enumerate(self.kernels):
            for tensor in (info.input, info.output):
                for group, _ in self.layout.get(tensor) or ():
                    self._group_kernels.setdefault(group, set()).add(index)
        self._static = [self._kernel_cost(index, {}, None, None)
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

    def _kernel_cost(self, index: int, groups: Mapping[str, int], fusion: Fusion | None,
                     regroup: int | None) -> tuple[float, ...]:
        """Kernel `index` under a genome's channel counts, fusion and new group count: its
        latency terms in the order they are summed (a fusion's border term first), then
        the weight elements it adds. Cached by what decides them."""
        info = self.kernels[index]
        spec = info.kernel.spec
        cout = self._channels(info.output, groups, spec.cout)
        groups_attr, cin = self._groups(index, groups)
        kind = spec.kind
        if fusion is not None:  # a fused conv is dense and reads the first conv's input
            source = self.kernels[fusion.first]
            cin = self._channels(source.input, groups, source.kernel.spec.cin)
            regroup = 1
        if regroup is not None:
            groups_attr = regroup
            kind = conv_kind(cin, cout, max(spec.kh, spec.kw), regroup)
        key = (index, cin, cout, groups_attr, kind, fusion)
        hit = self._kernel_costs.get(key)
        if hit is None:
            hit = self._kernel_costs[key] = self._new_cost(info, cin, cout, groups_attr, kind,
                                                           fusion)
        return hit

    def _new_cost(self, info: KernelInfo, cin: int, cout: int, groups: int, kind: str,
                  fusion: Fusion | None) -> tuple[float, ...]:
        spec = info.kernel.spec
        terms, weight_delta = [], 0
        bias = info.bias
        if fusion is not None:
            weight_delta -= self.kernels[fusion.first].params()
            bias = not fusion.border
            if fusion.border:
                terms.append(self.target.kernel(OpSpec(
                    kind="elementwise", n=spec.n, cin=cout, cout=cout, h_in=spec.h_out,
                    w_in=spec.w_out, h_out=spec.h_out, w_out=spec.w_out, n_inputs=2))[0])
                weight_delta += cout * spec.h_out * spec.w_out
        new = spec
        if (cin, cout, groups, kind) != (spec.cin, spec.cout, spec.groups, spec.kind):
            new = replace(spec, cin=cin, cout=cout, groups=groups, kind=kind)
        terms.append(self.target.kernel(new)[0])
        weight_delta += info.params(new, bias) - info.params()
        return (*terms, weight_delta)

    def score(self, genome: Genome) -> Score:
        state = self._state(genome)
        groups, fusions = state.channels, state.fusions
        touched = set(fusions)
        touched.update(state.regroup)
        for group in groups:
            touched.update(self._group_kernels.get(group, ()))
        removed = {fusion.first for fusion in fusions.values()}
        latency = 0.0
        weight_delta = sum((count - self.channels0[group]) * self._follower_params[group]
                           for group, count in groups.items())
        for index, static in enumerate(self._static):
            if index in removed:
                continue
            parts = (static if index not in touched else
                     self._kernel_cost(index, groups, fusions.get(index),
                                       state.regroup.get(index)))
            if len(parts) == 3:  # a fusion's border term, summed before its conv
                latency += parts[0]
            latency += parts[-2]
            weight_delta += parts[-1]
        # Genes changing no tensor (regrouping) leave the peak as it is: genomes differing only
        # in them share it.
        key = state.effective & self._tensor_genes
        peak = self._peaks.get(key)
        if peak is None:
            peak = self._peaks[key] = self._peak(groups, fusions.values())
        return Score(latency, self.base_param_bytes + 4 * weight_delta, peak)

    def _peak(self, groups: Mapping[str, int], fusions: Iterable[Fusion]) -> int:
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

    def _apply(self, model: Model, chosen: set[int], exact: bool) -> Model:
        """Apply the chosen genes of the exact (or architecture) passes, each pass instance
        once, on all its chosen sites, in the search's pass order."""
        for rule in dict.fromkeys(self._rules):  # pass instances, in gene order
            if rule.exact != exact:
                continue
            sites = [self.genes[i].site for i in sorted(chosen) if self._rules[i] is rule]
            if sites:
                model = apply_pass(model, rule, sites).model
        return model

    def build_architecture(self, genome: Genome, calibration: Batches | None = None) -> Model:
        """The canonical model with the genome's architecture changes applied and, given
        calibration batches, the weights they changed refitted layer by layer."""
        model = self._apply(self.canonical, set(self.active(genome)), exact=False)
        if calibration is not None and model.changes.refit:
            from rewriter.reconstruct import refit

            model = refit(self.canonical, model, calibration)
        return model

    def build_exact(self, model: Model, genome: Genome) -> Model:
        """The genome's exact rewrites applied on `model` (from `build_architecture`)."""
        return self._apply(model, set(self.active(genome)), exact=True)

    def build(self, genome: Genome) -> Model:
        """The canonical model with the genome's rewrites applied by the real passes
        (architecture changes with their initial weights, not refitted)."""
        return self.build_exact(self.build_architecture(genome), genome)
