"""InstaNASSpace: grouped instance-aware execution equals masked execution, export, latency table, cell semantics."""

from __future__ import annotations

import pytest
import torch

from lightning_nas import ArchError
from lightning_nas.cost.option_latency import OptionLatency
from lightning_nas.spaces.instanas import InstaNASSpace
from lightning_nas.spaces.instanas_cell import BASIC, EXECUTIONS, IDENTITIES, OPTIONS, InstaCell

SMALL = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2))


def _policy(batch: int, cells: int, p: float, seed: int = 0) -> torch.Tensor:
    policy = (torch.rand(batch, cells, len(OPTIONS), generator=torch.Generator().manual_seed(seed)) < p).float()
    policy[0] = 0  # nothing on anywhere: identity or the forced BasicBlock
    policy[1] = 1  # everything on
    return policy


def test_meta_graph_is_mobilenetv2_with_17_cells_and_forced_basic_blocks():
    space = InstaNASSpace(num_classes=10, input_size=32)
    assert space.num_cells == 17 and space.num_options == 5 and len(space.decisions()) == 85
    assert space.decisions()["cells.0.k3_e6"] == [0, 1]
    shortcut = [c.shortcut for c in space.cells]
    # stage starts change the shape (widths 32→16→24→32→64→96→160→320): no identity there
    assert [i for i, s in enumerate(shortcut) if not s] == [0, 1, 3, 6, 10, 13, 16]
    assert all(space.cells[i].forced == OPTIONS.index(BASIC) for i in (0, 1, 3))
    shapes = space.cell_input_shapes(1, with_output=True)
    assert shapes[0][2:] == (32, 32) and shapes[3][2:] == (32, 32) and shapes[-1][1:] == (320, 4, 4)
    assert InstaNASSpace(input_size=224).cell_input_shapes()[0][2:] == (112, 112)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.8])
def test_grouped_execution_equals_masked_execution_in_eval(p):
    torch.manual_seed(0)
    space = InstaNASSpace(num_classes=10, input_size=32, width_mult=0.5).eval()
    x = torch.randn(8, 3, 32, 32)
    policy = _policy(8, space.num_cells, p, seed=int(p * 10))
    with torch.no_grad():
        grouped = space.forward_policy(x, policy, "grouped")
        masked = space.masked_forward(x, policy)
    torch.testing.assert_close(grouped, masked, atol=1e-5, rtol=0)


def test_grouped_runs_each_option_only_on_its_rows():
    space = InstaNASSpace(num_classes=5, input_size=16, width_mult=0.25, stages=SMALL).eval()
    seen: dict[tuple[int, int], int] = {}
    for i, cell in enumerate(space.cells):
        for j, op in enumerate(cell.options):
            op.register_forward_hook(lambda m, a, o, key=(i, j): seen.__setitem__(key, seen.get(key, 0) + len(a[0])))
    policy = _policy(6, space.num_cells, 0.4, seed=3)
    with torch.no_grad():
        space.forward_policy(torch.randn(6, 3, 16, 16), policy)
    expected = space.effective_policy(policy).sum(0)
    for (i, j), n in seen.items():
        assert n == expected[i, j]
    assert sum(seen.values()) == int(expected.sum())
    assert all(expected[i, j] == 0 for i in range(space.num_cells) for j in range(5) if (i, j) not in seen)


def test_grouped_training_gives_gradients_only_to_used_options():
    space = InstaNASSpace(num_classes=5, input_size=16, width_mult=0.25, stages=SMALL).train()
    policy = torch.zeros(4, space.num_cells, 5)
    policy[:, :, 1] = 1
    space.forward_policy(torch.randn(4, 3, 16, 16), policy).sum().backward()
    for cell in space.cells:
        for j, op in enumerate(cell.options):
            has_grad = all(p.grad is not None for p in op.parameters())
            assert has_grad == (j == 1)


def test_export_of_one_policy_equals_the_meta_graph():
    space = InstaNASSpace(num_classes=10, input_size=32, width_mult=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    policy = _policy(3, space.num_cells, 0.4, seed=5)[2]
    arch = space.arch_of(policy)
    assert torch.equal(space.policy_of(arch), policy)
    net = space.export(arch).eval()
    assert not any(isinstance(m, type(space.cells[0])) for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(net(x), space.forward_policy(x, policy.expand(2, -1, -1)), atol=1e-5, rtol=0)
        space.activate(arch)
        torch.testing.assert_close(net(x), space(x), atol=1e-6, rtol=0)
    with pytest.raises(ArchError):
        space.validate({**arch, "cells.0.basic": 2})
    with pytest.raises(ValueError, match="shape"):
        space.set_policy(torch.zeros(2, 3, 5))


def test_option_latency_table_is_additive_with_forced_blocks():
    space = InstaNASSpace(num_classes=5, input_size=16, width_mult=0.25, stages=SMALL)
    table = OptionLatency.build(space, warmup=1, repeats=2)
    assert table.option_ms.shape == (space.num_cells, 5) and (table.option_ms > 0).all()
    assert table.min_ms < table.mbv2_ms < table.max_ms
    nothing = torch.zeros(1, space.num_cells, 5)
    assert table.of(nothing).item() == pytest.approx(table.min_ms)
    assert table.of(torch.ones(1, space.num_cells, 5)).item() == pytest.approx(table.max_ms)
    again = OptionLatency.from_state_dict(table.state_dict())
    assert again.matches(space, 1) and not again.matches(InstaNASSpace(num_classes=6, input_size=16,
                                                                      width_mult=0.25, stages=SMALL))


# --- cell semantics: official (per-option identity, ReLU6 BasicBlock) and our per-cell variant ------------
def _cell(identity: str = "per_option", basic_act: bool = True) -> InstaCell:
    torch.manual_seed(0)
    cell = InstaCell(0, 8, 8, 1, identity=identity, basic_act=basic_act).eval()
    for m in cell.modules():  # non-trivial BN so every option's output is visibly non-zero
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return cell


def _fixed(cell: InstaCell, x: torch.Tensor, flags: tuple[int, ...]) -> torch.Tensor:
    cell.activate_choice({n: f for n, f in zip(cell.names, flags)})
    with torch.no_grad():
        return cell(x)


def test_official_cell_adds_the_input_once_per_on_mbconv_option():
    cell, x = _cell(), torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        ops = [op(x) for op in cell.options]
    torch.testing.assert_close(_fixed(cell, x, (1, 1, 0, 1, 0)), ops[0] + ops[1] + ops[3] + 3 * x)
    torch.testing.assert_close(_fixed(cell, x, (1, 0, 0, 0, 1)), ops[0] + ops[4] + x)
    torch.testing.assert_close(_fixed(cell, x, (0, 0, 0, 0, 1)), ops[4])  # the BasicBlock has no identity
    torch.testing.assert_close(_fixed(cell, x, (0, 0, 0, 0, 0)), x)  # nothing on: skip
    assert [cell.identity_count(on) for on in ([0, 1, 3], [0, 4], [4], [])] == [3, 1, 0, 1]


def test_per_cell_identity_adds_the_input_once_whatever_is_on():
    cell, x = _cell("per_cell"), torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        ops = [op(x) for op in cell.options]
    torch.testing.assert_close(_fixed(cell, x, (1, 1, 0, 1, 0)), ops[0] + ops[1] + ops[3] + x)
    torch.testing.assert_close(_fixed(cell, x, (0, 0, 0, 0, 1)), ops[4] + x)
    torch.testing.assert_close(_fixed(cell, x, (0, 0, 0, 0, 0)), x)


def test_shape_changing_cells_add_no_identity_under_either_rule():
    for identity in IDENTITIES:
        torch.manual_seed(0)
        cell, x = InstaCell(0, 8, 16, 2, identity=identity).eval(), torch.randn(2, 8, 6, 6)
        with torch.no_grad():
            ops = [op(x) for op in cell.options]
        torch.testing.assert_close(_fixed(cell, x, (1, 1, 0, 0, 0)), ops[0] + ops[1])
        torch.testing.assert_close(_fixed(cell, x, (0, 0, 0, 0, 0)), ops[4])  # forced BasicBlock


def test_official_basic_block_ends_in_relu6_and_the_linear_one_does_not():
    x = torch.randn(4, 8, 6, 6) * 3
    with torch.no_grad():
        official = _cell().options[4](x)
        linear = _cell(basic_act=False).options[4](x)
    assert official.min() >= 0 and official.max() <= 6 and (official == 0).any()
    assert linear.min() < 0
    space = InstaNASSpace(num_classes=3, input_size=16, width_mult=0.25, stages=SMALL)
    assert isinstance(space.cells[0].options[4].conv2.act, torch.nn.ReLU6)


@pytest.mark.parametrize("identity", IDENTITIES)
def test_per_sample_execution_equals_each_row_run_alone(identity):
    cell, x = _cell(identity), torch.randn(6, 8, 6, 6)
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1], [1, 0, 1, 0, 0], [0, 1, 0, 0, 1],
                         [1, 0, 0, 0, 0]], dtype=torch.float)
    rows = torch.cat([_fixed(cell, x[i:i + 1], tuple(int(v) for v in mask[i])) for i in range(6)])
    for execution in EXECUTIONS:
        cell.execution = execution
        cell.set_mask(mask)
        with torch.no_grad():
            torch.testing.assert_close(cell(x), rows, atol=1e-5, rtol=0)
        cell.set_mask(None)


@pytest.mark.parametrize("identity", IDENTITIES)
def test_grouped_equals_masked_in_eval_for_both_identity_rules(identity):
    torch.manual_seed(0)
    space = InstaNASSpace(num_classes=10, input_size=32, width_mult=0.25, identity=identity, basic_act=False).eval()
    x, policy = torch.randn(6, 3, 32, 32), _policy(6, space.num_cells, 0.4, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(space.forward_policy(x, policy), space.masked_forward(x, policy), atol=1e-5,
                                   rtol=0)
        arch = space.arch_of(policy[2])
        net = space.export(arch).eval()
        torch.testing.assert_close(net(x[:2]), space.forward_policy(x[:2], policy[2].expand(2, -1, -1)),
                                   atol=1e-5, rtol=0)


def test_masked_training_normalises_each_option_over_the_whole_batch():
    x = torch.randn(8, 8, 6, 6)
    mask = torch.zeros(8, 5)
    mask[:2, 0] = 1  # option 0 serves two rows
    stats = {}
    for execution in EXECUTIONS:
        cell = _cell().train()
        cell.execution = execution
        cell.set_mask(mask)
        cell(x)
        stats[execution] = cell.options[0].expand.bn.running_mean.clone()
    whole, served = _cell().train(), _cell().train()
    whole.options[0](x)
    served.options[0](x[:2])
    torch.testing.assert_close(stats["masked"], whole.options[0].expand.bn.running_mean)
    torch.testing.assert_close(stats["grouped"], served.options[0].expand.bn.running_mean)


def test_masked_execution_skips_a_shape_keeping_cell_no_row_uses():
    cell, x = _cell().train(), torch.randn(4, 8, 6, 6)
    before = [m.running_mean.clone() for m in cell.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    cell.execution = "masked"
    cell.set_mask(torch.zeros(4, 5))
    assert cell(x) is x
    after = [m.running_mean for m in cell.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_space_defaults_are_the_official_semantics():
    space = InstaNASSpace(num_classes=3, input_size=16, width_mult=0.25, stages=SMALL)
    assert space.identity == "per_option" and space.basic_act
    assert all(cell.identity == "per_option" for cell in space.cells)
    with pytest.raises(ValueError, match="identity"):
        InstaNASSpace(num_classes=3, input_size=16, stages=SMALL, identity="once")
