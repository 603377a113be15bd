"""DartsCellSpace: decisions, single-path forward, export equal to the supernet, cost tables, retraining extras,
and the two op-weight layouts (per edge, the default; shared per slot)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightning_nas import ArchError, load_arch, save_arch
from lightning_nas.arch import settings_differences
from lightning_nas.cost import cost_table, count_macs
from lightning_nas.nn import Choice
from lightning_nas.spaces.darts import OP_WEIGHTS, DartsCellSpace, DartsNetwork, OpBank
from lightning_nas.spaces.darts_ops import DARTS_OPS, FactorizedReduce, SepConv


def tiny(size: int = 8, **kwargs) -> DartsCellSpace:
    torch.manual_seed(0)
    return DartsCellSpace(num_classes=5, input_size=size, init_channels=4, layers=3, **kwargs)


def banks(space: DartsCellSpace) -> list[OpBank]:
    return [m for m in space.modules() if isinstance(m, OpBank)]


@pytest.fixture(scope="module", params=OP_WEIGHTS)
def space_with_table(request) -> tuple[DartsCellSpace, object]:
    space = tiny(16, include_none=True, op_weights=request.param).eval()
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


@pytest.mark.parametrize("op_weights", OP_WEIGHTS)
@pytest.mark.parametrize("size", [8, 16, 224])
def test_export_equals_supernet_on_random_archs(size, op_weights):
    space = tiny(size, include_none=True, op_weights=op_weights)
    x = torch.randn(2, 3, size, size)
    for seed in range(4 if size < 224 else 1):
        arch = space.sample(torch.Generator().manual_seed(seed))
        space.activate(arch)
        net = space.export(arch)
        assert isinstance(net, DartsNetwork) and not any(isinstance(m, Choice) for m in net.modules())
        for mode in (False, True):
            space.train(mode), net.train(mode)
            torch.testing.assert_close(net(x), space(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("op_weights", OP_WEIGHTS)
def test_two_slots_on_one_input_sum_two_ops(op_weights):
    space = tiny(op_weights=op_weights).eval()
    arch = {k: (0 if ".in" in k else "sep_conv_3x3") for k in space.decisions()}
    space.activate(arch)
    net = space.export(arch).eval()
    cell = net.features[0]
    assert cell.indices == [0] * 8 and cell.ops[0] is not cell.ops[1]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(net(x), space(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("op_weights", OP_WEIGHTS)
def test_backward_reaches_only_the_chosen_ops(op_weights):
    space = tiny(op_weights=op_weights)
    arch = space.sample(torch.Generator().manual_seed(1))
    space.activate(arch)
    space(torch.randn(2, 3, 8, 8)).sum().backward()
    for bank in banks(space):
        chosen = bank.active_module() if bank.live else None
        for op in bank.ops.values():
            assert all((p.grad is not None) == (op is chosen) for p in op.parameters())


@pytest.mark.parametrize("op_weights", OP_WEIGHTS)
def test_reduction_banks_follow_the_input(op_weights):
    space = tiny(op_weights=op_weights)
    node = space.features[1].nodes[2]
    arch = {**space.sample(torch.Generator().manual_seed(0)), "reduce.node2.in0": 1, "reduce.node2.op0": "skip_connect"}
    space.activate(arch)
    wide, narrow = node[0].banks
    assert node[0].active_bank() is wide and isinstance(wide.active_module(), FactorizedReduce)
    space.activate({**arch, "reduce.node2.in0": 3})
    assert node[0].active_bank() is narrow and isinstance(narrow.active_module(), nn.Identity)


def _node2_op(space: DartsCellSpace, arch: dict, cell: int = 0) -> nn.Module:
    space.activate(arch)
    return space.features[cell].nodes[2][0].active_bank().active_module()


def test_per_edge_weights_by_default_one_op_per_slot_input_and_name():
    """Default: an op's weights never see two inputs (DARTS keeps weights per (edge, op)); ``shared`` keeps one op
    per (slot, name) for every input of the slot."""
    arch = {**tiny().sample(torch.Generator().manual_seed(0)), "normal.node2.op0": "sep_conv_3x3"}
    on = [{**arch, "normal.node2.in0": k} for k in range(4)]
    space = tiny()
    assert space.op_weights == "per_edge"
    ops = [_node2_op(space, a) for a in on]
    assert all(isinstance(op, SepConv) for op in ops) and len({id(op) for op in ops}) == 4
    shared = tiny(op_weights="shared")
    assert len({id(_node2_op(shared, a)) for a in on}) == 1
    other_slot = shared.features[0].nodes[2][1].banks[0].ops["sep_conv_3x3"]
    assert other_slot is not _node2_op(shared, on[0])  # the two slots never share, in either layout


@pytest.mark.parametrize(("op_weights", "normal", "reduce"), [("per_edge", 28, 28), ("shared", 8, 14)])
def test_op_count_per_cell(op_weights, normal, reduce):
    space = tiny(op_weights=op_weights)
    n_ops = len(DARTS_OPS)
    for cell, per_name in zip(space.features, (normal, reduce, reduce)):
        assert sum(len(b.ops) for b in banks(cell)) == per_name * n_ops


def test_layouts_share_decisions_arch_files_and_exported_networks(tmp_path):
    per_edge, shared = tiny(), tiny(op_weights="shared")
    assert per_edge.decisions() == shared.decisions() and per_edge.fingerprint() != shared.fingerprint()
    assert per_edge.settings["op_weights"] == "per_edge" and shared.settings["op_weights"] == "shared"
    assert settings_differences(per_edge.settings, shared.settings) == {}  # the layout is not an arch setting
    arch = shared.sample(torch.Generator().manual_seed(2))
    path = save_arch(arch, tmp_path / "arch.json", shared)
    assert load_arch(path, per_edge) == arch
    shapes = [[p.shape for p in space.export(arch).parameters()] for space in (per_edge, shared)]
    assert shapes[0] == shapes[1]
    doc = json.loads(path.read_text())
    doc["settings"].pop("op_weights", None)  # as written before op_weights existed
    path.write_text(json.dumps(doc))
    assert load_arch(path, per_edge) == load_arch(path, shared) == arch


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
                                    {"input_size": 30}, {"input_size": 100}, {"ops": ("max_pool_3x3",) * 2},
                                    {"op_weights": "per_node"}])
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
