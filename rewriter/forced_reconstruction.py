"""Teacher-forced reconstruction of changed layers: the first phase of distillation.

A refit (`rewriter.reconstruct`) fits a changed layer's weights by linear least squares to
the original's pre-activation values. Where the change removed a nonlinearity (fuse-ibn
replaces expand -> activation -> depthwise by one dense conv), no linear fit reproduces what
the next layer reads, and end-to-end distillation then has to find the layer's best
nonlinear fit from the output loss alone, through every layer after it.

This phase fits the changed layers first, each on its own, through its activations
(BRECQ's block reconstruction, Li et al. 2021, with the teacher's tensors as block inputs):
- the block boundaries are the intermediate tensors teacher and student both compute with
  the same name and shape (`rewriter.distill.feature_taps`, the inputs of convs and
  gemms);
- every boundary is forced to the teacher's value (`TorchGraph.forced`): whatever the
  student computes up to a boundary, the nodes after it read the teacher's tensor, so a
  changed layer learns from exact inputs and its errors do not pile up downstream;
- only the weights of the changed nodes train; the loss is the squared error at every
  boundary those weights reach, each divided by the teacher's variance of it (scale-free;
  a change with no boundary after it, before the graph's outputs, is left to
  distillation);
- AdamW at FORCED_LR (the layers are fitted alone, from a refit start, on the data
  distillation then uses) with a cosine decay over the phase's steps, on the same augmented
  batches.
Unchanged layers keep exactly what they had: a student whose earlier changes were already
distilled end to end (a later stage of the search) keeps that training. Distillation then
trains every weight end to end, from this start; its early stopping still compares with
the refit student, so the phase can never make the result worse on held-out data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

__all__ = ["FORCED_LR", "FORCED_SHARE", "NOTHING_RAN", "ForcedResult", "reconstruct_forced"]

FORCED_SHARE = 0.1  # of distillation's budget (steps or seconds)
FORCED_LR = 1e-3
CLIP_NORM = 2.0
TIMING_STEPS = 3  # steps timed to plan a phase given in seconds


@dataclass(frozen=True)
class ForcedResult:
    """Steps run, and the mean loss over the first and the last tenth of them."""

    steps: int
    first_loss: float
    last_loss: float


NOTHING_RAN = ForcedResult(0, math.nan, math.nan)


def reconstruct_forced(torch: Any, teacher_net: Any, student_net: Any, changed: Sequence[str],
                       taps: Mapping[str, float], next_batch: Callable[[], dict[str, Any]],
                       *, steps: int | None = None, seconds: float | None = None,
                       lr: float = FORCED_LR) -> ForcedResult:
    """Train the weights of the `changed` student nodes with every tap forced to the
    teacher's value; see the module docstring.

    taps: boundary tensor -> the teacher's variance of it. next_batch: the next (augmented)
    batch of inputs. steps / seconds: the phase's budget (both: whichever ends first;
    neither: nothing runs); with seconds, the cosine is planned from the first steps' speed.
    Returns what ran.
    """
    chosen = student_net.node_parameters(changed)
    if not chosen or not taps or (steps is None and seconds is None) or steps == 0:
        return NOTHING_RAN
    ids = {id(p) for p in chosen}
    frozen = [p for p in student_net.parameters() if p.requires_grad and id(p) not in ids]
    for param in frozen:
        param.requires_grad_(False)
    optimizer = torch.optim.AdamW(chosen, lr=lr, weight_decay=0.0)
    names = list(taps)
    losses: list[float] = []
    step, total = 0, steps
    started = time.perf_counter()
    teacher_net.taps = student_net.taps = names
    try:
        while total is None or step < total:
            elapsed = time.perf_counter() - started
            if seconds is not None and elapsed >= seconds:
                break
            if seconds is not None and step == TIMING_STEPS:  # plan the cosine by time
                planned = int(seconds / (elapsed / step))
                total = planned if steps is None else min(steps, planned)
            feeds = next_batch()
            if total:
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(step / total, 1)))
            with torch.no_grad():
                target = teacher_net(feeds)
            student_net.forced = {n: target[n] for n in names}
            got = student_net(feeds)
            # only what the chosen weights reach carries a gradient; the rest is constant
            terms = [((got[n] - target[n]) ** 2).mean() / taps[n]
                     for n in names if got[n].requires_grad]
            if not terms:  # no boundary after the changed nodes: nothing to fit here
                break
            loss = sum(terms) / len(terms)
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(chosen, CLIP_NORM)
            optimizer.step()
            losses.append(value)
            step += 1
    finally:
        student_net.forced = {}
        teacher_net.taps = student_net.taps = []
        for param in frozen:
            param.requires_grad_(True)
    if not losses:
        return NOTHING_RAN
    tenth = max(1, len(losses) // 10)
    return ForcedResult(step, sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth)
