"""``on_device=True``: the training set as one uint8 tensor, cropped/flipped/normalised in batches where it lives.

On fake CIFAR-10/100 and Tiny ImageNet in their real on-disk formats, on the CPU (the same code runs on a GPU; the
CUDA test runs only where one is present): the batched augmentation equals torchvision's per-image ops for the
drawn parameters, the parameters vary and are a function of the seed only, the loader serves the default loader's
order, each DDP rank a disjoint share, and a fit killed mid-epoch resumes with the same batches.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torchvision.transforms import v2

from lightning_nas.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageNetDataModule,
    TinyImageNetDataModule,
)
from lightning_nas.datamodules.on_device import DeviceImages, PadCropFlip, RandomResizedCropFlip, uniforms
from lightning_nas.errors import ConfigError
from tests.helpers.fake_data import write_fake_cifar10, write_fake_cifar100, write_fake_tinyimagenet
from tests.helpers.kill import Kill, Killed

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar10"), n_train=60, n_test=10)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_tinyimagenet(tmp_path_factory.mktemp("tiny"), n_classes=3, per_class=8, val_per_class=1)


class Raw:
    """An augmentation that leaves the images as they are (float), so a batch shows which samples it holds."""

    def __call__(self, images: torch.Tensor, seeds: Any) -> torch.Tensor:
        return images.float()


def served_indices(dm: CIFAR10DataModule, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[int]:
    """Which training-part samples the (un-augmented) batches hold, in order."""
    images = dm.train_uint8()[0].float().flatten(1)
    out = []
    for x, _ in batches:
        for row in x.flatten(1):
            (match,) = torch.nonzero((images == row).all(1)).flatten().tolist()
            out.append(match)
    return out


def test_pad_crop_flip_is_torchvision_crop_flip_normalize_for_its_parameters() -> None:
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = PadCropFlip(32, 4, MEAN, STD)
    params = aug.params(range(1000, 1012))
    out = aug.apply(images, params)
    assert out.shape == (12, 3, 32, 32) and out.dtype == torch.float32
    for image, (dy, dx, flipped), got in zip(images, params.tolist(), out):
        ref = v2.functional.crop(v2.functional.pad(image, [4]), dy, dx, 32, 32)
        ref = v2.functional.horizontal_flip(ref) if flipped else ref
        ref = v2.functional.normalize(v2.functional.to_dtype(ref, torch.float32, scale=True), MEAN, STD)
        torch.testing.assert_close(got, ref)
    assert torch.equal(aug(images, range(1000, 1012)), out)  # __call__ draws the same parameters


def test_random_resized_crop_flip_is_torchvision_resized_crop_for_its_boxes() -> None:
    images = torch.randint(0, 256, (10, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    aug = RandomResizedCropFlip(64, (0.35, 1.0), MEAN, STD)
    boxes = aug.boxes(range(10), 64, 64)
    out = aug.apply(images, aug.theta(boxes, 64, 64))
    assert out.shape == (10, 3, 64, 64)
    for image, (top, left, h, w, flipped), got in zip(images, boxes.tolist(), out):
        assert 0.35 * 64 * 64 - 64 <= h * w <= 64 * 64 and 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1
        ref = v2.functional.resized_crop(image.float(), int(top), int(left), int(h), int(w), [64, 64],
                                         antialias=False)
        ref = v2.functional.horizontal_flip(ref) if flipped else ref
        torch.testing.assert_close(got, v2.functional.normalize(ref / 255, MEAN, STD), atol=1e-4, rtol=0)


def test_augmentation_parameters_vary_and_are_a_function_of_the_seed_only() -> None:
    aug = PadCropFlip(32, 4, MEAN, STD)
    torch.manual_seed(0)
    params = aug.params(range(500))
    state = torch.get_rng_state()
    assert torch.equal(params, aug.params(range(500)))  # the same seeds, the same crops and flips ...
    assert torch.equal(torch.get_rng_state(), state)  # ... and the torch RNG is not read
    assert set(params[:, 0].tolist()) == set(range(9)) == set(params[:, 1].tolist())
    assert 0.4 < params[:, 2].float().mean() < 0.6
    many = aug.params(range(10_000)).double()  # dy, dx and flip independent of each other
    assert (torch.corrcoef(many.T) - torch.eye(3)).abs().max() < 0.05
    assert not torch.equal(params, aug.params(range(500, 1000)))
    # consecutive seeds (the sampler's seeds of consecutive indices) are not correlated
    u = torch.tensor([uniforms(s, 1)[0] for s in range(2000)])
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.1
    assert not PadCropFlip(32, 4, MEAN, STD, flip=False).params(range(100))[:, 2].any()


@pytest.mark.parametrize("cls, write", [(CIFAR10DataModule, write_fake_cifar10),
                                        (CIFAR100DataModule, write_fake_cifar100)], ids=["cifar10", "cifar100"])
def test_cifar_on_device_batches_follow_the_default_loaders_order(cls, write, tmp_path: Path) -> None:
    data_dir = write(tmp_path, n_train=50, n_test=10)
    dm, ref = cls(str(data_dir), batch_size=8, num_workers=0, on_device=True), cls(str(data_dir), batch_size=8,
                                                                                    num_workers=0)
    batches, expected = list(dm.train_dataloader()), list(ref.train_dataloader())
    assert [len(y) for _, y in batches] == [8] * 5 + [5]
    for (x, y), (x_ref, y_ref) in zip(batches, expected):
        assert x.shape == x_ref.shape and x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(y, y_ref)  # the same samples in the same order (labels vary enough to tell)
        assert abs(float(x.mean()) - float(x_ref.mean())) < 0.5  # both normalised the same way
    assert dm.train_uint8()[0].dtype == torch.uint8 and dm.train_uint8()[0].shape == (45, 3, 32, 32)
    # the uint8 copy is the data set's own pixels
    index = dm.train_indices[3]
    assert torch.equal(dm.train_uint8()[0][3], v2.functional.pil_to_tensor(dm._train_source[index][0]))


def test_crops_differ_between_epochs_and_repeat_for_the_same_seed(cifar_dir: Path) -> None:
    def epoch(dm: CIFAR10DataModule, e: int) -> torch.Tensor:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(e)
        return torch.cat([x for x, _ in loader])

    a, b = (CIFAR10DataModule(str(cifar_dir), batch_size=16, num_workers=0, on_device=True) for _ in range(2))
    assert torch.equal(epoch(a, 0), epoch(b, 0)) and torch.equal(epoch(a, 3), epoch(b, 3))
    other_seed = CIFAR10DataModule(str(cifar_dir), batch_size=16, num_workers=0, on_device=True, seed=7)
    assert not torch.equal(epoch(a, 0), epoch(other_seed, 0))
    # the same sample in two epochs: a different crop or flip (order aside, compare sorted by index)
    dm = CIFAR10DataModule(str(cifar_dir), batch_size=16, num_workers=0, on_device=True)
    dataset = dm.device_train_dataset()
    x0 = dataset.__getitems__([(i, 1000 + i) for i in range(len(dataset))])[0]
    x1 = dataset.__getitems__([(i, 5000 + i) for i in range(len(dataset))])[0]
    changed = (x0 != x1).flatten(1).any(1)
    assert changed.float().mean() > 0.8


def test_ranks_read_disjoint_shares_that_cover_the_epoch(cifar_dir: Path) -> None:
    shares = []
    for rank in range(2):
        dm = CIFAR10DataModule(str(cifar_dir), batch_size=4, num_workers=0, on_device=True)
        cpu = SimpleNamespace(root_device=torch.device("cpu"))
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, strategy=cpu)
        dm.device_augment = Raw  # type: ignore[method-assign]
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(2)
        shares.append(served_indices(dm, list(loader)))
        assert shares[-1] == [i for i, _ in loader.sampler]  # served in the sampler's order
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(54))


def test_a_resumed_epoch_serves_the_remaining_batches(cifar_dir: Path) -> None:
    def loader_at(epoch: int, state: dict | None = None):
        dm = CIFAR10DataModule(str(cifar_dir), batch_size=8, num_workers=0, on_device=True)
        if state is not None:
            dm.load_state_dict(state)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return dm, loader

    _, full = loader_at(1)
    uninterrupted = list(full)
    dm, partial = loader_at(1)
    it = iter(partial)
    seen = [next(it) for _ in range(3)]
    state = dm.state_dict()
    _, resumed = loader_at(1, state)
    rest = list(resumed)
    assert len(seen) + len(rest) == len(uninterrupted) == 7
    for (x, y), (x_ref, y_ref) in zip(seen + rest, uninterrupted):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


class Recorder(LightningModule):
    """A linear classifier that records a fingerprint of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        self.seen: list[tuple[float, list[int]]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        assert x.dtype == torch.float32 and x.device == self.device
        self.seen.append((round(float(x.double().sum()), 6), y.tolist()))
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(cifar_dir: Path, root: Path, callbacks: list[Callback], ckpt: str | None = None,
         model: Recorder | None = None) -> Recorder:
    model = model if model is not None else Recorder()
    dm = CIFAR10DataModule(str(cifar_dir), batch_size=8, num_workers=0, on_device=True)
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                      default_root_dir=root, callbacks=callbacks)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return model


def test_a_fit_killed_mid_epoch_resumes_with_the_same_batches(cifar_dir: Path, tmp_path: Path) -> None:
    uninterrupted = _fit(cifar_dir, tmp_path / "a", []).seen
    assert len(uninterrupted) == 14 and uninterrupted[:7] != uninterrupted[7:]  # epoch 2: a new order and crops
    every_step = ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=1, save_last=True, save_top_k=0)
    model = Recorder()
    with pytest.raises(Killed):
        _fit(cifar_dir, tmp_path / "b", [every_step, Kill(at=10)], model=model)
    assert model.seen == uninterrupted[:10]
    resumed = _fit(cifar_dir, tmp_path / "c", [], ckpt=str(tmp_path / "b" / "last.ckpt")).seen
    assert resumed == uninterrupted[10:]


def test_tinyimagenet_on_device_decodes_once_and_crops_on_the_device(tiny_dir: Path) -> None:
    dm = TinyImageNetDataModule(str(tiny_dir), batch_size=5, num_workers=0, on_device=True)
    images, labels = dm.train_uint8()
    assert images.dtype == torch.uint8 and images.shape == (len(dm.train_indices), 3, 64, 64)
    assert torch.equal(images[0], dm._train_source[dm.train_indices[0]][0])
    batches = list(dm.train_dataloader())
    assert [x.shape for x, _ in batches][0] == (5, 3, 64, 64) and batches[0][0].dtype == torch.float32
    ref = TinyImageNetDataModule(str(tiny_dir), batch_size=5, num_workers=0)
    assert [y.tolist() for _, y in batches] == [y.tolist() for _, y in ref.train_dataloader()]
    x = torch.cat([x for x, _ in batches])
    plain = dm.device_augment().normalize(images.float()[[i for i, _ in dm.train_dataloader().sampler]])
    assert ((x - plain).abs().flatten(1).amax(1) > 1e-3).float().mean() > 0.8  # nearly every sample cropped


@pytest.mark.parametrize("cls", [DigitsDataModule, ImageNetDataModule])
def test_data_sets_without_it_refuse_on_device_in_one_line(cls) -> None:
    with pytest.raises(ConfigError, match=r"does not support on_device=True.*CIFAR10DataModule"):
        cls(num_workers=0, on_device=True)


def test_on_device_with_own_train_transforms_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot apply `train_transforms`"):
        CIFAR10DataModule(num_workers=0, on_device=True, train_transforms=v2.Identity())


def test_device_images_checks_its_inputs_and_serves_single_items() -> None:
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        DeviceImages(images.float(), torch.zeros(4), PadCropFlip(32, 4, MEAN, STD))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        DeviceImages(images, torch.zeros(3), PadCropFlip(32, 4, MEAN, STD))
    data = DeviceImages(images, torch.arange(4), PadCropFlip(32, 4, MEAN, STD), seed=3)
    image, label = data[2]
    assert image.shape == (3, 32, 32) and label == 2
    assert torch.equal(image, data[2][0]) and len(data) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_batches_are_the_cpu_batches(cifar_dir: Path) -> None:
    on_cpu, on_gpu = (CIFAR10DataModule(str(cifar_dir), batch_size=16, num_workers=0, on_device=True) for _ in "ab")
    on_gpu.device_train_dataset("cuda")
    gpu = list(on_gpu.train_dataloader())
    assert gpu[0][0].is_cuda and gpu[0][1].is_cuda
    for (x, y), (x_ref, y_ref) in zip(gpu, on_cpu.train_dataloader()):
        assert torch.equal(y.cpu(), y_ref)
        torch.testing.assert_close(x.cpu(), x_ref)
