"""Small utilities shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import onnx

from rewriter.graph_io import Model, model_from_proto
from rewriter.passes import get_pass
from rewriter.rewrite import RewriteResult, apply_pass
from rewriter.verify import VerificationReport, verify


def load(proto: onnx.ModelProto) -> Model:
    return model_from_proto(proto)


def apply_and_verify(model: Model, pass_name: str, multiple: int = 16,
                     site_ids: list[str] | None = None
                     ) -> tuple[RewriteResult, VerificationReport]:
    result = apply_pass(model, get_pass(pass_name, multiple), site_ids)
    report = verify(model, result.model)
    return result, report


def ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]


def edited_profile(tmp_path: Path, base: str, old: str, new: str) -> Path:
    """A copy of built-in profile `base` with the first `old` replaced by `new` (its
    measurements file name still resolves: the loader falls back to cost/data/)."""
    from rewriter.cost.profile import PROFILE_DIR

    text = (PROFILE_DIR / f"{base}.toml").read_text()
    assert old in text
    path = tmp_path / "edited.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def record_calls(monkeypatch, owner: object, name: str) -> list[dict]:
    """Wrap `owner.name` so each call's keyword arguments are recorded before the real
    function runs; returns the (growing) list of them."""
    real = getattr(owner, name)
    calls: list[dict] = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls
