"""Hardware profiles: TOML files describing an accelerator, and their strict loader.

A profile is found by name among the built-ins in ``cost/profiles/`` (``npu-p32``,
``npu-p16``, ``cpu-ort``) or read from a path. Schema (every key required unless marked)::

    name, description, kind        strings; kind is "analytic" or "measured"
    parallelism_in, parallelism_out   int > 0   input / output channel lanes of the MAC array
    macs_per_cycle                 int > 0   peak MACs per cycle (= in * out for "analytic")
    clock_hz                       number > 0
    onchip_memory_bytes            int > 0
    bandwidth_bytes_per_s          number > 0   off-chip memory bandwidth
    overhead_s                     number >= 0  fixed cost of launching one op
    bytes_per_element              int > 0   element size of tensors on the device
    [ops.<kind>]                   "analytic": one table per OpSpec kind ([ops.reorder] may be
                                   left out: it takes [ops.elementwise]), optional otherwise
        conv, conv1x1, groupconv, gemm:  efficiency (0, 1]   fraction of peak reached
        dwconv:                          depthwise_efficiency (0, 1]
        elementwise, pool, gap, resize, concat, reorder:  lanes int > 0, efficiency (0, 1]
    [activations]                  "analytic": name = vector ops per output element of a
                                   fused activation (>= 0), with a required "default"
    measurements                   "measured" only: CSV path, relative to the profile's folder
                                   or to cost/data/
    estimator                      "measured" only: "regression"
    blocked_layout                 "measured" only, optional: true when the runtime converts
                                   tensors to/from a blocked layout (onnxruntime's NCHWc);
                                   it also prices the ops onnxruntime runs its own way
                                   (cost.onnxruntime_kernels)
    free_kinds                     "measured" only, optional: op kinds that cost nothing on
                                   the measuring backend (ZigZag simulates MAC layers only)
    accelerator                    "measured" only, optional: the ZigZag accelerator the
                                   measurements were simulated on (edge_tpu_like, tpu_like);
                                   names what `rewriter cost validate` and
                                   `optimize --validate-with zigzag` simulate whole models on
    parallelism_ox, parallelism_oy "measured" only, optional (default 1): output pixels the
                                   array also unrolls per cycle, columns x rows (ZigZag's
                                   edge_tpu_like: 4 x 4); regressor features tile the map
    floor_at_peak                  "measured" only, optional (default false): no estimate
                                   beats the array's ideal cycles (`opspec.mac_cycles` with
                                   the profile's parallelism) at clock_hz; needs
                                   macs_per_cycle = in * out * ox * oy. True of a simulator,
                                   whose array cannot run faster than its peak
    stream_weights                 "measured" only, optional (default false): in a whole
                                   model every kernel's weights come from beyond the core's
                                   own cache (the other kernels evicted them since its last
                                   run), so no kernel beats its weight bytes over the rate at
                                   which the measured gemms whose weights exceed
                                   onchip_memory_bytes (the core's private cache) ran
    prior                          "measured" only, optional: a target (built-in name, or a
                                   profile path relative to this profile's folder) whose op
                                   model the measurements correct (cost.fewshot); it may not
                                   have a prior itself

Every problem raises `ProfileError` with one line naming the file and the key.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewriter.cost.opspec import KINDS, MAC_KINDS

PROFILE_DIR = Path(__file__).parent / "profiles"
DATA_DIR = Path(__file__).parent / "data"
ESTIMATORS = ("regression",)

# key -> (type, rule); rule "pos" (> 0), "frac" (0 < x <= 1), "nonneg" (>= 0), "" none.
_COMMON: dict[str, tuple[type, str]] = {
    "name": (str, ""), "description": (str, ""), "kind": (str, ""),
    "parallelism_in": (int, "pos"), "parallelism_out": (int, "pos"),
    "macs_per_cycle": (int, "pos"), "clock_hz": (float, "pos"),
    "onchip_memory_bytes": (int, "pos"), "bandwidth_bytes_per_s": (float, "pos"),
    "overhead_s": (float, "nonneg"), "bytes_per_element": (int, "pos"),
}
_MEASURED: dict[str, tuple[type, str]] = {"measurements": (str, ""), "estimator": (str, "")}
# "measured" only, optional (absent: HardwareProfile's defaults); rule "kinds": a list of op
# kinds, "name": a non-empty string.
_MEASURED_OPTIONAL: dict[str, tuple[type, str]] = {
    "blocked_layout": (bool, ""), "free_kinds": (list, "kinds"), "accelerator": (str, "name"),
    "parallelism_ox": (int, "pos"), "parallelism_oy": (int, "pos"), "floor_at_peak": (bool, ""),
    "stream_weights": (bool, ""), "prior": (str, "name"),
}
# Every number is bounded, so that no estimate can overflow to inf or lose all precision
# (a bandwidth of 1e-320 bytes/s made every latency infinite): key (last part) -> (lo, hi).
_BOUNDS: dict[str, tuple[float, float]] = {
    "parallelism_in": (1, 2**20), "parallelism_out": (1, 2**20),
    "parallelism_ox": (1, 2**20), "parallelism_oy": (1, 2**20),
    "macs_per_cycle": (1, 2**40), "clock_hz": (1e3, 1e13),
    "onchip_memory_bytes": (1, 2**50), "bandwidth_bytes_per_s": (1e3, 1e16),
    "overhead_s": (0.0, 10.0), "bytes_per_element": (1, 64), "lanes": (1, 2**20),
    "efficiency": (1e-6, 1.0), "depthwise_efficiency": (1e-6, 1.0),
}
_ACTIVATION_BOUNDS = (0.0, 1e6)
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_MAC_OP = {"efficiency": (float, "frac")}
_VECTOR_OP = {"lanes": (int, "pos"), "efficiency": (float, "frac")}
_OP_KEYS: dict[str, dict[str, tuple[type, str]]] = {
    kind: (_MAC_OP if kind in MAC_KINDS else _VECTOR_OP) for kind in KINDS
}
_OP_KEYS["dwconv"] = {"depthwise_efficiency": (float, "frac")}
# Kinds an analytic profile may leave out, and the kind whose parameters they take then: a
# layout conversion is a copy on the vector unit.
_OPTIONAL_OPS = {"reorder": "elementwise"}


class ProfileError(ValueError):
    """A profile cannot be found or is invalid; the message is one line."""


@dataclass(frozen=True)
class OpParams:
    """Per-kind parameters from ``[ops.<kind>]`` (unused ones keep their defaults)."""

    efficiency: float = 1.0
    depthwise_efficiency: float = 1.0
    lanes: int = 1


@dataclass
class HardwareProfile:
    name: str
    description: str
    kind: str
    parallelism_in: int
    parallelism_out: int
    macs_per_cycle: int
    clock_hz: float
    onchip_memory_bytes: int
    bandwidth_bytes_per_s: float
    overhead_s: float
    bytes_per_element: int
    ops: dict[str, OpParams] = field(default_factory=dict)
    activations: dict[str, float] = field(default_factory=dict)
    measurements: Path | None = None
    estimator: str | None = None
    source: Path | None = None
    # "measured" only: the runtime runs convs in a blocked layout (onnxruntime's NCHWc) and
    # converts tensors to and from it around the ops it cannot run blocked (cost/layout.py).
    blocked_layout: bool = False
    # "measured" only: op kinds the measuring backend treats as free (ZigZag simulates MAC
    # layers only; the other ops of a model are zero-cost to it).
    free_kinds: tuple[str, ...] = ()
    # "measured" only: the ZigZag accelerator description the measurements were simulated on;
    # None for a real device. Whole models are checked against it (cost/zigzag_models.py).
    accelerator: str | None = None
    # "measured" only: output pixels (columns, rows) the array unrolls besides the channels.
    parallelism_ox: int = 1
    parallelism_oy: int = 1
    # "measured" only: estimates never beat the array's ideal cycles (see analytic.peak_s).
    floor_at_peak: bool = False
    # "measured" only: kernels read their weights at the streaming rate of the measured
    # gemms too large for onchip memory (cost.estimate.streaming_bandwidth).
    stream_weights: bool = False
    # "measured" only: the target whose op model the measurements correct (cost.fewshot): a
    # built-in name, or the path of a profile.
    prior: str | None = None

    def op(self, kind: str) -> OpParams:
        if kind not in self.ops and kind in _OPTIONAL_OPS:
            kind = _OPTIONAL_OPS[kind]
        if kind not in self.ops:
            raise ProfileError(f"{self.source}: ops.{kind}: no parameters for this op kind")
        return self.ops[kind]

    def activation_cost(self, act: str) -> float:
        """Vector ops per output element of a fused activation ('' costs nothing)."""
        if not act:
            return 0.0
        return self.activations.get(act, self.activations.get("default", 0.0))


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    builtin = PROFILE_DIR / f"{text}.toml"
    if "/" not in text and "\\" not in text and builtin.is_file():
        return builtin
    path = Path(text)
    if not path.is_file():
        known = ", ".join(builtin_profiles())
        raise ProfileError(f"{text}: no such profile file and not a built-in profile ({known})")
    return path


def _check(path: Path, key: str, value: Any, typ: type, rule: str) -> Any:
    def fail(problem: str) -> ProfileError:
        return ProfileError(f"{path}: {key}: {problem}, got {value!r}")

    if rule == "kinds":
        if not isinstance(value, list) or any(k not in KINDS for k in value):
            raise fail(f"expected a list of op kinds ({', '.join(KINDS)})")
        return tuple(value)
    accepted = (int, float) if typ is float else typ
    if isinstance(value, bool) != (typ is bool) or not isinstance(value, accepted):
        raise fail(f"expected {_TYPE_NAMES[typ]}")
    if typ is float:
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise fail("expected a finite number")
    if rule == "pos" and value <= 0:
        raise fail("must be positive")
    if rule == "frac" and not 0 < value <= 1:
        raise fail("must be in (0, 1]")
    if rule == "nonneg" and value < 0:
        raise fail("must be >= 0")
    if rule == "name" and not value:
        raise fail("expected a non-empty name")
    if typ in (int, float):
        lo, hi = (_ACTIVATION_BOUNDS if key.startswith("activations.")
                  else _BOUNDS.get(key.rsplit(".", 1)[-1], (None, None)))
        if lo is not None and not lo <= value <= hi:
            raise fail(f"must be within [{lo:g}, {hi:g}]")
    return value


def _table(path: Path, prefix: str, table: Any, schema: dict[str, tuple[type, str]],
           optional: dict[str, tuple[type, str]] | None = None) -> dict[str, Any]:
    """The keys of `schema` (every one required) and of `optional`, checked."""
    if not isinstance(table, dict):
        raise ProfileError(f"{path}: {prefix.rstrip('.')}: expected a table, got {table!r}")
    known = {**schema, **(optional or {})}
    for key in table:
        if key not in known:
            raise ProfileError(f"{path}: {prefix}{key}: unknown key "
                               f"(expected {', '.join(known)})")
    out = {}
    for key, (typ, rule) in known.items():
        if key not in table:
            if key in schema:
                raise ProfileError(f"{path}: {prefix}{key}: missing key")
            continue
        out[key] = _check(path, prefix + key, table[key], typ, rule)
    return out


def _measurements_path(path: Path, rel: str) -> Path:
    for base in (path.parent, DATA_DIR):
        candidate = base / rel
        if candidate.is_file():
            return candidate
    raise ProfileError(f"{path}: measurements: file {rel!r} not found next to the profile "
                       f"or in {DATA_DIR}")


def _prior(path: Path, text: str) -> str:
    """A prior as a built-in name, or the path of a profile beside this one (or absolute)."""
    if "/" not in text and "\\" not in text and (PROFILE_DIR / f"{text}.toml").is_file():
        return text
    candidate = path.parent / text
    if not candidate.is_file():
        raise ProfileError(f"{path}: prior: {text!r} is neither a built-in profile "
                           f"({', '.join(builtin_profiles())}) nor a file next to this one")
    if candidate.resolve() == path.resolve():
        raise ProfileError(f"{path}: prior: a profile cannot be its own prior")
    return str(candidate)


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a built-in profile by name, or a TOML profile from a path; validate strictly."""
    path = _resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: invalid TOML: {' '.join(str(exc).split())}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    kind = data.get("kind")
    if kind not in ("analytic", "measured"):
        raise ProfileError(f"{path}: kind: expected \"analytic\" or \"measured\", got {kind!r}")
    schema = {**_COMMON, **(_MEASURED if kind == "measured" else {})}
    tables = {"ops", "activations"}
    top = _table(path, "", {k: v for k, v in data.items() if k not in tables}, schema,
                 _MEASURED_OPTIONAL if kind == "measured" else None)
    ops_table = data.get("ops", {})
    if kind == "analytic" and "ops" not in data:
        raise ProfileError(f"{path}: ops: missing table (one [ops.<kind>] per op kind)")
    if not isinstance(ops_table, dict):
        raise ProfileError(f"{path}: ops: expected a table, got {ops_table!r}")
    ops = {}
    for op_kind in KINDS:
        if op_kind in ops_table:
            ops[op_kind] = OpParams(**_table(path, f"ops.{op_kind}.", ops_table[op_kind],
                                             _OP_KEYS[op_kind]))
        elif kind == "analytic" and op_kind not in _OPTIONAL_OPS:
            raise ProfileError(f"{path}: ops.{op_kind}: missing table")
    for op_kind in ops_table:
        if op_kind not in KINDS:
            raise ProfileError(f"{path}: ops.{op_kind}: unknown op kind "
                               f"(expected {', '.join(KINDS)})")
    acts = data.get("activations", {})
    if kind == "analytic" and "activations" not in data:
        raise ProfileError(f"{path}: activations: missing table")
    act_schema = {name: (float, "nonneg") for name in (acts if isinstance(acts, dict) else {})}
    activations = _table(path, "activations.", acts, act_schema)
    if kind == "analytic" and "default" not in activations:
        raise ProfileError(f"{path}: activations.default: missing key")
    # the array's MACs per cycle (output pixels unrolled too, on a measured profile)
    array = (top["parallelism_in"] * top["parallelism_out"]
             * top.get("parallelism_ox", 1) * top.get("parallelism_oy", 1))
    if kind == "analytic" and top["macs_per_cycle"] != array:
        raise ProfileError(f"{path}: macs_per_cycle: must equal parallelism_in * "
                           f"parallelism_out for an analytic profile, got {top['macs_per_cycle']}")
    measurements = None
    if kind == "measured":
        if top["estimator"] not in ESTIMATORS:
            raise ProfileError(f"{path}: estimator: expected one of {', '.join(ESTIMATORS)}, "
                               f"got {top['estimator']!r}")
        measurements = _measurements_path(path, top.pop("measurements"))
        if "prior" in top:
            top["prior"] = _prior(path, top["prior"])
        if top.get("floor_at_peak") and top["macs_per_cycle"] != array:
            raise ProfileError(f"{path}: macs_per_cycle: floor_at_peak needs it to equal "
                               f"parallelism_in * parallelism_out * parallelism_ox * "
                               f"parallelism_oy ({array}), got {top['macs_per_cycle']}")
    return HardwareProfile(**top, ops=ops, activations=activations,
                           measurements=measurements, source=path)
