"""The cost tables equal direct counts of the exported network; ranges and latency tables."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from lightning_nas.cost import LatencyTable, bitops, cost_range, count_macs, macs, params
from lightning_nas.nn import BitChoice, ChannelChoice, DynamicBatchNorm2d, DynamicConv2d, LayerChoice, QuantConv2d
from lightning_nas.spaces import SearchSpace


class _Block(nn.Module):
    def __init__(self, c: int, i: int, bits: bool) -> None:
        super().__init__()
        width = ChannelChoice(f"b{i}.width", (0.5, 1.0), (c, 2 * c))
        bc = BitChoice(f"b{i}.wbits", f"b{i}.abits", (4, 8)) if bits else None

        def branch(k: int) -> nn.Module:
            return nn.Sequential(
                DynamicConv2d(c, 2 * c, 1, out_width=width, bits=bc), DynamicBatchNorm2d(2 * c, width), nn.ReLU(),
                DynamicConv2d(2 * c, 2 * c, k, depthwise=True, in_width=width, out_width=width, bits=bc),
                DynamicConv2d(2 * c, c, 1, in_width=width, bits=bc, act_signed=True), DynamicBatchNorm2d(c),
            )

        self.op = LayerChoice({"k3": branch(3), "k5": branch(5)}, f"b{i}.op")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.op(x)


class CostSpace(SearchSpace):
    def __init__(self, bits: bool = False) -> None:
        super().__init__()
        self.input_size, self.num_classes = 16, 5
        self.stem = nn.Sequential(QuantConv2d(3, 8, 3, padding=1, wbits=8, abits=8), nn.BatchNorm2d(8), nn.ReLU())
        self.features = nn.Sequential(_Block(8, 0, bits), _Block(8, 1, bits))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


@pytest.mark.parametrize("bits", [False, True])
def test_table_sums_equal_direct_counts(bits: bool) -> None:
    space = CostSpace(bits)
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 3, 16, 16)
    for _ in range(6):
        arch = space.sample(gen)
        net = space.export(arch)
        assert macs(space, arch) == pytest.approx(count_macs(net, x))
        assert params(space, arch) == sum(p.numel() for p in net.parameters())
        if bits:
            direct = 0.0
            for layer in net.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    shape = []
                    h = layer.register_forward_pre_hook(lambda m, a: shape.append(a[0].shape))
                    net(x)
                    h.remove()
                    w, a = getattr(layer, "wbits", 32), getattr(layer, "abits", 32)
                    direct += count_macs(layer, torch.zeros(shape[0])) * w * a
            assert bitops(space, arch) == pytest.approx(direct)


def test_range_brackets_every_arch() -> None:
    space = CostSpace(bits=True)
    gen = torch.Generator().manual_seed(1)
    for metric, fn in (("macs", macs), ("params", params), ("bitops", bitops)):
        lo, hi = cost_range(space, metric)
        assert lo < hi
        values = [fn(space, space.sample(gen)) for _ in range(20)]
        assert lo <= min(values) and max(values) <= hi
    with pytest.raises(ValueError, match="unknown cost metric"):
        cost_range(space, "joules")


def test_lookup_does_not_run_the_network() -> None:
    space = CostSpace()
    arch = space.sample()
    macs(space, arch)
    calls = []
    space.register_forward_pre_hook(lambda *a: calls.append(1))
    for _ in range(10):
        macs(space, space.sample())
    assert not calls


def test_latency_table_predicts_refuses_and_round_trips(tmp_path) -> None:
    space = CostSpace()
    table = LatencyTable.build(space, batch_size=2, warmup=1, repeats=3)
    arch = space.sample()
    assert table.predict(arch) > 0
    lo, hi = table.range()
    assert lo <= table.predict(arch) <= hi
    loaded = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert loaded.predict(arch) == pytest.approx(table.predict(arch))
    loaded.check(space, batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        loaded.check(space, batch_size=8)
    with pytest.raises(ValueError, match="fingerprint"):
        loaded.check(CostSpace(bits=True))


def test_latency_table_calibration_scales_every_entry_by_the_median_ratio() -> None:
    space = CostSpace()
    table = LatencyTable.build(space, batch_size=2, warmup=1, repeats=3, calibrate=3)
    cal = table.meta["calibration"]
    assert cal["archs"] == 3 and len(cal["ratios"]) == 3 and cal["scale"] == statistics.median(cal["ratios"])
    raw = table.scaled(1 / cal["scale"])
    arch = space.sample()
    assert table.predict(arch) == pytest.approx(cal["scale"] * raw.predict(arch))
    assert table.fixed_ms == pytest.approx(cal["scale"] * raw.fixed_ms)
    assert LatencyTable.build(space, batch_size=2, warmup=1, repeats=3, calibrate=0).meta["calibration"] == {
        "scale": 1.0, "archs": 0}
