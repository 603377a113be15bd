"""``RNNCellSpace``: NAS-RL's recurrent cell search space, and the language-model children it builds.

Zoph & Le, "Neural Architecture Search with Reinforcement Learning", ICLR 2017,
https://arxiv.org/abs/1611.01578, section 3.4. A cell is a full binary tree with ``base`` leaves
(paper: 8). Leaf ``i`` computes ``act(combine(W_i x_t, U_i h_{t-1}))``, an inner node
``act(combine(left, right))``; each node's ``combine`` is ``add`` or ``elem_mult`` and its ``act``
``identity``/``tanh``/``sigmoid``/``relu``. The root is ``h_t``. Cell inject: the output of node
``inject.node`` becomes ``inject.activation(inject.combine(output, c_{t-1}))`` before its parent
reads it; ``c_t`` is the pre-activation of node ``cell.node``. Nodes are numbered leaves first, then
level by level (for base 2: leaves 0, 1 and root 2, as in the paper's figure 5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.spaces.token_space import TokenSpace
from lightning_nas.spaces.tokens import Token

__all__ = ["ACTIVATIONS", "COMBINATIONS", "NASCell", "RNNCellSpace", "RNNLanguageModel", "tree_children"]

COMBINATIONS = ("add", "elem_mult")
ACTIVATIONS = ("identity", "tanh", "sigmoid", "relu")
_ACT = {"identity": lambda t: t, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}


def _combine(how: str, a: Tensor, b: Tensor) -> Tensor:
    return a + b if how == "add" else a * b


def tree_children(base: int) -> dict[int, tuple[int, int]]:
    """``{inner node: (left, right)}`` of the full binary tree with ``base`` leaves (a power of 2)."""
    if base < 2 or base & (base - 1):
        raise ValueError(f"the cell tree needs a power-of-2 number of leaves (base), got {base}")
    level, nxt, children = list(range(base)), base, {}
    while len(level) > 1:
        parents = []
        for a, b in zip(level[::2], level[1::2]):
            children[nxt] = (a, b)
            parents.append(nxt)
            nxt += 1
        level = parents
    return children


class NASCell(nn.Module):
    """One searched recurrent cell; ``forward(x_proj_t, (h, c)) -> (h, c)`` for one time step.

    Args:
        arch: the cell's decisions (see :class:`RNNCellSpace`).
        input_size: size of ``x_t``.
        hidden_size: size of ``h_t`` and ``c_t``.
        base: number of leaves.
    """

    def __init__(self, arch: Mapping[str, Any], input_size: int, hidden_size: int, base: int = 8) -> None:
        super().__init__()
        self.base, self.hidden_size, self.arch = base, hidden_size, dict(arch)
        self.children_of = tree_children(base)
        self.root = 2 * base - 2
        self.wx = nn.Linear(input_size, base * hidden_size)
        self.wh = nn.Linear(hidden_size, base * hidden_size, bias=False)
        self.combine = [str(arch[f"node{k}.combine"]) for k in range(self.root + 1)]
        self.act = [str(arch[f"node{k}.activation"]) for k in range(self.root + 1)]
        self.inject = (int(arch["inject.node"]), str(arch["inject.combine"]), str(arch["inject.activation"]))
        self.cell_node = int(arch["cell.node"])

    def project_inputs(self, x: Tensor) -> Tensor:
        """``W x`` for every leaf and every time step at once (``(..., base * hidden)``)."""
        return self.wx(x)

    def forward(self, x_proj: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        xs, hs = x_proj.chunk(self.base, -1), self.wh(h).chunk(self.base, -1)
        out: list[Tensor] = []
        c_new = c
        for k in range(self.root + 1):
            a, b = (xs[k], hs[k]) if k < self.base else (out[self.children_of[k][0]], out[self.children_of[k][1]])
            pre = _combine(self.combine[k], a, b)
            value = _ACT[self.act[k]](pre)
            if k == self.inject[0]:
                value = _ACT[self.inject[2]](_combine(self.inject[1], value, c))
            if k == self.cell_node:
                c_new = pre
            out.append(value)
        return out[self.root], c_new


class RNNLanguageModel(nn.Module):
    """A word-level language model around searched cells: embedding, cells, dropout, tied decoder.

    ``forward(tokens (B, T), state) -> (logits (B, T, V), state)``; ``state`` carries over BPTT batches.

    Args:
        arch: the cell's decisions.
        vocab_size: number of words.
        hidden_size: embedding and cell size (equal, so the decoder is tied to the embedding).
        num_layers: stacked cells.
        dropout: dropout on the embeddings and cell outputs.
        base: leaves of the cell tree.
    """

    def __init__(self, arch: Mapping[str, Any], vocab_size: int, hidden_size: int = 200, num_layers: int = 1,
                 dropout: float = 0.2, base: int = 8) -> None:
        super().__init__()
        self.arch = dict(arch)
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.cells = nn.ModuleList(NASCell(arch, hidden_size, hidden_size, base) for _ in range(num_layers))
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.decoder.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def init_state(self, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        zeros = self.embedding.weight.new_zeros(batch_size, self.embedding.embedding_dim)
        return [(zeros, zeros) for _ in self.cells]

    def forward(self, tokens: Tensor, state: list[tuple[Tensor, Tensor]] | None = None
                ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        state = state or self.init_state(tokens.shape[0])
        x = self.drop(self.embedding(tokens))
        new_state = []
        for cell, (h, c) in zip(self.cells, state):
            proj, outs = cell.project_inputs(x), []
            for t in range(tokens.shape[1]):
                h, c = cell(proj[:, t], (h, c))
                outs.append(h)
            x = self.drop(torch.stack(outs, 1))
            new_state.append((h, c))
        return self.decoder(x), new_state


class RNNCellSpace(TokenSpace):
    """NAS-RL's recurrent-cell space (no weights: children are language models trained from scratch).

    A :class:`~lightning_nas.spaces.token_space.TokenSpace`: decisions, sampling, validation and ``export`` come
    from its controller program.

    Args:
        base: leaves of the cell tree (paper: 8).
        num_classes: the vocabulary size (the LM's output classes; linked from ``TextDataModule``).
        hidden_size: embedding and cell size of the children.
        num_layers: stacked cells in a child.
        dropout: children's dropout.
    """

    supports_depth = False
    task = "text"

    def __init__(self, base: int = 8, num_classes: int = 10000, hidden_size: int = 200, num_layers: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.children_of = tree_children(base)
        self.base, self.num_classes, self.hidden_size = base, num_classes, hidden_size
        self.num_layers, self.dropout = num_layers, dropout

    def controller_program(self, num_layers: int | None = None) -> list[Token]:
        """Tree nodes in order (combine, activation), then cell inject (combine, activation), then the cell indices."""
        nodes = tuple(range(2 * self.base - 2))
        program = []
        for k in range(2 * self.base - 1):
            program += [Token(f"node{k}.combine", COMBINATIONS, "combine"),
                        Token(f"node{k}.activation", ACTIVATIONS, "activation")]
        return program + [Token("inject.combine", COMBINATIONS, "combine"),
                          Token("inject.activation", ACTIVATIONS, "activation"),
                          Token("inject.node", nodes, "node"), Token("cell.node", nodes, "node")]

    def controller_vocab(self) -> dict[str, tuple[Any, ...]]:
        return {"combine": COMBINATIONS, "activation": ACTIVATIONS, "node": tuple(range(2 * self.base - 2))}

    def build_child(self, arch: Mapping[str, Any]) -> nn.Module:
        """The language model of ``arch`` (already checked), with fresh weights."""
        return RNNLanguageModel(arch, self.num_classes, self.hidden_size, self.num_layers, self.dropout, self.base)
