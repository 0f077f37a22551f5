"""rewriter on the corpus of real models, against onnxslim and onnx-simplifier.

    pip install -e '.[bench]'      # the peers: onnxsim, onnxslim
    python benchmarks/corpus.py [--models NAME ...] [--seconds S]

One row per model of rewriter.samples.CORPUS (downloaded or built once, cached), at the
input shapes listed there: its source and exporter; what `rewriter inspect` finds
(inverted bottlenecks, fuse-ibn sites, channel groups free/frozen); then, for npu-p32 and
edge-tpu-zz, the estimated latency change of rewriter's exact mode and of onnxslim and
onnx-simplifier (each peer run on the same file with the same fixed input shapes, its
output loaded and estimated by rewriter.cost.estimate.Target, as benchmarks/peers.py
does), all against the original as rewriter loads it; and how rewriter's result was
verified (`result.verification.mode`). A "!" after a peer's gain flags a peer whose model
is estimated faster than rewriter's on that target; the footer lists them. A tool that
fails on a model gets "n/a [k]" and footnote k with the reason; the script never stops
on one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import Notes  # noqa: E402  (benchmarks/ is not a package)

from rewriter.analysis.summary import analyse  # noqa: E402
from rewriter.cost.estimate import Target  # noqa: E402
from rewriter.graph_io import load_model, model_from_proto  # noqa: E402
from rewriter.samples import CORPUS, corpus_model  # noqa: E402
from rewriter.search import Budget, optimize  # noqa: E402
from rewriter.tables import table  # noqa: E402

TARGETS = ("npu-p32", "edge-tpu-zz")
# A peer estimated this much faster than rewriter (relative) is flagged as beating it.
TIE = 1e-6


def onnxslim_fixed(proto: onnx.ModelProto, shapes) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(proto, input_shapes=[f"{k}:{','.join(map(str, v))}"
                                              for k, v in shapes.items()])


def onnxsim_fixed(proto: onnx.ModelProto, shapes) -> onnx.ModelProto:
    import onnxsim

    model, ok = onnxsim.simplify(proto, overwrite_input_shapes={
        k: list(v) for k, v in shapes.items()})
    if not ok:
        raise RuntimeError("onnxsim's check of the simplified model failed")
    return model


PEERS = {"onnxslim": onnxslim_fixed, "onnxsim": onnxsim_fixed}


def _gain(ms: float, base: float) -> str:
    return f"{100 * (ms / base - 1):+.1f}%"


def model_row(name: str, seconds: float, notes: Notes, beaten: list[str]) -> list[str]:
    entry = CORPUS[name]
    label = entry.exporter.split(" (")[0].split(" export via")[0]
    row: list[str] = [name, label]
    path, failed = notes.cell("corpus", name, lambda: corpus_model(name), str)
    if path is None:
        return row + [failed] * (3 + 3 * len(TARGETS) + 1)
    model, failed = notes.cell("load", name, lambda: load_model(path, entry.shapes), str)
    if model is None:
        return row + [failed] * (3 + 3 * len(TARGETS) + 1)
    info, failed = notes.cell("inspect", name, lambda: analyse(model), str)
    if info is None:
        row += [failed] * 3
    else:
        frozen = sum(g.is_frozen for g in info.groups)
        row += [str(sum(b.kind == "inverted_bottleneck" for b in info.blocks)),
                str(info.sites.get("fuse-ibn", 0)), f"{len(info.groups) - frozen}/{frozen}"]
    proto = onnx.load(str(path))
    peer_models, peer_failed = {}, {}
    for peer, run in PEERS.items():
        peer_models[peer], peer_failed[peer] = notes.cell(
            peer, name, lambda run=run: model_from_proto(run(proto, entry.shapes),
                                                         entry.shapes), str)
    modes = []
    for target_name in TARGETS:
        target = Target.load(target_name)
        result, failed = notes.cell(
            "rewriter", name, lambda: optimize(model, target, exact=True,
                                               budget=Budget(seconds=seconds)), str)
        if result is None:
            row += [failed] * 3
            modes.append("n/a")
            continue
        base, ours = result.before.latency_ms, result.after.latency_ms
        row.append(_gain(ours, base))
        modes.append(result.verification.mode if result.verification.passed else "FAILED")
        for peer in PEERS:
            if peer_models[peer] is None:
                row.append(peer_failed[peer])
                continue
            est, failed = notes.cell(f"{peer} estimate", name,
                                     lambda p=peer: target.estimate(peer_models[p]), str)
            if est is None:
                row.append(failed)
                continue
            cell = _gain(est.latency_ms, base)
            if est.latency_ms < ours * (1 - TIE):
                cell += " !"
                beaten.append(f"{peer} beats rewriter on {name} / {target_name}: "
                              f"{est.latency_ms:.4f} ms vs {ours:.4f} ms")
            row.append(cell)
    row.append("/".join(dict.fromkeys(modes)))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(CORPUS), default=list(CORPUS),
                        help="corpus models to run (default: all)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="search budget per model and target, seconds (default 20)")
    args = parser.parse_args()
    start = time.perf_counter()
    notes, rows, beaten, times = Notes(), [], [], []
    for name in args.models:
        began = time.perf_counter()
        rows.append(model_row(name, args.seconds, notes, beaten))
        times.append(f"{name} {time.perf_counter() - began:.0f} s")
    headers = ["model", "exporter", "IBNs", "fuse-ibn", "groups free/frozen"]
    for target in TARGETS:
        headers += [f"{target} rewriter", "onnxslim", "onnxsim"]
    headers.append("verified")
    print(f"{len(rows)} corpus models; exact mode, budget {args.seconds:g} s per search; "
          "gains are estimated latency vs the original as rewriter loads it\n")
    print(table(headers, rows))
    if notes.numbers:
        print(f"\n{notes}")
    print("\n" + ("\n".join(beaten) if beaten else
                  "no peer is estimated faster than rewriter on any model and target"))
    print(f"\n{time.perf_counter() - start:.0f} s ({', '.join(times)})")


if __name__ == "__main__":
    main()
