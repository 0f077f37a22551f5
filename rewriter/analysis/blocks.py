"""Find the blocks the rewrites act on.

Inverted bottleneck (IBN): [1x1 expand conv -> BN? -> act] -> KxK depthwise conv -> BN?
-> act -> [squeeze-excite] -> 1x1 project conv -> BN? (linear), with a residual Add when
the block's input is added back. Every other conv is reported as a conv -> BN? -> act?
chain. Activations are recognised in any spelling (see activations.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import onnx_graphsurgeon as gs

from rewriter.analysis.activations import match_activation
from rewriter.graph_io import Model
from rewriter.graph_query import conv_info, only_consumer


@dataclass
class Block:
    kind: str  # "inverted_bottleneck" or "conv_bn_act"
    nodes: list[str]
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    expansion: float = 1.0
    residual: bool = False
    squeeze_excite: bool = False
    batchnorm: bool = False
    activation: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Chain:
    nodes: list[gs.Node]
    output: gs.Tensor
    batchnorm: bool
    activation: str


def follow_bn_act(model: Model, tensor: gs.Tensor, allow_act: bool = True) -> _Chain:
    """From a conv output, absorb a BatchNormalization and an activation that follow it."""
    outputs = model.graph.outputs
    nodes: list[gs.Node] = []
    bn = False
    nxt = only_consumer(tensor, outputs)
    if nxt is not None and nxt.op == "BatchNormalization":
        nodes.append(nxt)
        tensor, bn = nxt.outputs[0], True
    act_name = ""
    if allow_act:
        act = match_activation(tensor, outputs)
        if act is not None:
            nodes.extend(act.nodes)
            tensor, act_name = act.output, act.name
    return _Chain(nodes, tensor, bn, act_name)


def _squeeze_excite(model: Model, tensor: gs.Tensor) -> tuple[list[gs.Node], gs.Tensor] | None:
    """x -> GlobalAveragePool -> ... -> gate; Mul(x, gate). Returns SE nodes and Mul output."""
    readers = list(tensor.outputs)
    if len(readers) != 2 or any(t is tensor for t in model.graph.outputs):
        return None
    pools = [n for n in readers if n.op in ("GlobalAveragePool", "ReduceMean")]
    muls = [n for n in readers if n.op == "Mul"]
    if len(pools) != 1 or len(muls) != 1:
        return None
    pool, mul = pools[0], muls[0]
    gate = mul.inputs[1] if mul.inputs[0] is tensor else mul.inputs[0]
    nodes: list[gs.Node] = []
    stack, seen = [gate], set()
    while stack:  # walk back from the gate; every path must end at the pool
        current = stack.pop()
        if current is pool.outputs[0]:
            continue
        node = current.inputs[0] if current.inputs else None
        if node is None or id(node) in seen or len(nodes) > 12:
            return None
        seen.add(id(node))
        nodes.append(node)
        stack.extend(t for t in node.inputs if isinstance(t, gs.Variable))
    return [pool, *reversed(nodes), mul], mul.outputs[0]


def find_blocks(model: Model) -> list[Block]:
    graph = model.graph
    shapes = model.shapes
    ibn_nodes: set[str] = set()
    blocks: list[Block] = []
    # Map: tensor reached after a 1x1 conv + BN + act -> that chain (expand candidates).
    expand_ends: dict[int, tuple[gs.Node, _Chain]] = {}
    for node in graph.nodes:
        info = conv_info(node)
        if info is not None and info.kernel == (1, 1) and info.groups == 1:
            chain = follow_bn_act(model, node.outputs[0])
            if chain.activation:
                expand_ends[id(chain.output)] = (node, chain)

    for dw in graph.nodes:
        info = conv_info(dw)
        if info is None or not info.is_depthwise or info.kernel == (1, 1):
            continue
        if info.cout != info.cin:
            continue
        dw_in = dw.inputs[0]
        expand = expand_ends.get(id(dw_in)) if len(dw_in.outputs) == 1 else None
        mid = follow_bn_act(model, dw.outputs[0])
        if not mid.activation:
            continue
        nodes = [dw, *mid.nodes]
        tensor = mid.output
        se = _squeeze_excite(model, tensor)
        if se is not None:
            nodes.extend(se[0])
            tensor = se[1]
        project = only_consumer(tensor, graph.outputs)
        pinfo = conv_info(project) if project is not None else None
        if pinfo is None or pinfo.kernel != (1, 1) or pinfo.groups != 1:
            continue
        tail = follow_bn_act(model, project.outputs[0], allow_act=False)
        if match_activation(tail.output, graph.outputs) is not None:
            continue  # an IBN's projection is linear; this is a separable-conv chain
        block_in = expand[0].inputs[0] if expand else dw_in
        all_nodes = ([expand[0], *expand[1].nodes] if expand else []) + nodes + [project,
                                                                                 *tail.nodes]
        residual = False
        for reader in tail.output.outputs:
            if reader.op == "Add" and any(t is block_in for t in reader.inputs):
                residual = True
                all_nodes.append(reader)
        in_channels = shapes[block_in.name][1]
        blocks.append(
            Block(
                kind="inverted_bottleneck",
                nodes=[n.name for n in all_nodes],
                kernel=info.kernel[0],
                stride=info.strides[0],
                in_channels=int(in_channels),
                out_channels=pinfo.cout,
                expansion=round(info.cout / in_channels, 4) if expand else 1.0,
                residual=residual,
                squeeze_excite=se is not None,
                batchnorm=mid.batchnorm,
                activation=mid.activation,
            )
        )
        ibn_nodes.update(n.name for n in all_nodes)

    for node in graph.nodes:
        info = conv_info(node)
        if info is None or node.name in ibn_nodes:
            continue
        chain = follow_bn_act(model, node.outputs[0])
        blocks.append(
            Block(
                kind="conv_bn_act",
                nodes=[node.name, *(n.name for n in chain.nodes)],
                kernel=info.kernel[0],
                stride=info.strides[0],
                in_channels=info.cin,
                out_channels=info.cout,
                batchnorm=chain.batchnorm,
                activation=chain.activation,
            )
        )
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    blocks.sort(key=lambda b: order[b.nodes[0]])
    return blocks
