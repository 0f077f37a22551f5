"""rewriter: rewrite ONNX CNN graphs so they run faster on neural-engine accelerators.

    import rewriter
    result = rewriter.optimize("model.onnx", target="npu-p32")
    result.model, result.decisions, result.before, result.after  # see rewriter.search

The heavy parts (onnxruntime, scikit-learn) load on first use.
"""

from __future__ import annotations

from typing import Any

try:  # one version source: the installed package's metadata (pyproject.toml)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    __version__ = _version("rewriter")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

_LAZY = {
    "optimize": ("rewriter.search.driver", "optimize"),
    "Result": ("rewriter.search.driver", "Result"),
    "Budget": ("rewriter.search.driver", "Budget"),
    "load_model": ("rewriter.graph_io", "load_model"),
    "save_model": ("rewriter.graph_io", "save_model"),
    "estimate": ("rewriter.cost.estimate", "estimate"),
    "recover": ("rewriter.recovery", "recover"),
    "RecoveryBudget": ("rewriter.recovery", "RecoveryBudget"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'rewriter' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]  # noqa: PLE0604 (the lazy names are strings)
