"""``RNNCellSpace`` is a ``SearchSpace``: settings, fingerprint, arch files (format 2), sample/validate/export."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.arch import ArchError, read_arch_file, save_arch
from lightning_nas.modules.classification import space_of_arch_file
from lightning_nas.spaces.base import SearchSpace
from lightning_nas.spaces.rnn_cell import RNNCellSpace, RNNLanguageModel


def test_it_is_a_search_space_with_settings_and_a_fingerprint() -> None:
    space = RNNCellSpace(base=4, num_classes=11, hidden_size=8)
    assert isinstance(space, SearchSpace) and space.space_name == "RNNCellSpace"
    assert space.settings == {"base": 4, "num_classes": 11, "hidden_size": 8, "num_layers": 1, "dropout": 0.2}
    assert space.fingerprint() == RNNCellSpace(base=4, num_classes=11, hidden_size=8).fingerprint()
    assert space.fingerprint() != RNNCellSpace(base=8, num_classes=11, hidden_size=8).fingerprint()
    decisions = space.decisions()
    assert decisions["node6.combine"] == ["add", "elem_mult"] and decisions["cell.node"] == list(range(6))


def test_sample_validate_activate_export_and_the_arch_file(tmp_path) -> None:
    space = RNNCellSpace(base=4, num_classes=11, hidden_size=8)
    arch = space.sample(torch.Generator().manual_seed(0))
    assert space.validate(arch) == arch
    with pytest.raises(ArchError, match="inject.node"):
        space.validate({**arch, "inject.node": 9})
    space.activate(arch)
    assert space.active_arch == arch
    with pytest.raises(TypeError, match=r"export\(arch\)"):
        space(torch.zeros(1, 3, dtype=torch.long))
    logits, _ = space.export(arch)(torch.zeros(2, 3, dtype=torch.long))
    assert logits.shape == (2, 3, 11)
    path = save_arch(arch, tmp_path / "cell.json", space, reward=1.0)
    doc = read_arch_file(path)
    assert doc["space_class"] == "lightning_nas.spaces.rnn_cell.RNNCellSpace" and doc["settings"] == space.settings
    rebuilt = space_of_arch_file(str(path), num_classes=13, input_size=0)
    assert rebuilt.fingerprint() == space.fingerprint()
    assert isinstance(rebuilt.export(doc["arch"]), RNNLanguageModel)
