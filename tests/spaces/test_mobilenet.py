"""MobileNetSpace: decisions, sampling, export equivalence, zero blocks, published archs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_nas import ArchError
from lightning_nas.nn import Choice, LayerChoice, QuantConv2d
from lightning_nas.spaces import MobileNetSpace
from lightning_nas.spaces.blocks import Residual, mbconv
from lightning_nas.spaces.mobilenet import ZERO, MBConvBlock
from lightning_nas.spaces.registry import get_published, published_names

CANDIDATES = ["k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6"]
SHORTCUT_BLOCKS = {1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19}  # the ProxylessNAS space's


def tiny_space(input_size: int = 32, bits: tuple[int, ...] | None = None, **kwargs) -> MobileNetSpace:
    torch.manual_seed(0)
    defaults = dict(num_classes=10, input_size=input_size, width_mult=0.25, stage_depths=(1, 2, 2, 1, 2, 1),
                    head_channels=64, bits=bits)
    return MobileNetSpace(**{**defaults, **kwargs})


def count_macs(net: nn.Module, size: int) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def proxyless_space() -> MobileNetSpace:
    return MobileNetSpace()


def test_default_space_is_proxylessnas(proxyless_space):
    decisions = proxyless_space.decisions()
    assert list(decisions) == [f"blocks.{i}.op" for i in range(21)]
    for i, values in enumerate(decisions.values()):
        assert values == (CANDIDATES + [ZERO] if i in SHORTCUT_BLOCKS else CANDIDATES)
    assert decisions == proxyless_space.decisions() == MobileNetSpace().decisions()
    assert proxyless_space.fingerprint() == MobileNetSpace().fingerprint()


def test_allow_zero_false_and_custom_candidates():
    space = tiny_space(allow_zero=False, candidates=("k3_e1", "k5_e6"))
    assert all(values == ["k3_e1", "k5_e6"] for values in space.decisions().values())


@pytest.mark.parametrize("size, final", [(32, 4), (64, 4), (224, 7)])
def test_input_size_strides(size, final):
    space = tiny_space(size)
    space.activate(space.sample(torch.Generator().manual_seed(0)))
    assert space.forward_features(torch.randn(2, 3, size, size)).shape[-1] == final


def test_sample_is_seeded_and_uniform():
    space = tiny_space()
    decisions = space.decisions()
    assert space.sample(torch.Generator().manual_seed(3)) == space.sample(torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    n = 2100
    counts = {k: Counter() for k in decisions}
    for _ in range(n):
        for k, v in space.sample(gen).items():
            counts[k][v] += 1
    for k, values in decisions.items():
        expected = n / len(values)
        assert set(counts[k]) == set(values)
        assert all(abs(counts[k][v] - expected) < 0.2 * expected for v in values), (k, counts[k])


def _train_a_little(space: MobileNetSpace, size: int, steps: int = 2) -> None:
    gen = torch.Generator().manual_seed(1)
    space.train()
    with torch.no_grad():
        for _ in range(steps):
            space.activate(space.sample(gen))
            space(torch.randn(2, 3, size, size, generator=gen))


@pytest.mark.parametrize("bits", [None, (4, 8)], ids=["float", "bits"])
@pytest.mark.parametrize("size", [32, 64, 224])
def test_export_matches_supernet(size, bits):
    space = tiny_space(size, bits)
    _train_a_little(space, size)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, size, size, generator=gen)
    archs = [space.sample(gen)]
    archs.append({k: (ZERO if ZERO in v else v[-1]) for k, v in space.decisions().items()})
    for arch in archs:
        space.eval()
        space.activate(arch)
        with torch.no_grad():
            expected = space(x)
            got = space.export(arch).eval()(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", [None, (2, 4, 8)], ids=["float", "bits"])
def test_export_is_plain(bits):
    space = tiny_space(bits=bits)
    arch = space.sample(torch.Generator().manual_seed(0))
    net = space.export(arch)
    assert not any(isinstance(m, (LayerChoice, MBConvBlock)) for m in net.modules())
    # frozen quantized convs keep fixed bits; none owns a decision any more
    leftovers = [m for m in net.modules() if isinstance(m, Choice)]
    assert all(not m.choice_decisions() for m in leftovers)
    assert bool(leftovers) == (bits is not None)
    kinds = [type(b) for b in net.features]
    assert kinds == [nn.Identity if arch[f"blocks.{i}.op"] == ZERO else Residual for i in range(len(kinds))]


def test_zero_block_skips_its_ops():
    space = tiny_space()
    arch = space.sample(torch.Generator().manual_seed(0))
    i = next(i for i, values in enumerate(space.decisions().values()) if ZERO in values)
    arch[f"blocks.{i}.op"] = ZERO
    space.activate(arch)
    block = space.features[i]
    called = []
    hooks = [m.register_forward_hook(lambda *a: called.append(1)) for m in block.op.modules()]
    seen = {}
    block.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0], out=out))
    space(torch.randn(2, 3, 32, 32))
    assert not called
    assert seen["out"] is seen["inp"]
    for h in hooks:
        h.remove()


def test_validate_raises_arch_error():
    space = tiny_space()
    arch = space.sample(torch.Generator().manual_seed(0))
    no_zero = next(k for k, v in space.decisions().items() if ZERO not in v)
    for bad in ({**arch, no_zero: ZERO}, {**arch, "blocks.0.op": "k9_e6"}, {**arch, "blocks.99.op": "k3_e3"},
                {k: v for k, v in arch.items() if k != "blocks.1.op"}):
        with pytest.raises(ArchError):
            space.validate(bad)
        with pytest.raises(ArchError):
            space.export(bad)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="one width, depth and stride"):
        MobileNetSpace(stage_depths=(1, 1))
    with pytest.raises(ValueError, match="k3_e6"):
        tiny_space(candidates=("conv3x3",))
    with pytest.raises(ValueError, match="bits"):
        tiny_space(bits=(1, 4))


def test_bit_decisions_and_signedness():
    space = tiny_space(bits=(2, 4, 6, 8))
    decisions = space.decisions()
    assert list(decisions)[:3] == ["blocks.0.op", "blocks.0.wbits", "blocks.0.abits"]
    assert decisions["blocks.1.wbits"] == decisions["blocks.1.abits"] == [2, 4, 6, 8]
    op = space.features[1].op.candidates["k5_e6"]
    assert (op.expand.conv.act_signed, op.depthwise.conv.act_signed, op.project.conv.act_signed) == (True, False, False)
    arch = {**space.sample(torch.Generator().manual_seed(0)), "blocks.1.op": "k5_e6", "blocks.1.wbits": 2,
            "blocks.1.abits": 6}
    space.activate(arch)
    assert (op.project.conv.wbits, op.project.conv.abits) == (2, 6)
    fixed = [m for m in (*space.stem.modules(), *space.head.modules()) if isinstance(m, (QuantConv2d, nn.Linear))]
    assert fixed and all((m.wbits, m.abits) == (8, 8) for m in fixed)


def test_backward_reaches_only_the_active_path():
    space = tiny_space()
    arch = space.sample(torch.Generator().manual_seed(4))
    space.activate(arch)
    space(torch.randn(2, 3, 32, 32)).sum().backward()
    for i, block in enumerate(space.features):
        chosen = arch[f"blocks.{i}.op"]
        for key, candidate in block.op.candidates.items():
            grads = [p.grad for p in candidate.parameters()]
            assert all(g is not None for g in grads) if key == chosen else all(g is None for g in grads), (i, key)


def test_per_sample_setting_matches_single_paths():
    space = tiny_space().eval()
    x = torch.randn(2, 3, 32, 32)
    i = next(i for i, values in enumerate(space.decisions().values()) if ZERO in values)
    arch = space.sample(torch.Generator().manual_seed(0))
    outs = []
    for value in (ZERO, "k5_e6"):
        space.activate({**arch, f"blocks.{i}.op": value})
        with torch.no_grad():
            outs.append(space(x))
    values = space.decisions()[f"blocks.{i}.op"]
    space.features[i].op.set_active(torch.tensor([values.index(ZERO), values.index("k5_e6")]))
    with torch.no_grad():
        mixed = space(x)
    torch.testing.assert_close(mixed, torch.stack([outs[0][0], outs[1][1]]), atol=1e-5, rtol=1e-5)


def test_torch_export():
    space = tiny_space()
    net = space.export(space.sample(torch.Generator().manual_seed(0))).eval()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(net, (x,))
    torch.testing.assert_close(program.module()(x), net(x))


def test_mbconv_helper():
    op = mbconv(16, 24, kernel=5, expand=1, stride=2)
    assert list(dict(op.named_children())) == ["depthwise", "project"]
    assert op(torch.randn(2, 16, 8, 8)).shape == (2, 24, 4, 4)
    assert mbconv(16, 24, kernel=3, expand=6).expand.conv.out_channels == 96


MOBILENET_ARCHS = [n for n in published_names() if get_published(n).space == "MobileNetSpace"]


@pytest.mark.parametrize("name", MOBILENET_ARCHS)
def test_published_macs_and_params(name):
    entry = get_published(name)
    space = entry.build_space()
    net = space.export(entry.arch)
    assert count_macs(net, 224) == pytest.approx(entry.macs, rel=0.01)
    if entry.params is not None:
        assert n_params(net) == pytest.approx(entry.params, rel=0.01)


def test_mobilenet_v2_equals_torchvision():
    torchvision = pytest.importorskip("torchvision")
    entry = get_published("mobilenet_v2")
    net = entry.build_space().export(entry.arch)
    reference = torchvision.models.mobilenet_v2()  # structure only, no weights
    assert count_macs(net, 224) == count_macs(reference, 224)
    assert n_params(net) == n_params(reference) == 3_504_872


def test_published_names():
    assert {"mobilenet_v2", "proxyless_gpu", "proxyless_cpu", "proxyless_mobile"} <= set(MOBILENET_ARCHS)
