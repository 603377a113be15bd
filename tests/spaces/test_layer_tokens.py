"""``LayerTokenSpace`` is a ``SearchSpace``: settings, fingerprint, arch files (format 2), sample/validate/activate/
export, and the depth an arch carries."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.arch import ArchError, load_arch, read_arch_file, save_arch
from lightning_nas.modules.classification import space_of_arch_file
from lightning_nas.search.output import publish_arch
from lightning_nas.spaces.base import SearchSpace
from lightning_nas.spaces.layer_tokens import LayerTokenNet, LayerTokenSpace


def _space(**kwargs) -> LayerTokenSpace:
    return LayerTokenSpace(**{"num_layers": 3, "num_filters": [4, 8], "strides": [1, 2], "num_classes": 5,
                              "input_size": 8, **kwargs})


def test_it_is_a_search_space_with_settings_and_a_fingerprint() -> None:
    space = _space()
    assert isinstance(space, SearchSpace) and space.space_name == "LayerTokenSpace"
    assert space.settings == {"num_layers": 3, "filter_heights": [1, 3, 5, 7], "filter_widths": [1, 3, 5, 7],
                              "num_filters": [4, 8], "strides": [1, 2], "skip_connections": True, "num_classes": 5,
                              "input_size": 8, "in_channels": 3}
    assert space.fingerprint() == _space().fingerprint()
    assert space.fingerprint() != _space(num_filters=[4, 16]).fingerprint()
    assert list(space.decisions())[:5] == ["layer0.fh", "layer0.fw", "layer0.filters", "layer0.stride", "layer1.fh"]
    assert space.decisions()["layer2.skip1"] == [0, 1] and len(space.decisions(5)) > len(space.decisions())


def test_sample_validate_activate_export_at_the_archs_own_depth() -> None:
    space = _space()
    arch = space.sample(torch.Generator().manual_seed(0), num_layers=4)
    assert space.validate(arch) == arch  # a deeper arch than the space's first program is still valid
    assert space.validate({**arch, "layer1.skip0": True})["layer1.skip0"] == 1
    with pytest.raises(ArchError, match="layer0.fh"):
        space.validate({**arch, "layer0.fh": 4})
    with pytest.raises(ArchError, match="mapping"):
        space.validate([1, 2])
    space.activate(arch)
    assert space.active_arch == arch
    with pytest.raises(TypeError, match=r"export\(arch\)"):
        space(torch.randn(1, 3, 8, 8))
    net = space.export(arch)
    assert isinstance(net, LayerTokenNet) and net(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_an_arch_file_rebuilds_its_space_and_child(tmp_path) -> None:
    space = _space()
    arch = space.sample(torch.Generator().manual_seed(1))
    path = publish_arch(arch, space, tmp_path / "run", tmp_path, announce=False, reward=0.5)
    doc = read_arch_file(path)
    assert doc["format"] == 2 and doc["space_class"] == "lightning_nas.spaces.layer_tokens.LayerTokenSpace"
    assert doc["settings"] == space.settings and doc["fingerprint"] == space.fingerprint()
    rebuilt = space_of_arch_file(str(tmp_path / "best_arch.json"), num_classes=7, input_size=8)
    assert isinstance(rebuilt, LayerTokenSpace) and rebuilt.fingerprint() == space.fingerprint()
    assert rebuilt.export(doc["arch"])(torch.randn(1, 3, 8, 8)).shape == (1, 7)
    assert load_arch(path, space=rebuilt) == arch
    other = save_arch(arch, tmp_path / "other.json", _space(num_filters=[4, 16]))
    with pytest.raises(ArchError, match="num_filters"):  # the settings it records name the space it fits
        load_arch(other, space=rebuilt)
