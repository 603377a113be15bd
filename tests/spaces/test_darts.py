"""DartsCellSpace: decisions, single-path forward, export equal to the supernet, cost tables, retraining extras."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_nas import ArchError
from lightning_nas.cost import cost_table, count_macs
from lightning_nas.nn import Choice
from lightning_nas.spaces.darts import DartsCellSpace, DartsNetwork
from lightning_nas.spaces.darts_ops import DARTS_OPS, FactorizedReduce


def tiny(size: int = 8, **kwargs) -> DartsCellSpace:
    torch.manual_seed(0)
    return DartsCellSpace(num_classes=5, input_size=size, init_channels=4, layers=3, **kwargs)


@pytest.fixture(scope="module")
def space_with_table() -> tuple[DartsCellSpace, object]:
    space = tiny(16, include_none=True).eval()
    return space, cost_table(space)


def test_decisions_are_shared_per_cell_type():
    space = tiny()
    decisions = space.decisions()
    assert len(decisions) == 2 * 4 * 2 * 2
    assert list(decisions)[:4] == ["normal.node0.in0", "normal.node0.op0", "normal.node0.in1", "normal.node0.op1"]
    assert decisions["reduce.node3.in1"] == [0, 1, 2, 3, 4]
    assert decisions["normal.node2.op0"] == list(DARTS_OPS)
    assert [c.reduction for c in space.features] == [False, True, True]
    assert DartsCellSpace(layers=8, init_channels=4).reductions == (2, 5)


@pytest.mark.parametrize("size", [8, 16, 224])
def test_export_equals_supernet_on_random_archs(size):
    space = tiny(size, include_none=True)
    x = torch.randn(2, 3, size, size)
    for seed in range(4 if size < 224 else 1):
        arch = space.sample(torch.Generator().manual_seed(seed))
        space.activate(arch)
        net = space.export(arch)
        assert isinstance(net, DartsNetwork) and not any(isinstance(m, Choice) for m in net.modules())
        for mode in (False, True):
            space.train(mode), net.train(mode)
            torch.testing.assert_close(net(x), space(x), atol=1e-5, rtol=0)


def test_two_slots_on_one_input_sum_two_ops():
    space = tiny().eval()
    arch = {k: (0 if ".in" in k else "sep_conv_3x3") for k in space.decisions()}
    space.activate(arch)
    net = space.export(arch).eval()
    cell = net.features[0]
    assert cell.indices == [0] * 8 and cell.ops[0] is not cell.ops[1]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(net(x), space(x), atol=1e-5, rtol=0)


def test_backward_reaches_only_the_chosen_ops():
    space = tiny()
    arch = space.sample(torch.Generator().manual_seed(1))
    space.activate(arch)
    space(torch.randn(2, 3, 8, 8)).sum().backward()
    for cell in space.features:
        for node in cell.nodes:
            for slot in node:
                for bank in slot.banks:
                    for name, op in bank.ops.items():
                        chosen = bank.live and name == bank.active_op
                        assert all((p.grad is not None) == chosen for p in op.parameters())


def test_reduction_banks_follow_the_input():
    space = tiny()
    cell = space.features[1]
    node = cell.nodes[2]
    arch = {**space.sample(torch.Generator().manual_seed(0)), "reduce.node2.in0": 1, "reduce.node2.op0": "skip_connect"}
    space.activate(arch)
    wide, narrow = node[0].banks
    assert node[0].active_bank() is wide and isinstance(wide.ops["skip_connect"], FactorizedReduce)
    space.activate({**arch, "reduce.node2.in0": 3})
    assert node[0].active_bank() is narrow and isinstance(narrow.ops["skip_connect"], nn.Identity)


def test_validate_names_the_bad_key():
    space = tiny()
    arch = space.sample()
    with pytest.raises(ArchError, match="normal.node0.in0"):
        space.validate({**arch, "normal.node0.in0": 2})
    with pytest.raises(ArchError, match="reduce.node1.op1"):
        space.validate({**arch, "reduce.node1.op1": "conv_9x9"})
    with pytest.raises(ArchError, match="Missing"):
        space.validate({k: v for k, v in arch.items() if k != "normal.node3.op0"})


@pytest.mark.parametrize("kwargs", [{"layers": 2}, {"ops": ("sep_conv_3x3", "conv_9x9")}, {"init_channels": 5},
                                    {"input_size": 30}, {"input_size": 100}, {"ops": ("max_pool_3x3",) * 2}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        DartsCellSpace(**{"init_channels": 4, "layers": 3, "input_size": 8, **kwargs})


def test_cost_table_equals_direct_count(space_with_table):
    space, table = space_with_table
    x = torch.randn(1, 3, 16, 16)
    for seed in range(6):
        arch = space.sample(torch.Generator().manual_seed(seed))
        net = space.export(arch).eval()
        assert table.macs(arch) == count_macs(net, x)
        assert table.params(arch) == sum(p.numel() for p in net.parameters())


def test_cost_of_skip_in_reduction_depends_on_its_input(space_with_table):
    space, table = space_with_table
    arch = {k: (0 if ".in" in k else "max_pool_3x3") for k in space.decisions()}
    base = table.macs(arch)
    fr = table.macs({**arch, "reduce.node1.op0": "skip_connect"})
    free = table.macs({**arch, "reduce.node1.op0": "skip_connect", "reduce.node1.in0": 2})
    assert fr > base == free


def test_auxiliary_head_and_drop_path_apply_in_training_only():
    space = tiny(16, auxiliary=True, drop_path=0.3)
    arch = {k: (0 if ".in" in k else "sep_conv_3x3") for k in space.decisions()}
    net = space.export(arch)
    assert net.drop_path_prob == 0.3
    x = torch.randn(4, 3, 16, 16)
    net.train()
    logits, aux = net(x)
    assert logits.shape == aux.shape == (4, 5)
    net.eval()
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (4, 5)
    torch.manual_seed(0)
    net.train()
    dropped = net.forward_features(x)
    net.drop_path_prob = 0.0
    torch.manual_seed(0)
    assert not torch.allclose(dropped, net.forward_features(x))
