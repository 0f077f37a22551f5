"""Analytic (roofline) latency of one op on a profile of kind "analytic".

With P_in x P_out the MAC array, e the kind's efficiency from ``[ops.<kind>]``::

    dense (conv, conv1x1, gemm): cycles = n*h_out*w_out*kh*kw*ceil(cin/P_in)*ceil(cout/P_out) / e
    grouped:   cycles = groups * (the dense formula on cin/groups -> cout/groups) / e
    depthwise: cycles = n*h_out*w_out*kh*kw*ceil(cout/P_out) / depthwise_efficiency
               (one input lane per channel: utilisation <= depthwise_efficiency / P_in)
    vector kinds (elementwise, pool, gap, resize, concat):
               cycles = vector_ops / (lanes * e)                   (see opspec.vector_ops)
    fused activation: + output_elements * cost(act) / (lanes * e) of ops.elementwise

    compute_s   = cycles / clock_hz
    bytes       = (input + weights + output elements, channels rounded up to P) * bytes_per_element
                  with input + output moved twice when input + weights + output bytes
                  exceed onchip_memory_bytes (the activations spill)
    memory_s    = bytes / bandwidth_bytes_per_s
    latency_s   = max(compute_s, memory_s) + overhead_s
    utilisation = macs / (MAC cycles * P_in * P_out)      (0 for vector kinds)
"""

from __future__ import annotations

from dataclasses import dataclass

from rewriter.cost.opspec import MAC_KINDS, OpSpec, mac_cycles, tensor_elements, vector_ops
from rewriter.cost.profile import HardwareProfile, ProfileError


@dataclass(frozen=True)
class OpEstimate:
    latency_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    utilisation: float
    bound: str  # "compute" or "memory"

    @property
    def latency_ms(self) -> float:
        return self.latency_s * 1e3


def _cycles(spec: OpSpec, profile: HardwareProfile) -> tuple[float, float]:
    """(MAC-array cycles, total compute cycles including vector work)."""
    params = profile.op(spec.kind)
    if spec.kind in MAC_KINDS:
        ideal = mac_cycles(spec, profile.parallelism_in, profile.parallelism_out)
        eff = params.depthwise_efficiency if spec.kind == "dwconv" else params.efficiency
        mac = ideal / eff
        cycles = mac
    else:
        mac = 0.0
        cycles = vector_ops(spec) / (params.lanes * params.efficiency)
    act_cost = profile.activation_cost(spec.act)
    if act_cost:
        vec = profile.op("elementwise")
        cycles += spec.output_elements * act_cost / (vec.lanes * vec.efficiency)
    return mac, cycles


def peak_s(spec: OpSpec, profile: HardwareProfile) -> float:
    """The least time `spec`'s MACs can take on the profile's array: its ideal cycles
    (channels and, where the array unrolls it, the output map tiled) at clock_hz."""
    cycles = mac_cycles(spec, profile.parallelism_in, profile.parallelism_out,
                        profile.parallelism_ox, profile.parallelism_oy)
    return cycles / profile.clock_hz


def memory_bytes(spec: OpSpec, profile: HardwareProfile) -> float:
    """Bytes moved to and from off-chip memory (channel-tiled tensors, spills counted)."""
    inp, weight, out = tensor_elements(spec, profile.parallelism_in, profile.parallelism_out)
    size = profile.bytes_per_element
    activations = (inp + out) * size
    if activations + weight * size > profile.onchip_memory_bytes:
        activations *= 2
    return activations + weight * size


def estimate_op(spec: OpSpec, profile: HardwareProfile) -> OpEstimate:
    """Latency of `spec` on an analytic `profile` (see the module docstring for the math)."""
    if profile.kind != "analytic":
        raise ProfileError(f"{profile.source}: kind: estimate_op needs an analytic profile, "
                           f"got {profile.kind!r}")
    mac, cycles = _cycles(spec, profile)
    compute_s = cycles / profile.clock_hz
    memory_s = memory_bytes(spec, profile) / profile.bandwidth_bytes_per_s
    lanes = profile.parallelism_in * profile.parallelism_out
    utilisation = spec.macs / (mac * lanes) if mac else 0.0
    return OpEstimate(
        latency_s=max(compute_s, memory_s) + profile.overhead_s,
        compute_s=compute_s,
        memory_s=memory_s,
        overhead_s=profile.overhead_s,
        utilisation=min(1.0, utilisation),
        bound="compute" if compute_s >= memory_s else "memory",
    )
