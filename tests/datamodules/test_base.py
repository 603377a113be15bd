"""Tests of the shared datamodule base: the seeded split, argument checks, loader settings."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataRootError,
    DigitsDataModule,
    ImageNetDataModule,
    TinyImageNetDataModule,
    VisionDataModule,
)
from lightning_nas.datamodules.datasets import TransformedSubset, split_indices

ALL = [CIFAR10DataModule, CIFAR100DataModule, TinyImageNetDataModule, ImageNetDataModule, DigitsDataModule]
EXPECTED_ATTRS = {
    CIFAR10DataModule: (10, 32),
    CIFAR100DataModule: (100, 32),
    TinyImageNetDataModule: (200, 64),
    ImageNetDataModule: (1000, 224),
    DigitsDataModule: (10, 32),
}


def test_split_is_deterministic_disjoint_and_complete() -> None:
    train, val = split_indices(100, 0.1, seed=42)
    assert (train, val) == split_indices(100, 0.1, seed=42)
    assert len(val) == 10 and len(train) == 90
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(100))
    assert split_indices(100, 0.1, seed=43)[1] != val


def test_split_keeps_one_sample_on_each_side() -> None:
    assert tuple(map(len, split_indices(5, 0.01, seed=0))) == (4, 1)
    assert tuple(map(len, split_indices(5, 0.99, seed=0))) == (1, 4)
    with pytest.raises(ValueError, match="at least 2"):
        split_indices(1, 0.5, seed=0)


def test_split_is_pinned_across_processes_and_runs() -> None:
    # A resumed or distributed search must score on the same held-out images: the split depends
    # only on (n, val_split, seed), never on process state such as the global RNG.
    torch.manual_seed(123)
    assert split_indices(20, 0.25, seed=0)[1] == [4, 5, 7, 13, 19]


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("val_split", [0.0, 1.0, -0.2, 1.5])
def test_val_split_outside_unit_interval_fails_in_init(cls: type[VisionDataModule], val_split: float) -> None:
    with pytest.raises(ValueError, match=r"val_split=.*between 0 and 1.*--data\.val_split"):
        cls(data_dir="/nonexistent", val_split=val_split, num_workers=0)


@pytest.mark.parametrize("cls", ALL)
def test_attributes_are_set_right_after_init(cls: type[VisionDataModule]) -> None:
    dm = cls(data_dir="/nonexistent", num_workers=0)  # no data needed to read the attributes
    assert (dm.num_classes, dm.input_size, dm.in_channels) == (*EXPECTED_ATTRS[cls], 3)
    assert dm.dims == (3, dm.input_size, dm.input_size)


@pytest.mark.parametrize("cls", ALL[:4])
def test_missing_root_is_a_data_root_error(cls: type[VisionDataModule], tmp_path) -> None:
    dm = cls(data_dir=str(tmp_path / "nowhere"), num_workers=0)
    assert issubclass(DataRootError, FileNotFoundError)
    for hook in (dm.prepare_data, dm.setup):
        with pytest.raises(DataRootError, match="nowhere"):
            hook()


def test_persistent_workers_and_prefetch_only_with_workers() -> None:
    dm = DigitsDataModule(num_workers=2)
    loader = dm.val_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    loader = DigitsDataModule(num_workers=0).val_dataloader()
    assert not loader.persistent_workers and loader.prefetch_factor is None
    assert loader.pin_memory == torch.cuda.is_available()


def test_transformed_subset_seeds_augmentation_per_index_and_spares_global_rng() -> None:
    data = [(torch.zeros(1), i % 2) for i in range(4)]
    noisy = TransformedSubset(data, [3, 1], transform=lambda x: x + torch.rand(1), aug_seed=5)
    state = torch.get_rng_state()
    first = [noisy[i][0] for i in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, noisy[i][0]) for i, a in enumerate(first))
    assert not torch.equal(first[0], first[1])
    assert [noisy[i][1] for i in range(2)] == [1, 1]


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"num_workers": -1}])
def test_bad_loader_arguments_fail_in_init(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DigitsDataModule(**kwargs)
