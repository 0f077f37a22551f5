"""Load ONNX files into an editable `Model`, and save models atomically.

Loading normalises what exporters produce so that passes see one shape of graph:
Constant nodes become initializers, constant sub-expressions (a Reshape of a constant
bias, say) are folded, exporter idioms are rewritten into the canonical form
(rewriter.canonical: zero spatial Pads folded into conv pads, Identity and Dropout
removed, per-channel Mul/Add after a conv folded into it), every node gets a unique name,
and the graph is topologically sorted. A model whose graph outputs carry no type (which
onnxruntime runs, but onnx.checker refuses) gets their types from shape inference. What
loading normalised is listed in `Model.canonical_notes`. Symbolic dims stay symbolic:
analysis runs on concrete shapes (batch 1 unless the user says otherwise), but the model
that is written keeps the symbolic batch.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from rewriter.canonical import canonicalize
from rewriter.changes import ArchitectureChanges
from rewriter.errors import BadInputError, RewriterError, UnsupportedError
from rewriter.static_shapes import fold_computed_shapes, fold_zero_states, shapes_at_run_time

gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)

# Protobuf refuses messages over 2 GiB; past this the weights go to an external file.
_PROTOBUF_LIMIT = 2**31 - 2**24

Shape = tuple[int, ...]


# Constant folding creates no tensor larger than this (a tiny model's ConstantOfShape could
# otherwise expand to gigabytes on load); larger constant subgraphs stay as they are.
FOLD_SIZE_LIMIT = 16 * 2**20

# Inputs beyond this many bytes (float32, all inputs together) are refused before anything
# is allocated: verification and calibration materialise them.
MAX_INPUT_BYTES = 4 * 2**30
_MAX_DIM = 2**31 - 1
# Running a model (to size what shape inference cannot) allocates its inputs: at most this.
MAX_RUN_BYTES = 2**30


def _input_bytes_error(total: int, what: str) -> BadInputError:
    return BadInputError(f"{what}: the inputs would need {total / 2**30:,.1f} GiB "
                         f"(float32); at most {MAX_INPUT_BYTES // 2**30} GiB is supported")


def parse_input_shapes(specs: Sequence[str] | None) -> dict[str, Shape]:
    """Parse CLI `NAME=1x3x224x224` strings."""
    shapes: dict[str, Shape] = {}
    for spec in specs or ():
        name, sep, dims = spec.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise BadInputError(
                f"bad --input-shape {spec!r}: expected NAME=DxDx... with positive integers, "
                "e.g. input=1x3x224x224"
            ) from None
        if any(d > _MAX_DIM for d in shape):
            raise BadInputError(f"bad --input-shape {spec!r}: a dim is larger than {_MAX_DIM}")
        if name in shapes:
            raise BadInputError(f"--input-shape {name} is given twice")
        shapes[name] = shape
    total = sum(4 * math.prod(s) for s in shapes.values())
    if total > MAX_INPUT_BYTES:
        raise _input_bytes_error(total, "--input-shape")
    return shapes


def _is_static(dim: object) -> bool:
    return isinstance(dim, (int, np.integer)) and int(dim) > 0


@dataclass
class Model:
    """An ONNX model as an editable onnx-graphsurgeon graph plus what analysis needs.

    `input_shapes` holds the concrete shape of every graph input used for analysis and
    verification (None where a non-batch dim is still symbolic). Passes never mutate a
    Model they are given: they `copy()` it and edit the copy. `changes` records what
    architecture changes did relative to the original model (rewriter.changes), for the
    refit that follows them; it lives in memory only and is never saved to ONNX.
    """

    graph: gs.Graph
    input_shapes: dict[str, Shape | None]
    ir_version: int
    source: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    changes: ArchitectureChanges = field(default_factory=ArchitectureChanges)
    # what loading normalised (rewriter.canonical, lenient loading), for the user to read
    canonical_notes: list[str] = field(default_factory=list)
    _shapes: dict[str, Shape] | None = field(default=None, repr=False)

    # -- structure -------------------------------------------------------------------
    @property
    def opset(self) -> int:
        return int(self.graph.opset)

    def copy(self) -> "Model":
        return Model(
            graph=self.graph.copy(),
            input_shapes=dict(self.input_shapes),
            ir_version=self.ir_version,
            source=self.source,
            metadata=dict(self.metadata),
            changes=self.changes.copy(),
            canonical_notes=list(self.canonical_notes),
        )

    def node(self, name: str) -> gs.Node:
        for node in self.graph.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def batch_is_symbolic(self) -> bool:
        return any(t.shape is not None and len(t.shape) > 0 and not _is_static(t.shape[0])
                   for t in self.graph.inputs)

    # -- shapes ----------------------------------------------------------------------
    def concrete_input_shapes(self) -> dict[str, Shape]:
        missing = {k: v for k, v in self.input_shapes.items() if v is None}
        if missing:
            lines = []
            for inp in self.graph.inputs:
                if inp.name in missing:
                    dims = "x".join(str(d) if _is_static(d) else "?" for d in inp.shape)
                    lines.append(f"'{inp.name}' is {dims}")
            example = next(iter(missing))
            raise UnsupportedError(
                f"dynamic input dims: {', '.join(lines)}; this needs static sizes: pass "
                f"--input-shape {example}=1x3xHxW"
            )
        return {k: v for k, v in self.input_shapes.items() if v is not None}

    @property
    def shapes(self) -> dict[str, Shape]:
        """Concrete shape of every tensor (inputs at `concrete_input_shapes()`)."""
        if self._shapes is None:
            self._shapes = _infer_concrete_shapes(self)
        return self._shapes

    def shape(self, tensor: gs.Tensor | str) -> Shape:
        name = tensor if isinstance(tensor, str) else tensor.name
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        return self.shapes[name]

    def invalidate(self) -> None:
        self._shapes = None

    # -- export ----------------------------------------------------------------------
    def to_onnx(self, infer_shapes: bool = True) -> onnx.ModelProto:
        """Export with symbolic dims kept and (unless asked not to) intermediate shapes
        re-inferred."""
        self.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        proto = gs.export_onnx(self.graph, do_type_check=False)
        proto.ir_version = self.ir_version
        del proto.graph.value_info[:]
        del proto.metadata_props[:]
        for key, value in self.metadata.items():
            proto.metadata_props.add(key=key, value=value)
        if not infer_shapes:
            return proto
        try:
            proto = onnx.shape_inference.infer_shapes(proto)
        except Exception:  # shape inference is advisory here; the checker runs on save
            pass
        return proto


def _infer_concrete_shapes(model: Model) -> dict[str, Shape]:
    proto = model.to_onnx(infer_shapes=False)  # inferred below, at the concrete input shapes
    concrete = model.concrete_input_shapes()
    for inp in proto.graph.input:
        if inp.name in concrete:
            dims = inp.type.tensor_type.shape.dim
            for dim, size in zip(dims, concrete[inp.name]):
                dim.Clear()
                dim.dim_value = size
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:
        raise UnsupportedError(f"shape inference failed: {exc}".splitlines()[0]) from None
    shapes: dict[str, Shape] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(
        inferred.graph.output
    ):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    missing = [
        t.name for node in model.graph.nodes for t in node.outputs if t.name not in shapes
    ]
    if missing:
        shapes.update(_shapes_from_onnxruntime(inferred, missing, concrete))
    return shapes


def _shapes_from_onnxruntime(
    proto: onnx.ModelProto, names: list[str], inputs: Mapping[str, Shape]
) -> dict[str, Shape]:
    """Shapes ONNX inference could not resolve, read off one onnxruntime run."""
    from rewriter.runtime import run_model, with_outputs

    need = sum(4 * math.prod(shape) for shape in inputs.values())
    if need > MAX_RUN_BYTES:
        raise UnsupportedError(
            f"shape inference cannot size {len(names)} tensors (e.g. '{names[0]}'), and "
            f"running the model to find them would need {need / 2**30:,.1f} GiB of inputs; "
            f"at most {MAX_RUN_BYTES / 2**30:g} GiB")
    probe = with_outputs(proto, names)
    feeds = {
        name: np.zeros(shape, dtype=np.float32) for name, shape in inputs.items()
    }
    outputs = run_model(probe, feeds, output_names=names)
    return {name: tuple(int(d) for d in value.shape) for name, value in outputs.items()}


# -- loading ---------------------------------------------------------------------------
def load_model(
    path: str | os.PathLike[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Model:
    """Read an ONNX file (with external data beside it, if any) into a `Model`."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"no such file: {path}")
    if path.is_dir():
        raise BadInputError(f"{path} is a directory, not an ONNX file")
    try:
        # External data is checked (confined to the model's folder) before it is read.
        proto = onnx.load(str(path), load_external_data=False)
        if _uses_external_data(proto):
            _check_external_data(proto, path)
            onnx.load_external_data_for_model(proto, str(path.parent))
    except RewriterError:
        raise
    except DecodeError as exc:
        raise BadInputError(f"{path} is not an ONNX model (protobuf parse failed: {exc})") from None
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(f"cannot read {path}: {msg}") from None
    except Exception as exc:  # protobuf raises its own types for truncated input
        raise BadInputError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc})") from None
    return model_from_proto(proto, input_shapes, source=str(path))


def _all_tensors(proto: onnx.ModelProto):
    """Every TensorProto of the model: initializers and tensor attributes, subgraphs too."""
    stack: list = [proto.graph]
    for function in proto.functions:
        stack.extend(function.node)  # a node's tensors are in its attributes
    while stack:
        item = stack.pop()
        if isinstance(item, onnx.GraphProto):
            yield from item.initializer
            for sparse in item.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            stack.extend(item.node)
            continue
        for attr in item.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                stack.append(attr.g)
            stack.extend(attr.graphs)


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data)
               for t in _all_tensors(proto))


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external data that is not a plain file inside the model's folder, or whose
    offset and length run past that file; checked before onnx reads any of it."""
    base = path.parent.resolve()
    sizes: dict[str, int] = {}
    for tensor in _all_tensors(proto):
        if not (tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data)):
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        where = f"{path}: tensor '{tensor.name}' external data"

        def refuse(problem: str, where: str = where) -> BadInputError:
            return BadInputError(f"{where} {problem}; refusing to read it")

        location = entries.get("location", "")
        if not location or "\x00" in location:
            raise refuse("has no file name")
        rel = Path(location)
        if not rel.parts:
            raise refuse("has no file name")
        if rel.is_absolute() or location.startswith(("/", "\\")) or ":" in rel.parts[0]:
            raise refuse(f"location {location!r} is an absolute path")
        if any(part == ".." for part in Path(location.replace("\\", "/")).parts):
            raise refuse(f"location {location!r} leaves the model's folder ('..')")
        current = base
        for part in rel.parts:
            current = current / part
            if current.is_symlink():
                raise refuse(f"location {location!r} goes through a symlink")
        target = base / rel
        try:
            resolved = target.resolve(strict=True)
        except (OSError, RuntimeError):
            raise refuse(f"file {location!r} does not exist next to the model") from None
        if resolved != base and base not in resolved.parents:
            raise refuse(f"location {location!r} resolves outside the model's folder")
        if not resolved.is_file():
            raise refuse(f"location {location!r} is not a regular file")
        try:
            offset = int(entries.get("offset", "0") or 0)
            length = int(entries["length"]) if entries.get("length") else None
        except ValueError:
            raise refuse("has a non-integer offset or length") from None
        if offset < 0 or (length is not None and length < 0):
            raise refuse("has a negative offset or length")
        size = sizes.setdefault(str(resolved), resolved.stat().st_size)
        end = offset + (length if length is not None else 0)
        if offset > size or end > size:
            raise refuse(f"offset {offset} + length {length or 0} runs past the end of "
                         f"{location!r} ({size} bytes)")


def _check_text(proto: onnx.ModelProto, where: str) -> None:
    """Every string field (names, op types, domains) is valid UTF-8: protobuf hands back
    bytes for one that is not, which fails deep inside graph handling."""
    from google.protobuf.descriptor import FieldDescriptor

    stack = [proto]
    while stack:
        message = stack.pop()
        for descriptor, value in message.ListFields():
            if descriptor.type == FieldDescriptor.TYPE_STRING:
                for text in [value] if isinstance(value, (str, bytes)) else value:
                    if not isinstance(text, str):
                        raise BadInputError(
                            f"{where} is not a valid ONNX model: field '{descriptor.name}' "
                            f"is not UTF-8 text ({text[:40]!r})")
            elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
                if hasattr(value, "ListFields"):
                    stack.append(value)
                else:
                    stack.extend(value)


_PACKED_TYPES = {name for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                 if hasattr(onnx.TensorProto, name)}


def _check_tensor_data(proto: onnx.ModelProto, where: str) -> None:
    """Every tensor's data holds as many elements as its dims say (the checker does not
    look; numpy would fail deep inside loading)."""
    known = set(onnx.TensorProto.DataType.values())
    for vi in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type not in known:
            raise BadInputError(f"{where}: tensor '{vi.name}' has the unknown element type "
                                f"{vi.type.tensor_type.elem_type}")
    for tensor in _all_tensors(proto):
        if tensor.data_type not in known:
            raise BadInputError(f"{where}: tensor '{tensor.name}' has the unknown data type "
                                f"{tensor.data_type}")
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            continue
        name = f"{where}: tensor '{tensor.name}'"
        if any(d < 0 for d in tensor.dims):
            raise BadInputError(f"{name} has a negative dim {list(tensor.dims)}")
        count = math.prod(tensor.dims)
        try:
            type_name = onnx.TensorProto.DataType.Name(tensor.data_type)
            if type_name in _PACKED_TYPES or tensor.data_type in (
                    onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
                continue
            if tensor.HasField("raw_data"):
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
                have, want = len(tensor.raw_data), count * itemsize
            else:
                field_name = onnx.helper.tensor_dtype_to_field(tensor.data_type)
                per = 2 if type_name.startswith("COMPLEX") else 1
                have, want = len(getattr(tensor, field_name)), count * per
        except (KeyError, ValueError, TypeError, AttributeError):
            continue  # a type this onnx does not map: the loader below judges it
        if have != want:
            unit = "bytes" if tensor.HasField("raw_data") else "values"
            raise BadInputError(f"{name} has dims {list(tensor.dims)} ({count} elements) but "
                                f"its data holds {have} {unit} (expected {want})")


def model_from_proto(
    proto: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    source: str | None = None,
) -> Model:
    """Build a `Model` from an in-memory ModelProto (the proto is not modified)."""
    where = source or "model"
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise BadInputError(f"{where} is not an ONNX model (no graph or no nodes)")
    notes: list[str] = []
    _check_text(proto, where)
    _check_opsets(proto, where)  # before the checker, whose message on a future opset is long
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        # Only a model the checker refuses gets its output types filled in, so a valid
        # model loads exactly as it is.
        proto, notes = _fill_output_types(proto)
        try:
            if not notes:
                raise exc
            onnx.checker.check_model(proto)
        except Exception as error:
            first = (str(error).strip().splitlines()[0] if str(error).strip()
                     else type(error).__name__)
            raise BadInputError(f"{where} is not a valid ONNX model: {first}") from None
    _check_supported(proto, where)
    _check_tensor_data(proto, where)

    graph = gs.import_onnx(proto)
    _constant_nodes_to_initializers(graph)
    # The user's non-batch dims are fixed first, so that shape computations over them
    # (Shape -> Gather -> Concat -> Reshape chains) fold into constants below.
    resolved = _resolve_input_shapes(graph, dict(input_shapes or {}))
    before = len(graph.nodes)
    static = fold_computed_shapes(graph, proto.ir_version, resolved)
    if static:
        notes.append(f"made {static} computed Reshape/Expand shape{'s' if static > 1 else ''}"
                     " constant at the fixed input dims (the batch stays symbolic)")
    graph, declared, inferred = _with_inferred_shapes(graph, proto)
    _fill_matmul_shapes(graph, proto.ir_version, resolved)
    try:
        big = (_large_tensors(inferred, inferred=True) if inferred is not None
               else _large_tensors(gs.export_onnx(graph, do_type_check=False)))
        graph.fold_constants(error_ok=True, size_threshold=FOLD_SIZE_LIMIT,
                             should_exclude_node=lambda n: any(t.name in big for t in n.outputs))
    except Exception:  # folding is an optimisation; an unfoldable graph still loads
        pass
    # Folding leaves dead constant subgraphs; drop them so that canonicalize sees only the
    # readers that remain.
    graph.cleanup(remove_unused_graph_inputs=False)
    # after folding, so that a bias an exporter wrote as Identity(initializer) is constant
    zero = fold_zero_states(graph, proto.ir_version, resolved)
    if zero:
        notes.append(f"folded {zero} term{'s' if zero > 1 else ''} of zero initial states "
                     "(ConstantOfShape of 0) out of the Adds that read them")
    folded = before - len(graph.nodes)
    if folded > 0 and any(n.op_type in ("Shape", "Size") for n in proto.graph.node):
        notes.append(f"folded {folded} node{'s' if folded > 1 else ''} of constant and "
                     "shape computations into constants")
    notes.extend(canonicalize(graph))
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    _forget_inferred_shapes(graph, declared)
    _name_nodes(graph)
    constant = [t.name for t in graph.outputs if isinstance(t, gs.Constant)]
    if constant:
        raise UnsupportedError(
            f"{where}: output {', '.join(repr(n) for n in constant)} is a constant (it depends "
            "on no input); models whose outputs are constants are not supported")

    model = Model(
        graph=graph,
        input_shapes={},
        ir_version=proto.ir_version,
        source=source,
        metadata={p.key: p.value for p in proto.metadata_props},
        canonical_notes=notes,
    )
    model.input_shapes = resolved
    total = sum(4 * math.prod(s) for s in model.input_shapes.values()
                if s is not None)
    if total > MAX_INPUT_BYTES:
        raise _input_bytes_error(total, where)
    return model


# Ops whose output may be much larger than their inputs: not folded when inference cannot
# say how large the output is.
_EXPANDING_OPS = {"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad",
                  "OneHot", "EyeLike", "RandomNormal", "RandomUniform"}


def _with_inferred_shapes(graph: gs.Graph, proto: onnx.ModelProto
                          ) -> tuple[gs.Graph, dict[str, object], onnx.ModelProto | None]:
    """`graph` re-imported with every tensor's shape as onnx infers it (with data
    propagation, at the fixed input dims), for constant folding to fold shape computations
    and canonical rules to see ranks; the shapes the file itself declared (name -> shape),
    to restore afterwards; and the inferred proto (for `_large_tensors`). The graph as it
    was, and no proto, when inference fails."""
    declared = {name: t.shape for name, t in graph.tensors().items()
                if isinstance(t, gs.Variable)}
    try:
        graph.cleanup(remove_unused_graph_inputs=False)  # nodes emptied by earlier steps
        exported = gs.export_onnx(graph, do_type_check=False)
        exported.ir_version = proto.ir_version
        inferred = onnx.shape_inference.infer_shapes(exported, data_prop=True)
        again = gs.import_onnx(inferred)
    except Exception:
        return graph, declared, None
    if [t.name for t in again.inputs] != [t.name for t in graph.inputs]:
        return graph, declared, None
    return again, declared, inferred


def _fill_matmul_shapes(graph: gs.Graph, ir_version: int,
                        inputs: Mapping[str, object]) -> None:
    """Shapes of the data inputs of MatMuls by a constant that inference left unknown, as
    the graph runs (canonical's MatMul + Add -> Gemm needs their rank)."""
    wanted = [n.inputs[0] for n in graph.nodes
              if n.op == "MatMul" and len(n.inputs) == 2 and n.inputs[0].shape is None
              and isinstance(n.inputs[1], gs.Constant)
              and any(c.op == "Add" for c in n.outputs[0].outputs)]
    found = shapes_at_run_time(graph, ir_version, inputs,  # type: ignore[arg-type]
                               sorted({t.name for t in wanted}))
    for tensor in wanted:
        if tensor.name in found:
            tensor.shape = found[tensor.name]


def _forget_inferred_shapes(graph: gs.Graph, declared: Mapping[str, object]) -> None:
    """Tensors other than the inputs get back the shapes the file declared (None for most
    intermediates): passes change channel counts without updating shapes, and
    `Model.shapes` infers them afresh."""
    keep = {id(t) for t in graph.inputs}
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Variable) and id(tensor) not in keep:
            tensor.shape = declared.get(name)


def _large_tensors(proto: onnx.ModelProto, inferred: bool = False) -> set[str]:
    """Node outputs that constant folding must not compute: larger than FOLD_SIZE_LIMIT
    (by shape inference, run here unless `inferred` says the proto has it already), or of
    an expanding op whose size inference cannot tell. Folding evaluates a subgraph before
    it looks at the result's size, so the cap must come first."""
    constant = {t.name for t in proto.graph.initializer} | {""}
    foldable = False
    for node in proto.graph.node:
        if all(name in constant for name in node.input):
            constant.update(node.output)
            foldable = foldable or node.op_type != "Constant"
    if not foldable:  # nothing to fold: spare the shape inference
        return set()
    shaped = proto
    if not inferred:
        try:
            shaped = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception:
            pass
    sizes: dict[str, int | None] = {}
    for vi in list(shaped.graph.value_info) + list(shaped.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize
            except Exception:  # undefined or exotic: assume the widest
                itemsize = 8
            sizes[vi.name] = itemsize * math.prod(max(int(d.dim_value), 0)
                                                  for d in tt.shape.dim)
    big = set()
    for node in proto.graph.node:
        for name in node.output:
            size = sizes.get(name)
            if size is None and node.op_type in _EXPANDING_OPS or (
                    size is not None and size > FOLD_SIZE_LIMIT):
                big.add(name)
    return big


def _output_type_missing(vi: onnx.ValueInfoProto) -> bool:
    if not vi.HasField("type"):
        return True
    if vi.type.HasField("tensor_type"):
        tt = vi.type.tensor_type
        return tt.elem_type == onnx.TensorProto.UNDEFINED or not tt.HasField("shape")
    return False


def _fill_output_types(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Give graph outputs that lack a type (or its elem_type or shape) the type shape
    inference finds, else float32 of unknown shape; returns a copy when it changes any.

    onnxruntime runs such models (it infers output types itself), some exporters write
    them, and onnx.checker refuses them ("Field 'shape' of 'type' is required but
    missing"); the type is declaration, not computation, so filling it in is safe.
    """
    missing = [vi.name for vi in proto.graph.output if _output_type_missing(vi)]
    if not missing:
        return proto, []
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    found: dict[str, onnx.TypeProto] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed)
        for vi in list(inferred.graph.output) + list(inferred.graph.value_info):
            if vi.name in missing and not _output_type_missing(vi):
                found.setdefault(vi.name, vi.type)
    except Exception:  # the fallback below still lets the checker judge the rest
        pass
    unresolved = [n for n in missing if n not in found]
    ranks = _onnxruntime_output_shapes(fixed) if unresolved else {}
    guessed = []
    for vi in fixed.graph.output:
        if vi.name not in missing:
            continue
        if vi.name in found:
            vi.type.CopyFrom(found[vi.name])
            continue
        guessed.append(vi.name)
        tt = vi.type.tensor_type
        if tt.elem_type == onnx.TensorProto.UNDEFINED:
            tt.elem_type = onnx.TensorProto.FLOAT
        if not tt.HasField("shape") and vi.name in ranks:
            # The checker wants a shape field; its dims may all be unknown.
            tt.shape.SetInParent()
            for dim in ranks[vi.name]:
                entry = tt.shape.dim.add()
                if isinstance(dim, int):
                    entry.dim_value = dim
                elif isinstance(dim, str):
                    entry.dim_param = dim
    note = (f"filled in the missing type of graph output{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(n) for n in missing)} from shape inference")
    if guessed:
        note += (f" (inference failed for {', '.join(repr(n) for n in guessed)}: float32, "
                 "shape as onnxruntime declares it)")
    return fixed, [note]


def _onnxruntime_output_shapes(proto: onnx.ModelProto) -> dict[str, list[object]]:
    """Output shapes as an onnxruntime session declares them (ints, names, None), or {}."""
    try:
        from rewriter.runtime import session

        return {o.name: list(o.shape) for o in session(proto, optimize=False).get_outputs()
                if isinstance(o.shape, list)}
    except Exception:  # then the checker has the last word
        return {}


MIN_OPSET = 11
_OPSET_PROBED: dict[int, bool] = {}


def _onnxruntime_runs_opset(version: int) -> bool:
    """Whether this onnxruntime loads a one-Relu model at `version` (cached)."""
    if version not in _OPSET_PROBED:
        from onnx import TensorProto, helper

        from rewriter.runtime import session

        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
        probe.ir_version = min(probe.ir_version, 10)
        try:
            session(probe, optimize=False)
            _OPSET_PROBED[version] = True
        except Exception:
            _OPSET_PROBED[version] = False
    return _OPSET_PROBED[version]


def max_supported_opset() -> int:
    """The newest default-domain opset both onnx and onnxruntime here handle."""
    newest = onnx.defs.onnx_opset_version()
    while newest > MIN_OPSET and not _onnxruntime_runs_opset(newest):
        newest -= 1
    return newest


def _check_supported(proto: onnx.ModelProto, where: str) -> None:
    _check_opsets(proto, where)
    _check_ops(proto, where)


def _check_opsets(proto: onnx.ModelProto, where: str) -> None:
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < MIN_OPSET:
            raise UnsupportedError(
                f"{where} uses opset {opset.version}; opset {MIN_OPSET} or newer is supported "
                "(upgrade it with onnx.version_converter)"
            )
        if (opset.domain in ("", "ai.onnx") and opset.version > onnx.defs.onnx_opset_version()
                or opset.domain in ("", "ai.onnx") and opset.version > 21
                and not _onnxruntime_runs_opset(opset.version)):
            raise UnsupportedError(
                f"{where} uses opset {opset.version}; opsets {MIN_OPSET} to "
                f"{max_supported_opset()} are supported here (onnx {onnx.__version__}, "
                "onnxruntime)"
            )


# Window attributes of convs and pools, and the least value each may take.
_WINDOW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"}
_ATTRIBUTE_FLOOR = {"group": 1, "strides": 1, "dilations": 1, "kernel_shape": 1, "pads": 0,
                    "output_padding": 0}


def _check_ops(proto: onnx.ModelProto, where: str) -> None:
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedError(
                f"{where}: op {node.op_type} of domain '{node.domain}' (node '{node.name}') "
                "is not supported"
            )
        if node.op_type in _WINDOW_OPS:
            for attr in node.attribute:
                floor = _ATTRIBUTE_FLOOR.get(attr.name)
                values = list(attr.ints) if attr.ints else [attr.i]
                if floor is not None and any(v < floor for v in values):
                    raise BadInputError(
                        f"{where}: node '{node.name}' ({node.op_type}) has {attr.name} "
                        f"{values if attr.ints else attr.i}; each must be >= {floor}")
    for inp in proto.graph.input:
        elem = inp.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            raise UnsupportedError(
                f"{where}: input '{inp.name}' is {onnx.TensorProto.DataType.Name(elem)}; "
                "only float32 models are supported"
            )


def _constant_nodes_to_initializers(graph: gs.Graph) -> None:
    for node in graph.nodes:
        if node.op != "Constant" or not node.outputs:
            continue
        values = _constant_node_value(node)
        if values is None:
            continue
        out = node.outputs[0]
        node.outputs.clear()
        out.to_constant(values)


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return np.array(value.values) if isinstance(value, gs.Constant) else None
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(list(attrs[key]), dtype=dtype)
    return None


def _name_nodes(graph: gs.Graph) -> None:
    seen: set[str] = set()
    counters: dict[str, int] = {}
    for node in graph.nodes:
        name = node.name
        if not name or name in seen:
            while True:
                counters[node.op] = counters.get(node.op, -1) + 1
                name = f"{node.op}_{counters[node.op]}"
                if name not in seen:
                    break
            node.name = name
        seen.add(name)


def _resolve_input_shapes(
    graph: gs.Graph, given: dict[str, Sequence[int]]
) -> dict[str, Shape | None]:
    """Concrete analysis shapes for each input; user-fixed non-batch dims fixed in the graph."""
    by_name = {t.name: t for t in graph.inputs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise BadInputError(
            f"--input-shape names no input {', '.join(repr(u) for u in unknown)}; "
            f"inputs are {', '.join(repr(n) for n in by_name)}"
        )
    result: dict[str, Shape | None] = {}
    for name, tensor in by_name.items():
        declared = list(tensor.shape) if tensor.shape is not None else None
        if name in given:
            wanted = tuple(int(d) for d in given[name])
            if declared is not None and len(declared) != len(wanted):
                raise BadInputError(
                    f"--input-shape {name}: rank {len(wanted)} but the model declares rank "
                    f"{len(declared)}"
                )
            if declared is not None:
                for axis, (have, want) in enumerate(zip(declared, wanted)):
                    if _is_static(have) and int(have) != want:
                        raise BadInputError(
                            f"--input-shape {name}: axis {axis} is fixed to {have} in the "
                            f"model, not {want}"
                        )
                # Fix user-given non-batch dims in the graph; a symbolic batch stays.
                tensor.shape = [
                    d if axis == 0 and not _is_static(d) else w
                    for axis, (d, w) in enumerate(zip(declared, wanted))
                ]
            result[name] = wanted
            continue
        if declared is None:
            result[name] = None
            continue
        dims = [int(d) if _is_static(d) else None for d in declared]
        if dims and dims[0] is None:
            dims[0] = 1
        result[name] = None if any(d is None for d in dims) else tuple(dims)  # type: ignore[misc]
    return result


# -- saving ----------------------------------------------------------------------------
def save_model(model: Model | onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write atomically (rewriter.atomic): a temporary file beside the target, checked, then
    renamed; the file gets the umask's mode, or keeps the mode of the file it replaces."""
    from rewriter.atomic import new_file_mode, temp_beside

    proto = model.to_onnx() if isinstance(model, Model) else model
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"output {path} is a directory")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.exists():
        raise BadInputError(f"output directory {directory} does not exist")
    external = proto.ByteSize() > _PROTOBUF_LIMIT
    data_name = f"{path.name}.data"
    mode, data_mode = new_file_mode(path), new_file_mode(directory / data_name)
    created: list[Path] = []
    try:
        tmp = temp_beside(path)
        created.append(tmp)
        if external:
            # A fresh, exclusively created file: onnx appends the tensors to it.
            tmp_data = temp_beside(directory / data_name)
            created.append(tmp_data)
            onnx.save(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=tmp_data.name)
        else:
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        if external:
            # The model names its data file; rewrite the location to the final name.
            saved = onnx.load(str(tmp), load_external_data=False)
            for init in saved.graph.initializer:
                for entry in init.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            onnx.save(saved, str(tmp))
            os.chmod(tmp_data, data_mode)
            os.replace(tmp_data, directory / data_name)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise BadInputError(f"refusing to write {path}: the model fails onnx.checker: "
                            f"{str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        for leftover in created:
            if leftover.exists():
                leftover.unlink()
    return path
