"""``LSTMController``: the NAS-RL controller, an LSTM that emits an architecture token by token.

Zoph & Le, "Neural Architecture Search with Reinforcement Learning", ICLR 2017,
https://arxiv.org/abs/1611.01578. A generic "sequence of categorical decisions" controller: a
*program* lists the steps (:class:`Token` for a categorical decision, :class:`Anchor` for the skip
connections of a layer), so one controller serves the CNN layer-token space and the RNN cell space.

- Each step runs one LSTM step; a :class:`Token`'s softmax is shared by every token of its ``kind``
  (``"fh"``, ``"filters"``, ...), so the same controller keeps working as the depth schedule adds layers.
- The embedding of the chosen token is the next step's input.
- An :class:`Anchor` for layer ``i`` draws one Bernoulli per earlier anchor ``j``:
  ``P(j → i) = sigmoid(vᵀ tanh(W_prev h_j + W_curr h_i))``; the next input is the mean of the
  chosen anchors' hidden states (ENAS's choice; zeros when none is chosen).
- Optional ENAS logit shaping: ``tanh_constant · tanh(logits / temperature)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.arch import Arch, ArchError, values_equal
from lightning_nas.spaces.tokens import Anchor, Program, Token

__all__ = ["ControllerSample", "LSTMController"]


@dataclass
class ControllerSample:
    """An arch with its log-probability and entropy under the controller (both with grad)."""

    arch: Arch
    log_prob: Tensor
    entropy: Tensor
    token_log_probs: dict[str, Tensor] = field(default_factory=dict)


class LSTMController(nn.Module):
    """A multi-layer LSTM that samples (or re-scores) archs following a program.

    Args:
        vocab: ``{kind: values}`` for every token kind the programs use (one softmax and embedding per kind).
        anchors: whether programs contain :class:`Anchor` steps (skip connections).
        hidden_size: LSTM units (paper: 35); also the embedding size.
        num_layers: LSTM layers (paper: 2).
        init_range: weights are initialised uniformly in ``±init_range`` (paper: 0.08).
        tanh_constant: ENAS logit shaping ``C · tanh(logits / T)`` (ENAS macro: 1.5); ``None`` disables it.
        temperature: the ``T`` of the shaping (or a plain softmax temperature without ``tanh_constant``).

    Example::

        ctrl = LSTMController({"op": ["a", "b"]})
        sample = ctrl.sample([Token("x", ("a", "b"), kind="op")], generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(sample.log_prob, ctrl.log_prob(sample.arch, program).log_prob)
    """

    def __init__(self, vocab: Mapping[str, Sequence[Any]], anchors: bool = False, hidden_size: int = 35,
                 num_layers: int = 2, init_range: float = 0.08, tanh_constant: float | None = None,
                 temperature: float | None = None) -> None:
        super().__init__()
        if not vocab and not anchors:
            raise ValueError("LSTMController needs at least one token kind or anchors=True")
        self.kinds = {k: tuple(v) for k, v in vocab.items()}
        self._kind_index = {k: i for i, k in enumerate(self.kinds)}
        offsets, total = {}, 1  # row 0 embeds the start token
        for k, values in self.kinds.items():
            offsets[k], total = total, total + len(values)
        self._offsets = offsets
        self.hidden_size, self.tanh_constant, self.temperature = hidden_size, tanh_constant, temperature
        self.embedding = nn.Embedding(total, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers)
        self.heads = nn.ModuleList(nn.Linear(hidden_size, len(v)) for v in self.kinds.values())
        self.has_anchors = anchors
        if anchors:
            self.w_prev = nn.Linear(hidden_size, hidden_size, bias=False)
            self.w_curr = nn.Linear(hidden_size, hidden_size, bias=False)
            self.v = nn.Linear(hidden_size, 1, bias=False)
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)

    def _shape(self, logits: Tensor) -> Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def sample(self, program: Program, generator: torch.Generator | None = None) -> ControllerSample:
        """Draw an arch (decisions from ``generator``, a CPU generator, so seeded ranks agree)."""
        return self.forward(program, None, generator)

    def log_prob(self, arch: Mapping[str, Any], program: Program) -> ControllerSample:
        """Re-score a given arch (teacher forcing): its log-probability and the entropy along its path.

        Raises:
            ArchError: when a value of ``arch`` is not allowed by the program.
        """
        return self.forward(program, arch, None)

    def forward(self, program: Program, arch: Mapping[str, Any] | None = None,
                generator: torch.Generator | None = None) -> ControllerSample:
        device = self.embedding.weight.device
        x = self.embedding(torch.zeros(1, 1, dtype=torch.long, device=device))
        state: Any = None
        chosen: Arch = {}
        token_lp: dict[str, Tensor] = {}
        entropy = self.embedding.weight.new_zeros(())
        anchors: list[Tensor] = []
        keys: list[Tensor] = []
        for step in program:
            out, state = self.lstm(x, state)
            h = out[0, 0]
            if isinstance(step, Token):
                x, ent = self._token(step, h, arch, generator, chosen, token_lp)
            else:
                x, ent = self._anchor(step, h, anchors, keys, arch, generator, chosen, token_lp)
            entropy = entropy + ent
        log_prob = torch.stack(list(token_lp.values())).sum() if token_lp else entropy.new_zeros(())
        return ControllerSample(chosen, log_prob, entropy, token_lp)

    def _token(self, step: Token, h: Tensor, arch: Mapping[str, Any] | None, generator: torch.Generator | None,
               chosen: Arch, token_lp: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if step.key not in self._kind_index:
            raise KeyError(f"token kind {step.key!r} is not in the controller's vocabulary {list(self.kinds)}")
        log_p = F.log_softmax(self._shape(self.heads[self._kind_index[step.key]](h)), -1)
        if arch is None:
            cdf = log_p.detach().double().exp().cumsum(0).cpu()
            u = torch.rand((), generator=generator, dtype=torch.float64)
            index = min(int(torch.searchsorted(cdf, u * cdf[-1])), len(step.values) - 1)
        else:
            index = _index_of(arch, step.name, step.values)
        chosen[step.name] = step.values[index]
        token_lp[step.name] = log_p[index]
        row = torch.tensor([[self._offsets[step.key] + index]], device=h.device)
        return self.embedding(row), -(log_p.exp() * log_p).sum()

    def _anchor(self, step: Anchor, h: Tensor, anchors: list[Tensor], keys: list[Tensor],
                arch: Mapping[str, Any] | None, generator: torch.Generator | None, chosen: Arch,
                token_lp: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if not self.has_anchors:
            raise ValueError("this program has Anchor steps: build the LSTMController with anchors=True")
        n = len(step.names)
        if n > len(anchors):
            raise ValueError(f"anchor with {n} skip decisions but only {len(anchors)} earlier anchors")
        entropy = h.new_zeros(())
        x = h.new_zeros(1, 1, self.hidden_size)
        if n:
            logits = self._shape(self.v(torch.tanh(torch.stack(keys[:n]) + self.w_curr(h))).squeeze(-1))
            if arch is None:
                u = torch.rand(n, generator=generator, dtype=torch.float64)
                bits = (u < torch.sigmoid(logits.detach().double()).cpu()).to(logits.dtype).to(h.device)
            else:
                bits = torch.tensor([float(_index_of(arch, name, (0, 1))) for name in step.names], device=h.device)
            lp = bits * F.logsigmoid(logits) + (1 - bits) * F.logsigmoid(-logits)
            p = torch.sigmoid(logits)
            entropy = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).sum()
            for name, bit, lp_j in zip(step.names, bits.tolist(), lp):
                chosen[name], token_lp[name] = int(bit), lp_j
            x = (bits @ torch.stack(anchors[:n]) / (1 + bits.sum())).view(1, 1, -1)
        anchors.append(h)
        keys.append(self.w_prev(h))
        return x, entropy


def _index_of(arch: Mapping[str, Any], name: str, values: Sequence[Any]) -> int:
    if name not in arch:
        raise ArchError(f"arch lacks decision {name!r}: give one of {list(values)}")
    value = int(arch[name]) if isinstance(arch[name], bool) else arch[name]
    for i, v in enumerate(values):
        if values_equal(value, v):
            return i
    raise ArchError(f"Invalid value {arch[name]!r} for decision {name!r}: allowed values are {list(values)}.")
