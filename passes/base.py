"""What every pass provides: find sites, apply one, say whether it is exact, and, for the
passes the search uses, declare what a site does to the kernels the cost model sees.

A pass owns its rule whole, in one module of this package:

- `sites(model)`: every place where the rule applies (`Site`, its `id` stable across
  unrelated rewrites);
- `apply(model, site)`: the rewrite at one site, on a copy;
- `effect(site, view) -> Effect | None`: how the site changes the canonical model's kernels
  and tensors, so the search scores a genome without rebuilding the graph. `view`
  (`SearchView`) describes the canonical model once: its kernels (specs, first input,
  last output), its channel groups' counts, each node's topological step. An `Effect`
  combines four primitives the search composes (and it knows no pass by name):

  * `channels`: group id -> `Resize`, the group's new count as a function of its count
    after the effects resolved before this one (`SetTo(C')`, `RoundUp(P)`); every
    tensor and kernel reading or writing the group is rescaled (a depthwise conv's group
    count follows its channels), and so are the per-channel constants no kernel counts
    (an unfolded BN's vectors, a bias Add's constant);
  * `regroup`: kernel -> `Regroup`, the grouped conv's new group count as a function of
    its groups and input channels after the channel effects (`MergeGroups(width)`;
    `MergeGroups()`: 1, a dense conv); a count that does not change leaves the effect
    inert;
  * `fusion`: a `Fusion` -- kernel `first` (and the nodes in `skipped`) no longer run,
    kernel `second` becomes dense and reads `first`'s input, losing `first`'s weights;
    with `border` an Add of a constant [Cout, H', W'] map follows it, else the fused conv
    has a bias;
  * `claims`: keys (hashable) this effect takes; an effect whose key an effective earlier
    effect took is inert (two fusions sharing a conv: `kernel_claim(k)`; a multiplier and
    an align-down on one group: `group_claim(g)`).

  Return None where the search cannot model the site (no gene is made for it).

Resolution: a genome's genes are taken in ascending (`precedence` of their pass, the
effect's `rank`, gene index); each is effective unless one of its claims is taken or it
changes nothing (every `Resize` leaves its group's count as it is), and an effective one
takes its claims. The search makes genes pass by pass in ascending `order`, and builds a
genome's architecture changes first (their weights are refitted), then its exact rewrites,
each in that order.

Adding a pass: write one module in passes/ with a `Pass` subclass setting `name`, `exact`,
`summary`, `options` (constructor keywords among "multiple", "multiplier"), `sites` and
`apply`; list the class in passes/__init__.py's `PASSES`. For the search to use it also set
`order` and `precedence` and implement `effect` from the primitives above (and
`variants` if it has several instances per search, as depth-multiplier has one per
multiplier). Its test: tests/test_pass_effects.py checks, for every gene of every zoo model
alone, that the simulated score equals the estimate of the model the pass builds; add a
model with its sites there if the zoo has none. Nothing in search/ changes, as long as the
rule's effect is made of the primitives above; a new kind of change (say a kernel removed
without its reader becoming dense, or a spec change other than channels and groups) is a
new `Effect` field and its arithmetic in search/space.py's `_kernel_cost`, once for all
passes. An exact rewrite that never costs more anywhere can instead be `canonical`:
applied at every site before the search, its `canonical_note` saying what it did in the
search's result (fold-bn, trim-kernel).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.graph_io import Model
from rewriter.graph_query import ConvInfo, Namer, conv_info

if TYPE_CHECKING:
    from rewriter.cost.kernels import Kernel
    from rewriter.cost.opspec import OpSpec


@dataclass(frozen=True)
class Site:
    """A place where a pass applies. `id` is stable across unrelated rewrites."""

    pass_name: str
    id: str
    nodes: tuple[str, ...]
    description: str
    detail: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, object]:
        return {"pass": self.pass_name, "id": self.id, "nodes": list(self.nodes),
                "description": self.description, **self.detail}


# -- what the search shows a pass, and what a pass declares back ----------------------------
@dataclass(frozen=True)
class KernelInfo:
    """One kernel of the canonical model (rewriter.cost.kernels), with the data input of
    its first node, the tensor its last node writes, and whether its conv or Gemm has a
    bias (an OpSpec's weight count assumes one: Cout more elements)."""

    kernel: Kernel
    input: str
    output: str
    bias: bool = True

    def params(self, spec: OpSpec | None = None, bias: bool | None = None) -> int:
        """Weight elements of this kernel as `spec` (default its own) in the graph: the
        spec's count less Cout where the op has no bias."""
        spec = spec or self.kernel.spec
        elements = spec.weight_elements
        has_bias = self.bias if bias is None else bias
        return elements - spec.cout if elements and not has_bias else elements


@dataclass(frozen=True)
class SearchView:
    """Read-only description of the canonical model the search scores genomes on."""

    kernels: tuple[KernelInfo, ...]
    channels: Mapping[str, int]  # channel group id -> channels
    steps: Mapping[str, int]  # node name -> its step in topological order
    multiple: int  # the target's P
    _by_first: Mapping[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, kernels: Sequence[KernelInfo], channels: Mapping[str, int],
           steps: Mapping[str, int], multiple: int) -> SearchView:
        by_first = {info.kernel.nodes[0]: i for i, info in enumerate(kernels)}
        return cls(tuple(kernels), MappingProxyType(dict(channels)),
                   MappingProxyType(dict(steps)), multiple, MappingProxyType(by_first))

    def kernel_of(self, node: str) -> int | None:
        """Index of the kernel whose first node is `node` (None: no kernel starts there)."""
        return self._by_first.get(node)


Resize = Callable[[int], int]
Regroup = Callable[[int, int], int]  # (groups, input channels) -> the new groups


@dataclass(frozen=True)
class SetTo:
    """Resize: the group gets `channels`, whatever it had."""

    channels: int

    def __call__(self, current: int) -> int:
        return self.channels


@dataclass(frozen=True)
class RoundUp:
    """Resize: C -> ceil(C/P)*P; an already aligned group is unchanged (so inert)."""

    multiple: int

    def __call__(self, current: int) -> int:
        return -(-current // self.multiple) * self.multiple


def merged_groups(groups: int, cin: int, width: int) -> int:
    """The fewest groups, more than one, that a conv with `groups` groups over `cin` input
    channels can be merged into (whole groups at a time) with at most `width` input
    channels per group; `groups` itself when none can (no two groups fit together, or
    all fit in one: that is dw-to-dense's rewrite)."""
    per_group = cin // groups
    merge = max(k for k in range(1, groups + 1)
                if groups % k == 0 and k * per_group <= max(width, per_group))
    return groups if merge == groups else groups // merge


@dataclass(frozen=True)
class MergeGroups:
    """Regroup: a grouped conv's groups merged into groups of up to `width` input
    channels (`merged_groups`), from the groups and channels it has then; without a
    width, into one group (a dense conv)."""

    width: int | None = None

    def __call__(self, groups: int, cin: int) -> int:
        return 1 if self.width is None else merged_groups(groups, cin, self.width)


def kernel_claim(index: int) -> tuple[str, int]:
    """Claim key of a kernel: effects that replace or remove it exclude each other."""
    return ("kernel", index)


def group_claim(group: str) -> tuple[str, str]:
    """Claim key of a channel group set to a count: the first such effect wins."""
    return ("group", group)


@dataclass(frozen=True)
class Fusion:
    """Kernel `first` is removed and kernel `second` becomes a dense conv reading `first`'s
    input. `skipped`: steps of the nodes that no longer run (first's conv and activation);
    `reads`: (step of second's node, the tensor it now reads); `border`: an Add of a
    constant [1, Cout, H', W'] map (Cout*H'*W' parameters) follows the fused conv, which
    then has no bias; without it the fused conv has a bias (Cout), whatever the two had.
    Parameters: first's are removed, second's become the fused conv's."""

    first: int
    second: int
    border: bool
    skipped: tuple[int, ...]
    reads: tuple[int, str]

    @classmethod
    def of(cls, site: Site, view: SearchView, border: bool = False) -> Fusion | None:
        """The fusion of a site whose nodes are (first conv, [its activation...], second
        conv); None if either conv starts no kernel."""
        first, second = view.kernel_of(site.nodes[0]), view.kernel_of(site.nodes[-1])
        if first is None or second is None:
            return None
        return cls(first, second, border, tuple(view.steps[n] for n in site.nodes[:-1]),
                   (view.steps[site.nodes[-1]], view.kernels[first].input))


@dataclass(frozen=True, eq=False)
class Effect:
    """What one site does to the canonical model's kernels and tensors (see the module
    docstring for how the search composes effects)."""

    channels: Mapping[str, Resize] = field(default_factory=dict)
    regroup: Mapping[int, Regroup] = field(default_factory=dict)
    fusion: Fusion | None = None
    claims: frozenset[Hashable] = frozenset()
    rank: float = 0.0  # among effects of one precedence, the lower wins

    @property
    def changes_tensors(self) -> bool:
        """Whether it changes any tensor (a kernel only regrouped changes none, so the
        peak of activations does not depend on it)."""
        return bool(self.channels) or self.fusion is not None


class Pass(ABC):
    name: ClassVar[str]
    exact: ClassVar[bool]
    summary: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()  # constructor keywords: "multiple", "multiplier"
    order: ClassVar[int | None] = None  # position among the search's passes; None: unused
    precedence: ClassVar[int] = 0  # order in which effects are resolved (first wins)
    canonical: ClassVar[bool] = False  # exact, applied everywhere before the search
    multiplier: float | None = None  # a depth multiplier's factor, for the search's genes

    @abstractmethod
    def sites(self, model: Model) -> list[Site]:
        """Every place in `model` where the rule applies."""

    @abstractmethod
    def apply(self, model: Model, site: Site) -> Model:
        """A new model with the rewrite applied at `site`; `model` is left unchanged."""

    @classmethod
    def variants(cls, multiple: int, multipliers: Sequence[float]) -> list[Pass]:
        """The instances the search makes genes from, at the target's P."""
        options = {"multiple": multiple} if "multiple" in cls.options else {}
        return [cls(**options)]  # type: ignore[call-arg]

    def effect(self, site: Site, view: SearchView) -> Effect | None:
        """How `site` changes the kernels of `view` (passes with an `order` implement it)."""
        raise NotImplementedError(f"pass {self.name} declares no effect for the search")

    def canonical_note(self, applied: Sequence[Site]) -> str | None:
        """What a canonical pass's rewrites at `applied` tell the user of a search's
        result (None: nothing)."""
        return None




def conv_to_edit(model: Model, site: Site) -> tuple[Model, gs.Node, ConvInfo]:
    """A copy of `model` to edit, the conv that `site` names first in it, and the conv's
    parameters (a site names only convs that `conv_info` reads)."""
    new = model.copy()
    node = new.node(site.nodes[0])
    info = conv_info(node)
    assert info is not None
    return new, node, info


def set_weight(model: Model, node: gs.Node, suffix: str, values: np.ndarray) -> None:
    """Give `node` (a conv of `model`) new weights, a constant named after it."""
    node.inputs[1] = constant(Namer(model.graph), f"{node.name}.{suffix}", values)


def constant(namer: Namer, base: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(namer(base), np.ascontiguousarray(values))


def finish(model: Model) -> Model:
    """Drop dead nodes, re-sort, forget stale shapes after an edit."""
    model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    for tensor in model.graph.tensors().values():
        if isinstance(tensor, gs.Variable) and not any(
            tensor is t for t in model.graph.inputs + model.graph.outputs
        ):
            tensor.shape = None
    model.invalidate()
    return model
