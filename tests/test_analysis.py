"""Analysis of zoo models: blocks, parameter count, MACs, memory, channel groups."""

from __future__ import annotations

import numpy as np
import pytest

from rewriter import zoo
from rewriter.analysis.blocks import find_blocks
from rewriter.analysis.channels import channel_groups
from rewriter.analysis.memory import memory_stats, peak_activation
from rewriter.analysis.ops import op_table
from rewriter.analysis.summary import analyse
from tests.helpers import load

# torchvision MobileNetV2: (expansion t, channels c, repeats n, stride s)
MNV2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
        (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def expected_ibns(width: float) -> list[tuple[int, int, int, float, int, bool]]:
    """(in, out, kernel, expansion, stride, residual) per block, from the paper's table."""
    blocks = []
    cin = make_divisible(32 * width)
    for t, c, n, s in MNV2:
        cout = make_divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            blocks.append((cin, cout, 3, hidden / cin, stride, stride == 1 and cin == cout))
            cin = cout
    return blocks


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_mobilenetv2_blocks_and_params(width):
    model = load(zoo.build("mobilenetv2", width=width, resolution=64))
    ibns = [b for b in find_blocks(model) if b.kind == "inverted_bottleneck"]
    got = [(b.in_channels, b.out_channels, b.kernel, b.expansion, b.stride, b.residual)
           for b in ibns]
    assert got == expected_ibns(width)
    assert all(b.batchnorm and b.activation == "relu6" for b in ibns)
    # Parameter count: every initializer of this BN-unfolded float model is a parameter.
    expected = sum(int(np.prod(t.values.shape)) for t in model.graph.tensors().values()
                   if hasattr(t, "values") and np.asarray(t.values).size > 1)
    stats = memory_stats(model)
    assert stats.params == expected and stats.param_bytes == 4 * expected
    if width == 1.0:
        # torchvision's mobilenet_v2() has 3,504,872 parameters (BN running stats excluded);
        # the ONNX export also stores running mean and var: 2 * 17,056 more.
        assert stats.params == 3_504_872 + 2 * 17_056


def test_mobilenetv3_blocks_have_se_and_hardswish():
    model = load(zoo.build("mobilenetv3", width=1.0, resolution=64))
    ibns = [b for b in find_blocks(model) if b.kind == "inverted_bottleneck"]
    assert len(ibns) == 11
    assert sum(b.squeeze_excite for b in ibns) == 9
    assert {b.activation for b in ibns} == {"relu", "hardswish"}
    assert [b.kernel for b in ibns] == [3, 3, 3] + [5] * 8


def test_macs_of_a_conv_match_the_formula():
    model = load(zoo.build("mobilenetv2", width=1.0, resolution=224))
    rows = {r.name: r for r in op_table(model)}
    stem = next(r for r in rows.values() if r.op_type == "Conv")
    assert stem.output_shape == (1, 32, 112, 112)
    assert stem.macs == 32 * 112 * 112 * 3 * 3 * 3
    total = sum(r.macs for r in rows.values())
    assert 290e6 < total < 320e6  # MobileNetV2 1.0 @224: ~300M MACs


def test_peak_activation_by_liveness():
    model = load(zoo.build("mobilenetv2", width=1.0, resolution=224))
    peak, _ = peak_activation(model)
    # At least the largest single step: the first expand conv's 96x112x112 input + output.
    assert peak >= 4 * (16 * 112 * 112 + 96 * 112 * 112)
    # And never more than all activations at once.
    everything = sum(4 * int(np.prod(s)) for name, s in model.shapes.items()
                     if name not in {t.name for t in model.graph.tensors().values()
                                     if hasattr(t, "values")})
    assert peak < everything


def test_channel_groups_of_mobilenetv2():
    model = load(zoo.build("mobilenetv2", width=1.0, resolution=64))
    groups = channel_groups(model)
    frozen = [g for g in groups if g.is_frozen]
    assert any("model input" in r for g in frozen for r in g.frozen)
    assert any("model output" in r for g in frozen for r in g.frozen)
    # Residual stages are one group each: e.g. the 24-channel stage has 2 producers.
    g24 = [g for g in groups if g.channels == 24]
    assert len(g24) == 1 and len(g24[0].by_role("producer")) == 2
    # An expansion group: 1 producer (expand), depthwise + BN followers, 1 consumer (project).
    g144 = [g for g in groups if g.channels == 144]
    assert all(len(g.by_role("producer")) == 1 and len(g.by_role("consumer")) == 1
               for g in g144)
    assert all(any(m.node.endswith("dw.conv") for m in g.by_role("follower")) for g in g144)


def test_analyse_json_shape():
    data = analyse(load(zoo.build("lraspp", width=0.5, resolution=64))).to_dict()
    assert data["sites"]["align-channels-up"] >= 1
    assert {"Resize", "Concat", "Mul"} <= set(data["op_counts"])
    ibn = next(b for b in data["blocks"] if b["kind"] == "inverted_bottleneck")
    assert {"kind", "expansion", "kernel", "stride", "residual", "nodes"} <= set(ibn)


def _group_of_33_through(op: str, inputs: list[str], constant: float):
    """A model conv 8->33, `op` over `inputs` (its output "y"; the scalar initializer "k" =
    `constant`), conv 33->8, and its 33-channel group."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((33, 8, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 33, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(constant, np.float32), "k")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["y"], name="c1"),
             helper.make_node(op, inputs, ["d"], name=op.lower()),
             helper.make_node("Conv", ["d", "w2"], ["out"], name="c2")]
    graph = helper.make_graph(
        nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 4])], inits)
    model = load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    return model, next(g for g in channel_groups(model) if g.channels == 33)


@pytest.mark.parametrize("divisor_is_the_group, pad_frozen", [(True, True), (False, False)])
def test_a_group_that_divides_may_only_shrink(divisor_is_the_group, pad_frozen):
    """Padding puts 0 on an added channel; 1 / 0 is inf, and a consumer's zero weight times
    inf is NaN, so a group something is divided by gains no channel. Removing some adds no
    zero: it may still be pruned."""
    model, group = _group_of_33_through(
        "Div", ["k", "y"] if divisor_is_the_group else ["y", "k"], 2.0)
    assert not group.is_frozen and group.can_pad != pad_frozen
    assert any("divides by the group" in reason for reason in group.pad_frozen) == pad_frozen
    _check_aligning(model, group, pad_frozen)


@pytest.mark.parametrize("exponent, pad_frozen", [(-1.0, True), (2.0, False)])
def test_a_group_raised_to_a_negative_power_may_only_shrink(exponent, pad_frozen):
    """0 ** -1 is inf as well: a Pow of the group's channels by a power that is not
    positive forbids padding it; a positive one leaves it free."""
    model, group = _group_of_33_through("Pow", ["y", "k"], exponent)
    assert not group.is_frozen and group.can_pad != pad_frozen
    assert any("not finite at 0" in reason for reason in group.pad_frozen) == pad_frozen
    _check_aligning(model, group, pad_frozen)


def _check_aligning(model, group, pad_frozen: bool) -> None:
    """align-channels-up pads the group unless it may only shrink; align-channels-down
    prunes it either way, to a model that runs and stays finite."""
    from rewriter.passes import get_pass
    from rewriter.runtime import run_model
    from rewriter.verify import make_inputs

    up = get_pass("align-channels-up", 32).sites(model)
    assert [s.id for s in up] == ([] if pad_frozen else [group.id])
    down = get_pass("align-channels-down", 32)
    (site,) = down.sites(model)
    assert site.id == group.id and site.detail["to"] == 32
    pruned = down.apply(model, site)
    outputs = run_model(pruned.to_onnx(), make_inputs(pruned, seed=1))
    assert all(np.isfinite(v).all() for v in outputs.values())
