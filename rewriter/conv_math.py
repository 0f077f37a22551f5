"""Weight algebra for convolutions, in numpy (float64 where sums are formed)."""

from __future__ import annotations

import numpy as np


def merge_groups(weight: np.ndarray, groups: int, merge: int) -> np.ndarray:
    """[Cout, Cin/g, Kh, Kw] weights of a conv with g groups -> the equivalent
    [Cout, merge*Cin/g, Kh, Kw] weights with g/merge groups (`merge` divides g).

    Output channel o belongs to old group q = o // (Cout/g), which read input channels
    q*(Cin/g) .. (q+1)*(Cin/g) - 1; in new group q // merge those sit at offset
    (q mod merge)*(Cin/g). Every other input weight of the new group is zero (block
    diagonal), so each output sums the same products plus zeros.
    """
    if merge == 1:
        return weight
    if groups % merge:
        raise ValueError(f"cannot merge {groups} groups {merge} at a time")
    cout, cin_g = weight.shape[:2]
    cout_g = cout // groups
    merged = np.zeros((cout, cin_g * merge, *weight.shape[2:]), dtype=weight.dtype)
    for o in range(cout):
        offset = (o // cout_g) % merge * cin_g
        merged[o, offset:offset + cin_g] = weight[o]
    return merged


def grouped_to_dense(weight: np.ndarray, groups: int) -> np.ndarray:
    """[Cout, Cin/g, K, K] grouped weights -> the equivalent dense [Cout, Cin, K, K]
    (block diagonal: `merge_groups` of all g groups into one)."""
    return merge_groups(weight, groups, groups)


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilations: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> np.ndarray:
    """Reference 2-D convolution (ONNX semantics), float64 accumulation."""
    dense = grouped_to_dense(np.asarray(weight, dtype=np.float64), groups)
    n, c, h, w = x.shape
    top, left, bottom, right = pads
    xp = np.zeros((n, c, h + top + bottom, w + left + right), dtype=np.float64)
    xp[:, :, top:top + h, left:left + w] = x
    cout, _, kh, kw = dense.shape
    sh, sw = strides
    dh, dw = dilations
    hout = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wout = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, cout, hout, wout), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + sh * (hout - 1) + 1:sh,
                       j * dw:j * dw + sw * (wout - 1) + 1:sw]
            out += np.einsum("nchw,oc->nohw", patch, dense[:, :, i, j])
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out
