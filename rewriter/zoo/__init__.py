"""Deterministic small CNNs built with onnx.helper, for the demo and the tests."""
