"""Small utilities shared by the test modules."""

from __future__ import annotations

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
