"""Weights refitted from calibration data, for rewrites that change the function.

A rewrite that replaces a block by a simpler one (fused-IBN: 1x1 expand + act + KxK
depthwise -> one KxK dense conv) cannot compute the same function; the best a linear fit
can do is reproduce the original block's pre-activation output from the block's input:
run both models in onnxruntime with the tensors exposed as outputs, unfold the input into
im2col patches (one row per output position, Cin*Kh*Kw columns, plus a 1 for the bias) and
solve ridge least squares  W = (X'X + lambda*I)^-1 X'Y  for all output channels at once.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx

from rewriter.graph_io import Model
from rewriter.runtime import run_model


def collect(model: Model, batches: Sequence[Mapping[str, np.ndarray]],
            names: Sequence[str]) -> dict[str, np.ndarray]:
    """Values of tensors `names` over all calibration batches (concatenated on axis 0)."""
    proto = model.to_onnx()
    existing = {o.name for o in proto.graph.output}
    for name in names:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feeds in batches:
        values = run_model(proto, feeds, output_names=list(names))
        for name in names:
            parts[name].append(values[name])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def im2col(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int],
           pads: tuple[int, int, int, int], dilations: tuple[int, int] = (1, 1)) -> np.ndarray:
    """[N, C, H, W] -> [N*H'*W', C*Kh*Kw] patches in ONNX Conv weight order (c, kh, kw)."""
    n, c, h, w = x.shape
    top, left, bottom, right = pads
    padded = np.zeros((n, c, h + top + bottom, w + left + right), dtype=np.float64)
    padded[:, :, top:top + h, left:left + w] = x
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    hout = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wout = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((n, c, kh, kw, hout, wout), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = padded[:, :, i * dh:i * dh + sh * (hout - 1) + 1:sh,
                                      j * dw:j * dw + sw * (wout - 1) + 1:sw]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * hout * wout, c * kh * kw)


def ridge(features: np.ndarray, targets: np.ndarray, lam: float = 1e-3
          ) -> tuple[np.ndarray, np.ndarray]:
    """Least squares with an L2 penalty (scaled to the features' energy) and a free bias.

    features [R, F], targets [R, O] -> (weights [O, F], bias [O]).
    """
    rows = features.shape[0]
    design = np.hstack([features, np.ones((rows, 1))])
    gram = design.T @ design
    penalty = lam * np.trace(gram[:-1, :-1]) / max(features.shape[1], 1)
    gram[np.arange(features.shape[1]), np.arange(features.shape[1])] += penalty
    solution = np.linalg.solve(gram, design.T @ targets)
    return solution[:-1].T, solution[-1]


def fit_conv(x: np.ndarray, y: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int],
             pads: tuple[int, int, int, int], lam: float = 1e-3,
             max_rows: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dense conv weights [Cout, Cin, Kh, Kw] and bias mapping x [N,Cin,H,W] to y [N,Cout,H',W']."""
    features = im2col(x, kernel, strides, pads)
    targets = y.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, y.shape[1])
    if features.shape[0] > max_rows:  # a random subset of positions bounds the cost
        keep = np.random.default_rng(seed).choice(features.shape[0], max_rows, replace=False)
        features, targets = features[keep], targets[keep]
    weights, bias = ridge(features, targets, lam)
    return weights.reshape(y.shape[1], x.shape[1], *kernel), bias
