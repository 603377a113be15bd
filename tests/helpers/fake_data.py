"""Tiny fake data sets written in the real on-disk formats, so the real datamodules read them.

Each ``write_fake_*`` function writes into ``root`` and returns the path to pass as the
datamodule's ``data_dir``. Images are a class-dependent colour plus noise, so a small
network can tell the classes apart if a test wants to show learning.

Example::

    data_dir = write_fake_cifar10(tmp_path, n_train=40, n_test=10)
    dm = CIFAR10DataModule(data_dir, num_workers=0)
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "class_color",
    "fake_image",
    "write_fake_cifar10",
    "write_fake_cifar100",
    "write_fake_imagenet",
    "write_fake_tinyimagenet",
]


def class_color(label: int, n_classes: int) -> np.ndarray:
    """An RGB colour (uint8, shape ``(3,)``) that differs clearly between classes."""
    hue = label / max(n_classes, 1)
    rgb = np.array([np.cos(2 * np.pi * (hue - k / 3)) for k in range(3)])
    return ((rgb + 1) * 0.45 * 255 + 12).astype(np.uint8)


def fake_image(label: int, n_classes: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image: the class colour plus noise and a brighter square."""
    image = np.tile(class_color(label, n_classes).astype(np.int16), (height, width, 1))
    image += rng.integers(-25, 26, size=image.shape, dtype=np.int16)
    side = max(height // 4, 1)
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    image[top : top + side, left : left + side] += 40
    return np.clip(image, 0, 255).astype(np.uint8)


def _labels(n: int, n_classes: int, rng: np.random.Generator) -> list[int]:
    """``n`` labels covering every class as evenly as possible, shuffled."""
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    return labels.tolist()


def _cifar_rows(labels: list[int], n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Images in CIFAR's row layout: ``(N, 3072)`` uint8, channel-major (R plane, G, B)."""
    images = [fake_image(label, n_classes, 32, 32, rng).transpose(2, 0, 1).reshape(-1) for label in labels]
    return np.stack(images) if images else np.zeros((0, 3072), np.uint8)


def _pickle(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_fake_cifar10(root: str | os.PathLike, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """Write a fake CIFAR-10 as ``root/cifar-10-batches-py`` in torchvision's format.

    The training images are spread over ``data_batch_1`` … ``data_batch_5``; ``test_batch``
    and ``batches.meta`` complete the set. (The MD5 sums differ from the official files.)

    Args:
        root: Folder to write into (created if needed).
        n_train: Number of training images.
        n_test: Number of test images.
        seed: Seed of labels and pixels.

    Returns:
        ``root``, the ``data_dir`` of ``CIFAR10DataModule``.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = _labels(n_train, 10, rng)
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        batch = [labels[j] for j in part]
        _pickle(_cifar10_batch(f"training batch {i} of 5", batch, rng), folder / f"data_batch_{i}")
    _pickle(_cifar10_batch("testing batch 1 of 1", _labels(n_test, 10, rng), rng), folder / "test_batch")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle({"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072}, folder / "batches.meta")
    return root


def _cifar10_batch(name: str, labels: list[int], rng: np.random.Generator) -> dict:
    return {
        "batch_label": name,
        "labels": labels,
        "data": _cifar_rows(labels, 10, rng),
        "filenames": [f"fake_{i}.png" for i in range(len(labels))],
    }


def write_fake_cifar100(root: str | os.PathLike, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write a fake CIFAR-100 as ``root/cifar-100-python`` (``train``, ``test``, ``meta``).

    Args:
        root: Folder to write into (created if needed).
        n_train: Number of training images.
        n_test: Number of test images.
        seed: Seed of labels and pixels.

    Returns:
        ``root``, the ``data_dir`` of ``CIFAR100DataModule``.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = _labels(n, 100, rng)
        entry = {
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [label // 5 for label in fine],
            "data": _cifar_rows(fine, 100, rng),
            "filenames": [f"fake_{i}.png" for i in range(n)],
        }
        _pickle(entry, folder / split)
    meta = {
        "fine_label_names": [f"class_{i}" for i in range(100)],
        "coarse_label_names": [f"superclass_{i}" for i in range(20)],
    }
    _pickle(meta, folder / "meta")
    return root


def _save_jpeg(image: np.ndarray, path: Path, grey: bool = False) -> None:
    pil = Image.fromarray(image)
    (pil.convert("L") if grey else pil).save(path, format="JPEG", quality=90)


def _wnids(n_classes: int) -> list[str]:
    return [f"n{10000000 + 7919 * i:08d}" for i in range(n_classes)]


def write_fake_tinyimagenet(
    root: str | os.PathLike, n_classes: int = 3, per_class: int = 10, val_per_class: int = 3, seed: int = 0
) -> Path:
    """Write a fake Tiny ImageNet as ``root/tiny-imagenet-200`` with real 64×64 JPEG files.

    Layout: ``wnids.txt``, ``words.txt``, ``train/<wnid>/images/<wnid>_<i>.JPEG`` with
    ``train/<wnid>/<wnid>_boxes.txt``, ``val/images/val_<i>.JPEG`` with the tab-separated
    ``val/val_annotations.txt`` (file, wnid, x, y, w, h), and unlabelled ``test/images/``.
    One training image per class is greyscale, as some real ones are.

    Args:
        root: Folder to write into (created if needed).
        n_classes: Number of classes (WordNet-style ids).
        per_class: Training images per class.
        val_per_class: Validation images per class.
        seed: Seed of the pixels.

    Returns:
        ``root`` (the datamodule also accepts ``root / "tiny-imagenet-200"``).
    """
    root, rng = Path(root), np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    wnids = _wnids(n_classes)
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\tfake class {i}\n" for i, w in enumerate(wnids)))
    for label, wnid in enumerate(wnids):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True, exist_ok=True)
        boxes = []
        for i in range(per_class):
            _save_jpeg(fake_image(label, n_classes, 64, 64, rng), images / f"{wnid}_{i}.JPEG", grey=i == 0)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    annotations = []
    for i, label in enumerate(np.repeat(np.arange(n_classes), val_per_class).tolist()):
        _save_jpeg(fake_image(label, n_classes, 64, 64, rng), base / "val" / "images" / f"val_{i}.JPEG")
        annotations.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(annotations))
    _save_jpeg(fake_image(0, n_classes, 64, 64, rng), base / "test" / "images" / "test_0.JPEG")
    return root


def write_fake_imagenet(
    root: str | os.PathLike,
    n_classes: int = 3,
    per_class: int = 6,
    val_per_class: int = 2,
    size: tuple[int, int] = (72, 96),
    seed: int = 0,
) -> Path:
    """Write a fake ImageNet as ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``.

    Images are real JPEG files of ``size`` (height, width), non-square like the real ones.
    As in the real data, one training file per data set is greyscale and one is a PNG under a
    ``.JPEG`` name, so both decoding paths (``decode_jpeg`` and the PIL fallback) run.

    Args:
        root: Folder to write into (created if needed).
        n_classes: Number of classes.
        per_class: Training images per class.
        val_per_class: Validation images per class.
        size: ``(height, width)`` of every image.
        seed: Seed of the pixels.

    Returns:
        ``root``, the ``data_dir`` of ``ImageNetDataModule``.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    height, width = size
    for split, n in (("train", per_class), ("val", val_per_class)):
        for label, wnid in enumerate(_wnids(n_classes)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = fake_image(label, n_classes, height, width, rng)
                path = folder / f"{wnid}_{i}.JPEG"
                if split == "train" and label == 0 and i == 1:
                    buffer = io.BytesIO()
                    Image.fromarray(image).save(buffer, format="PNG")
                    path.write_bytes(buffer.getvalue())
                else:
                    _save_jpeg(image, path, grey=split == "train" and label == 0 and i == 0)
    return root
