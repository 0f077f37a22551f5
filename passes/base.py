"""What every pass provides: find sites, apply one, say whether it is exact."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from rewriter.graph_io import Model


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


class Pass(ABC):
    name: ClassVar[str]
    exact: ClassVar[bool]
    summary: ClassVar[str]

    @abstractmethod
    def sites(self, model: Model) -> list[Site]:
        """Every place in `model` where the rule applies."""

    @abstractmethod
    def apply(self, model: Model, site: Site) -> Model:
        """A new model with the rewrite applied at `site`; `model` is left unchanged."""


class Namer:
    """Fresh tensor names in a graph (constants added by a rewrite need unique names)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.used = set(graph.tensors().keys())

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


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
