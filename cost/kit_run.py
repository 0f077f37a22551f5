"""The reference kit runner: time every model of a kit in onnxruntime, on any execution
provider installed.

`run_kit` opens one session per model with the chosen provider (the CPU provider behind it,
as onnxruntime always has, for the ops the provider does not take), feeds seeded random
inputs of the manifest's shapes, runs `warmup` times, then times `repeats` runs by wall
clock and keeps the median, in ms. That is the time of one inference as an application sees
it, including the fixed cost of a run (and, on a GPU, the copy of the inputs to it), which
the kit's baseline models measure and `kit_import` removes. A model the provider cannot
load or run is left out and named, as the import allows missing ids.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from rewriter.cost.kit_manifest import KitEntry, KitError, read_manifest
from rewriter.cost.measure import session_wall_time
from rewriter.runtime import session


@dataclass
class RunResult:
    timings: dict[str, float]  # id -> median ms
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, first line of error)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def check_provider(provider: str) -> None:
    """A one-line KitError when onnxruntime here has no such execution provider."""
    available = available_providers()
    if provider not in available:
        raise KitError(f"execution provider {provider!r} is not available in this onnxruntime "
                       f"(available: {', '.join(available)}); install the onnxruntime build "
                       "that has it (onnxruntime-gpu for CUDA/TensorRT, onnxruntime-openvino, "
                       "...)")


def time_model(path: Path, entry: KitEntry, provider: str, *, warmup: int, repeats: int,
               threads: int = 0) -> float:
    """Median wall time in ms of one inference of the kit model at `path`."""
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in entry.inputs}
    opened = session(onnx.load(str(path)), threads, provider=provider)
    return session_wall_time(opened, feeds, repeats=repeats, warmup=warmup)


def run_kit(kit: str | Path, *, provider: str = "CPUExecutionProvider", warmup: int = 10,
            repeats: int = 50, threads: int = 0, only: Sequence[str] | None = None,
            progress: bool = True) -> RunResult:
    """Time the kit's models (those in `only`, when given) on `provider`."""
    from tqdm import tqdm

    if warmup < 0 or repeats < 1:
        raise KitError(f"--warmup must be >= 0 and --repeats >= 1, got {warmup} and {repeats}")
    check_provider(provider)
    kit = Path(kit)
    entries = read_manifest(kit)
    if only is not None:
        wanted = set(only)
        entries = [e for e in entries if e.id in wanted]
    result = RunResult({})
    for entry in tqdm(entries, desc=f"timing on {provider}", unit="model", file=sys.stderr,
                      disable=not progress):
        path = kit / entry.file
        if not path.is_file():
            raise KitError(f"{path}: missing (manifest row {entry.id}); the kit is incomplete")
        try:
            result.timings[entry.id] = time_model(path, entry, provider, warmup=warmup,
                                                  repeats=repeats, threads=threads)
        except Exception as exc:  # onnxruntime's own errors have no common type
            text = str(exc).strip().splitlines()
            result.failed.append((entry.id, text[0] if text else type(exc).__name__))
    if not result.timings:
        first = f": {result.failed[0][0]}: {result.failed[0][1]}" if result.failed else ""
        raise KitError(f"{provider} ran none of the kit's models{first}")
    return result
