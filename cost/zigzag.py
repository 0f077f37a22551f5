"""Simulate single ops on the ZigZag accelerator simulator (PyPI ``zigzag-dse``, KU Leuven).

A measurement backend like `rewriter.cost.measure.measure_specs`, but the "device" is an
analytical model of an accelerator instead of onnxruntime on this CPU: each spec's one-op
model (`one_op_model`) is given to ``zigzag.api.get_hardware_performance_zigzag``, which
searches spatial and temporal mappings for the lowest latency and reports it in clock
cycles. Written against zigzag-dse 3.9.1 (which imports ``six`` without declaring it).

`ACCELERATORS` maps a name to the hardware and mapping yaml files shipped inside the
package (every ``inputs/hardware/NAME.yaml`` with a ``inputs/mapping/NAME.yaml``, among
them "edge_tpu_like": an 8x8x4x4 array unrolling K, C, OX, OY, and "tpu_like": a 32x32
weight-stationary systolic array unrolling K, C).

What ZigZag supports: only Conv (any ``group``, so conv, conv1x1, dwconv and groupconv),
Gemm and MatMul layers are simulated; every other ONNX node becomes a zero-cost dummy node.
So a fused activation costs nothing here, and the kinds pool, gap, elementwise, resize and
concat cannot be simulated: `measure_zigzag` raises `ZigZagError` naming the kind before
simulating anything (filter them out with ``spec.kind in SUPPORTED_KINDS``).

Units: `simulate_cycles` returns cycles (ZigZag's ``latency_total2``); `measure_zigzag`
returns milliseconds at ``clock_hz`` (1 ms = clock_hz / 1e3 cycles).

Cache: cycles are stored per accelerator in ``cache_dir/zigzag-VERSION-ACCELERATOR.json``
(default ``~/.cache/rewriter/zigzag/``), a JSON object keyed by `cache_key` (the spec's
signature without its layout, which a MAC layer on ZigZag does not have: the keys caches
had before OpSpec gained one), rewritten atomically (`rewriter.atomic`) after each new
result as it arrives, so no spec is ever simulated twice, even after an interrupted run. One
conv layer takes about 1-6 s to simulate; uncached specs run through a `rewriter.parallel`
executor: a local process pool by default, or the one given (Ray, say).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
from tqdm import tqdm

from rewriter.atomic import atomic_write_text
from rewriter.cost.measurements import Measurement
from rewriter.cost.one_op import one_op_model
from rewriter.cost.opspec import MAC_KINDS, OpSpec
from rewriter.parallel import Executor, make_executor

SUPPORTED_KINDS = MAC_KINDS
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "rewriter" / "zigzag"
_INSTALL_HINT = "zigzag is not installed: pip install -e '.[zigzag]'"


class ZigZagError(RuntimeError):
    """ZigZag is missing, or cannot simulate what was asked; the message is one line."""


def _find_accelerators() -> dict[str, tuple[Path, Path]]:
    spec = importlib.util.find_spec("zigzag")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    inputs = Path(next(iter(spec.submodule_search_locations))) / "inputs"
    return {hw.stem: (hw, inputs / "mapping" / hw.name)
            for hw in sorted((inputs / "hardware").glob("*.yaml"))
            if (inputs / "mapping" / hw.name).is_file()}


ACCELERATORS: dict[str, tuple[Path, Path]] = _find_accelerators()


def zigzag_version() -> str:
    try:
        return importlib.metadata.version("zigzag-dse")
    except importlib.metadata.PackageNotFoundError:
        raise ZigZagError(_INSTALL_HINT) from None


def _accelerator_files(accelerator: str) -> tuple[Path, Path]:
    if not ACCELERATORS:
        raise ZigZagError(_INSTALL_HINT)
    if accelerator not in ACCELERATORS:
        raise ZigZagError(f"unknown ZigZag accelerator {accelerator!r}; expected one of "
                          f"{', '.join(ACCELERATORS)}")
    return ACCELERATORS[accelerator]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence logging, stdout and stderr; keep ZigZag's logging.basicConfig a no-op."""
    root = logging.getLogger()
    guard = logging.NullHandler()  # basicConfig only installs a handler on a bare root
    root.addHandler(guard)
    previous = root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                contextlib.redirect_stderr(null):
            yield
    finally:
        logging.disable(previous)
        root.removeHandler(guard)


def _tolerate_unprintable_mappings() -> None:
    """Keep ZigZag's loop-ordering printout from failing a simulation.

    zigzag-dse 3.9's VisualizationStage prints every chosen mapping to a text file in the
    dump folder, and its printer raises ValueError (max() of an empty list) for a layer
    with no temporal loop: one that fits the array in a single step, such as a 1x1
    squeeze-excite conv of <= 32 channels on tpu_like. The file is discarded and the
    printer computes nothing the result depends on, so such a mapping is just not printed.
    """
    from zigzag.stages.results import visualization

    printer = visualization.print_mapping
    if getattr(printer, "rewriter_tolerant", False):
        return

    def tolerant(cme: object, *args: object, **kwargs: object) -> None:
        try:
            printer(cme, *args, **kwargs)
        except ValueError:
            pass

    tolerant.rewriter_tolerant = True  # type: ignore[attr-defined]
    visualization.print_mapping = tolerant


def simulate_cycles(model: onnx.ModelProto, accelerator: str) -> float:
    """Total latency in cycles of `model`'s Conv/Gemm/MatMul layers on `accelerator`."""
    hardware, mapping = _accelerator_files(accelerator)
    model = onnx.shape_inference.infer_shapes(model)  # ZigZag needs every tensor's shape
    with _quiet():
        try:
            from zigzag.api import get_hardware_performance_zigzag
        except ImportError as e:
            raise ZigZagError(f"{_INSTALL_HINT} ({e})") from None
        _tolerate_unprintable_mappings()
        with tempfile.TemporaryDirectory(prefix="rewriter-zigzag-") as dump:
            _energy, cycles, _cmes = get_hardware_performance_zigzag(
                model, str(hardware), str(mapping), opt="latency", dump_folder=dump,
                loma_show_progress_bar=False)
    return float(cycles)


def _spec_cycles(job: tuple[OpSpec, str]) -> float:
    spec, accelerator = job
    return simulate_cycles(one_op_model(spec), accelerator)


def _cache_path(cache_dir: Path, accelerator: str) -> Path:
    return cache_dir / f"zigzag-{zigzag_version()}-{accelerator}.json"


def _read_cache(path: Path) -> dict[str, float]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ZigZagError(f"unreadable ZigZag cache {path}: {e}") from None


def _write_cache(path: Path, cycles: dict[str, float]) -> None:
    """Merge `cycles` into the file at `path` (atomically replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {**_read_cache(path), **cycles}
    atomic_write_text(path, json.dumps(merged, indent=0, sort_keys=True))


def cache_key(spec: OpSpec) -> str:
    """A spec's key in the cycle cache: its signature without the layout field (the last),
    which MAC layers, all that ZigZag simulates, leave empty."""
    return repr(spec.signature()[:-1])


def measure_zigzag(specs: Iterable[OpSpec], accelerator: str, *, clock_hz: float = 1e9,
                   cache_dir: Path | None = None, progress: bool = True,
                   executor: Executor | None = None) -> list[Measurement]:
    """Simulated latency (ms at `clock_hz`) of each spec on `accelerator`, in order.

    Uncached specs run on `executor` (default: a local pool of as many processes as
    cores; `SerialExecutor()` runs them in this process); each result enters the cache as
    it arrives.
    Raises `ZigZagError` if ZigZag is missing, the accelerator is unknown, or a spec's
    kind is not in `SUPPORTED_KINDS` (checked before any simulation).
    """
    specs = list(specs)
    _accelerator_files(accelerator)
    unsupported = sorted({s.kind for s in specs} - SUPPORTED_KINDS)
    if unsupported:
        raise ZigZagError(f"ZigZag cannot simulate kind(s) {', '.join(unsupported)} "
                          f"(only {', '.join(sorted(SUPPORTED_KINDS))})")
    path = _cache_path(cache_dir or DEFAULT_CACHE_DIR, accelerator)
    cycles = _read_cache(path)
    todo = list({cache_key(s): s for s in specs if cache_key(s) not in cycles}.values())
    if todo:
        bar = tqdm(total=len(todo), desc=f"zigzag {accelerator}", unit="op",
                   disable=not progress)

        def on_result(index: int, value: float) -> None:
            key = cache_key(todo[index])
            cycles[key] = value
            _write_cache(path, {key: value})
            bar.update()

        jobs = [(s, accelerator) for s in todo]
        with bar:
            (executor or make_executor()).map(_spec_cycles, jobs, on_result)
    device = f"zigzag-{zigzag_version()} {accelerator}"
    return [Measurement(s, cycles[cache_key(s)] / (clock_hz / 1e3), device=device,
                        threads=0, repeats=1)
            for s in specs]
