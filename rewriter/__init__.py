"""rewriter: rewrite ONNX CNN graphs so they run faster on neural-engine accelerators."""

__version__ = "0.1.0"
