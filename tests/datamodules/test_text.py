"""``TextDataModule`` on the shipped tiny corpus and on a folder in the Penn Treebank layout."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.datamodules.datasets import DataRootError
from lightning_nas.datamodules.text import TextDataModule, tiny_corpus_dir


def test_tiny_corpus_batches() -> None:
    dm = TextDataModule(batch_size=4, eval_batch_size=2, bptt=10)
    dm.setup("fit")
    assert (tiny_corpus_dir() / "train.txt").is_file()
    assert dm.num_classes == dm.vocab_size > 100 and {"<eos>", "<unk>"} <= set(dm.vocab)
    batches = list(dm.train_dataloader())
    x, y = batches[0]
    assert x.shape == (4, 10) and y.shape == (4, 10)
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    torch.testing.assert_close(batches[1][0][:, 0], y[:, -1])  # the streams continue across batches
    total = sum(b[0].numel() for b in batches)
    assert total == (len(dm.ids("train")) - 1) // 4 * 4
    assert next(iter(dm.val_dataloader()))[0].shape[0] == 2
    assert len(dm.test_dataloader()) > 0


def test_ptb_layout_unknown_words_and_missing_files(tmp_path) -> None:
    (tmp_path / "train.txt").write_text("a b c\nb c d\n")
    (tmp_path / "valid.txt").write_text("a z\n")
    dm = TextDataModule(str(tmp_path), batch_size=1, bptt=3)
    with pytest.raises(DataRootError, match="test.txt"):
        dm.setup("fit")
    (tmp_path / "test.txt").write_text("d a\n")
    assert dm.vocab_size == 6  # <unk>, <eos>, a, b, c, d
    assert dm.ids("valid").tolist() == [dm.vocab["a"], dm.vocab["<unk>"], dm.vocab["<eos>"]]
