"""What an architecture change did to a model, for the refit that must follow it.

A non-exact pass (fuse-ibn, align-channels-down, depth-multiplier) edits the graph and
records here what `rewriter.reconstruct.refit` needs to fit the new weights against the
original model: which channels of each tensor survive (so the original's tensor of the same
name can be restricted to them) and which nodes need new weights. Node and tensor names are
preserved by the passes, so a name means the same thing in the original and the rewrite.
The record lives on the in-memory `Model` only; it is never written to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METADATA_KEY = "rewriter.architecture_changed"


@dataclass
class ArchitectureChanges:
    """Provenance of architecture changes relative to the ORIGINAL model.

    kept_channels: tensor name -> sorted indices into the original tensor's channel axis 1
        of the channels this tensor still carries (absent: all channels kept).
    refit: names of Conv/Gemm/MatMul nodes whose weights must be refitted, in the order
        they were added (refit sorts them topologically).
    passes: "pass@site" for every architecture change applied, in order (the label
        `rewriter apply` writes into the model's metadata).
    """

    kept_channels: dict[str, np.ndarray] = field(default_factory=dict)
    refit: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)

    def label(self) -> str:
        """The model metadata entry (`METADATA_KEY`) that says what changed."""
        return ",".join(self.passes) + "; fine-tune before use"

    def copy(self) -> "ArchitectureChanges":
        # Index arrays are never edited in place (prune() replaces them), so sharing is safe.
        return ArchitectureChanges(dict(self.kept_channels), list(self.refit), list(self.passes))

    def kept(self, tensor: str, channels: int) -> np.ndarray:
        """Original channel indices carried by `tensor`, which now has `channels` channels."""
        found = self.kept_channels.get(tensor)
        return np.arange(channels) if found is None else found

    def prune(self, tensor: str, keep: np.ndarray) -> None:
        """`tensor` now carries only its current channels `keep`: compose with the past."""
        keep = np.asarray(keep, dtype=np.int64)
        previous = self.kept_channels.get(tensor)
        self.kept_channels[tensor] = keep if previous is None else previous[keep]

    def needs_refit(self, node: str) -> None:
        if node not in self.refit:
            self.refit.append(node)

    def replace_refit(self, gone: list[str], new: str) -> None:
        """Nodes `gone` were merged into `new`, whose weights must now be refitted."""
        self.refit = [name for name in self.refit if name not in gone]
        self.needs_refit(new)
