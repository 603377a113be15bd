"""``TextDataModule``: a word-level language-modelling corpus in the Penn Treebank layout, as BPTT batches.

``data_dir`` holds ``train.txt``, ``valid.txt`` and ``test.txt`` (one sentence per line, words split
by spaces, ``<eos>`` appended to each line). The vocabulary is read from ``train.txt`` (plus
``<unk>``, which also stands for words of the other splits not seen in training). With
``data_dir=None`` a small corpus shipped with the package is used, so recipes and tests run offline.

Batches are stateful-BPTT chunks: the token stream is cut into ``batch_size`` columns and batch
``i`` is ``(x, y)`` of shape ``(batch_size, bptt)`` with ``y`` shifted by one word, in order, so a
model can carry its hidden state from one batch to the next. ``val_dataloader`` is ``valid.txt``
(the split the NAS-RL search scores on); ``test.txt`` is never searched on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_nas.datamodules.datasets import DataRootError

__all__ = ["BPTTBatches", "TextDataModule", "tiny_corpus_dir"]

SPLITS = ("train.txt", "valid.txt", "test.txt")


def tiny_corpus_dir() -> Path:
    """The folder of the small English corpus shipped with the package."""
    return Path(__file__).resolve().parent.parent / "data" / "tiny_corpus"


def read_words(path: Path) -> list[str]:
    """The words of a file, ``<eos>`` after every non-empty line."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            words.extend(line.split() + ["<eos>"])
    return words


class BPTTBatches(Dataset):
    """Item ``i`` is the ``i``-th ``(x, y)`` BPTT chunk, each ``(batch_size, bptt)`` (the last may be shorter).

    Args:
        ids: the token stream.
        batch_size: parallel streams (columns).
        bptt: time steps per chunk.
    """

    def __init__(self, ids: Tensor, batch_size: int, bptt: int) -> None:
        n = (len(ids) - 1) // batch_size
        if n < 1:
            raise ValueError(f"{len(ids)} tokens are too few for batch_size={batch_size}")
        self.data = ids[: n * batch_size + 1]
        self.x = self.data[:-1].view(batch_size, n)
        self.y = self.data[1:].view(batch_size, n)
        self.bptt = bptt

    def __len__(self) -> int:
        return (self.x.shape[1] + self.bptt - 1) // self.bptt

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = slice(i * self.bptt, (i + 1) * self.bptt)
        return self.x[:, s], self.y[:, s]


class TextDataModule(LightningDataModule):
    """A word-level corpus (Penn Treebank layout) as BPTT batches.

    Args:
        data_dir: folder with ``train.txt``/``valid.txt``/``test.txt``; ``None`` uses the shipped tiny corpus.
        batch_size: parallel streams of the training batches (PTB convention: 20).
        eval_batch_size: parallel streams of the validation and test batches.
        bptt: time steps per batch (PTB convention: 35).

    Raises:
        DataRootError: when ``data_dir`` lacks one of the three files.
    """

    def __init__(self, data_dir: str | None = None, batch_size: int = 20, eval_batch_size: int = 10,
                 bptt: int = 35) -> None:
        super().__init__()
        if min(batch_size, eval_batch_size, bptt) < 1:
            raise ValueError("TextDataModule needs batch_size, eval_batch_size and bptt >= 1")
        self.data_dir = Path(data_dir) if data_dir is not None else tiny_corpus_dir()
        self.batch_size, self.eval_batch_size, self.bptt = batch_size, eval_batch_size, bptt
        self._vocab: dict[str, int] | None = None
        self._ids: dict[str, Tensor] = {}

    def check_data_root(self) -> None:
        """Raise :class:`DataRootError` naming the folder and the missing files."""
        missing = [f for f in SPLITS if not (self.data_dir / f).is_file()]
        if missing:
            raise DataRootError(
                f"{self.data_dir} lacks {', '.join(missing)}: TextDataModule expects the Penn Treebank layout "
                "(train.txt, valid.txt, test.txt; e.g. the files of the PTB language-modelling data from Mikolov's "
                "simple-examples archive, ptb.train.txt renamed to train.txt, ...), or "
                "`--data.init_args.data_dir=null` for the tiny corpus shipped with lightning_nas."
            )

    @property
    def vocab(self) -> dict[str, int]:
        """``{word: id}`` from ``train.txt`` in order of first appearance, ``<unk>`` and ``<eos>`` included."""
        if self._vocab is None:
            self.check_data_root()
            words = ["<unk>", "<eos>", *read_words(self.data_dir / "train.txt")]
            self._vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def num_classes(self) -> int:
        """The vocabulary size: a language model's output classes (the CLI links it into the model)."""
        return self.vocab_size

    def ids(self, split: str) -> Tensor:
        """The token ids of ``"train"``, ``"valid"`` or ``"test"``."""
        if split not in self._ids:
            vocab, unk = self.vocab, self.vocab["<unk>"]
            words = read_words(self.data_dir / f"{split}.txt")
            self._ids[split] = torch.tensor([vocab.get(w, unk) for w in words], dtype=torch.long)
        return self._ids[split]

    def prepare_data(self) -> None:
        self.check_data_root()

    def setup(self, stage: str | None = None) -> None:
        self.check_data_root()

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        # each item is already a whole (batch, bptt) chunk; order matters (hidden state carries over)
        return DataLoader(BPTTBatches(self.ids(split), batch_size, self.bptt), batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)
