"""``PARSECModule``: probabilistic NAS by importance-weighted empirical Bayes over a categorical prior.

Casale, Gordon, Fusi, "Probabilistic Neural Architecture Search", arXiv 2019, https://arxiv.org/abs/1902.05116
(no official code).

The prior ``p(α | π)`` is a product of independent categoricals, one per decision, with logits ``π``.
PARSEC maximises the marginal likelihood ``p(y | X, v, π) = Σ_α p(y | X, v, α) p(α | π)`` with a Monte Carlo
estimate over ``K`` archs ``α_k ~ p(α | π)``: with ``ℓ_k = log p(y | X, v, α_k)`` (minus the summed
cross-entropy of the batch) and importance weights ``w_k = softmax_k(ℓ_k)`` (detached),

- the weights ``v`` move along ``Σ_k w_k ∇_v ℓ_k`` on training batches (SGD, DARTS' settings);
- the prior ``π`` moves along ``Σ_k w_k ∇_π log p(α_k | π)`` on held-out validation batches (Adam), where
  ``∇_π log p(α | π) = onehot(α) − softmax(π)`` per decision: exact, no baseline needed.

**Memory of one architecture.** The weight step runs the ``K`` archs one after another, each forward
followed at once by its backward, so only one arch's activations are alive. ``w_k`` needs every
``ℓ_k``, so the gradient is accumulated like an online log-sum-exp (:class:`WeightedGradients`): arch
``k`` is back-propagated with the loss scaled by ``exp(ℓ_k − m)`` (``m`` the running maximum); when a
new maximum appears, the gradient accumulated so far is rescaled by ``exp(m_old − m_new)``; at the end
the gradient is divided by ``Σ_k exp(ℓ_k − m)``. The result is exactly ``Σ_k w_k ∇ CE_k`` with ``K``
forwards (not ``2K`` as a no-grad scoring pass first would need, which would also update BatchNorm
statistics twice), one gradient buffer, and all scales ≤ 1 (no overflow). The prior step needs no
weight gradient: ``K`` no-grad forwards.

**DDP.** Every rank draws the same archs from a generator seeded by ``(seed, step)``. The log-likelihood
of arch ``k`` is summed over the ranks (one scalar all-reduce) before its backward, so ``w_k`` belongs to
the global batch and is the same on every rank; DDP averages the weight gradients. ``π``'s gradient is
computed in closed form from the all-reduced log-likelihoods, identical on every rank with no gradient
sync: ``π`` never enters a forward, so DDP needs ``find_unused_parameters=True``
(``strategy: ddp_find_unused_parameters_true`` in the recipes).

**Which settings are the paper's.** The paper's text (arXiv 1902.05116) was not available to check these
defaults against; there is no official code. What the defaults are, and where they come from:

- Space: DARTS' cell space (:class:`~lightning_nas.spaces.DartsCellSpace`), with one op per (edge, op)
  (``op_weights="per_edge"``, as DARTS' supernet keeps weights: ``cnn/model_search.py``, one ``MixedOp`` per
  edge); the old layout, one op per (slot, op) shared by the slot's inputs, is ``op_weights="shared"``.
- Prior optimiser: DARTS' architecture optimiser, not a value from PARSEC: Adam, LR 3e-4, betas
  (0.5, 0.999), weight decay 1e-3 (quark0/darts ``cnn/architect.py`` and ``cnn/train_search.py``
  ``--arch_learning_rate``/``--arch_weight_decay``). Its decay pulls ``π`` towards the uniform prior.
- Weight optimiser: DARTS' search settings (``cnn/train_search.py``): SGD 0.025 cosine to 0.001, momentum
  0.9, weight decay 3e-4, gradient clip 5, batch 64, half of the training set for the weights.
- ``K = 8`` archs per step: our choice (DARTS samples no archs, so it is not a DARTS value). FP-NAS (Yan
  et al., CVPR 2021, §3.2) reports that PARSEC draws a fixed 16 archs per iteration in the DARTS space;
  set ``K: 16`` to follow that report (twice the compute per step).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_nas.arch import Arch
from lightning_nas.errors import MissingFileError, PrerequisiteError
from lightning_nas.modules.optim import build_optimizer, split_decay, warmup_schedule
from lightning_nas.modules.supernet import HeldOutArchSearch
from lightning_nas.search.output import publish_arch, run_folder
from lightning_nas.seeding import step_generator
from lightning_nas.spaces.base import SearchSpace

__all__ = ["PARSECModule", "WeightedGradients", "importance_weights", "load_prior", "sample_indices",
           "score_gradient"]

FINALS = ("argmax", "best_of_samples")
PRIOR_FORMAT = 1


# --- the estimator: pure functions --------------------------------------------------------
def sample_indices(logits: Sequence[Tensor], k: int, generator: torch.Generator) -> Tensor:
    """``k`` archs from the prior: a ``(k, decisions)`` tensor of value indices (CPU, float64 sampling)."""
    return torch.stack([torch.multinomial(torch.softmax(a.detach().double().cpu(), 0), k, replacement=True,
                                          generator=generator) for a in logits], dim=1)


def importance_weights(log_likelihoods: Tensor) -> Tensor:
    """``w_k = exp(ℓ_k) / Σ_j exp(ℓ_j)``, normalised in log space, detached (float64)."""
    return torch.softmax(log_likelihoods.detach().double(), 0)


def score_gradient(logits: Sequence[Tensor], indices: Tensor, weights: Tensor) -> list[Tensor]:
    """``Σ_k w_k ∇_π log p(α_k | π)`` per decision: ``Σ_k w_k onehot(α_k) − (Σ_k w_k) softmax(π)`` (float64, CPU)."""
    w = weights.detach().double().cpu()
    out = []
    for d, a in enumerate(logits):
        p = torch.softmax(a.detach().double().cpu(), 0)
        out.append(torch.zeros_like(p).index_add_(0, indices[:, d].cpu(), w) - w.sum() * p)
    return out


class WeightedGradients:
    """Accumulate ``Σ_k w_k ∇ loss_k`` in ``.grad`` one arch at a time, ``w = softmax(ℓ)`` (online log-sum-exp).

    Example::

        acc = WeightedGradients(net.parameters())
        for arch in archs:
            loss, ll = ...                        # ll: the arch's log-likelihood (a float)
            (acc.scale(ll) * loss).backward()     # scale before backward
        weights = acc.finish()                    # .grad now holds Σ_k w_k ∇ loss_k
    """

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        self.params = list(params)
        self.max, self.total, self.log_likelihoods = -math.inf, 0.0, []

    def _grads(self) -> list[Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def scale(self, log_likelihood: float) -> float:
        """The factor ``exp(ℓ − m)`` for this arch's loss; rescales what was accumulated if ``ℓ`` is a new maximum."""
        if log_likelihood > self.max:
            shrink = math.exp(self.max - log_likelihood) if self.total > 0 else 0.0
            if shrink != 1.0:
                for g in self._grads():
                    g.mul_(shrink)
            self.total *= shrink
            self.max = log_likelihood
        self.log_likelihoods.append(log_likelihood)
        factor = math.exp(log_likelihood - self.max)
        self.total += factor
        return factor

    def finish(self) -> Tensor:
        """Normalise the accumulated gradient; return the importance weights."""
        for g in self._grads():
            g.div_(self.total)
        return importance_weights(torch.tensor(self.log_likelihoods, dtype=torch.float64))


@contextmanager
def frozen_bn_statistics(module: nn.Module) -> Any:
    """Train-mode BatchNorm (batch statistics) that leaves the running statistics as they were."""
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


# --- the prior as a JSON file -------------------------------------------------------------
def save_prior(path: Path, space: SearchSpace, decisions: dict[str, list], logits: Sequence[Tensor]) -> Path:
    doc = {"space": space.space_name, "format": PRIOR_FORMAT, "decisions": decisions,
           "logits": {n: a.detach().double().cpu().tolist() for n, a in zip(decisions, logits)},
           "probabilities": {n: dict(zip(map(str, decisions[n]), torch.softmax(a.detach().double().cpu(), 0).tolist()))
                             for n, a in zip(decisions, logits)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def load_prior(path: str | Path, decisions: dict[str, list]) -> list[Tensor]:
    """The prior logits saved at ``path`` (``prior.json``), checked against ``decisions``.

    Raises:
        FileNotFoundError: the file does not exist (say how it is made).
        ValueError: the file is not a prior, or its decisions differ (naming the keys).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"prior_init file {str(path)!r} does not exist: it is the prior.json a PARSEC search "
                               "writes into its default_root_dir: run `lightning-nas fit --config "
                               "recipes/parsec/cifar10.yaml` first (it writes runs/parsec-cifar10/prior.json).")
    try:
        doc = json.loads(path.read_text())
        saved_logits, saved_values = doc["logits"], doc["decisions"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PrerequisiteError(f"prior_init file {str(path)!r} is not a PARSEC prior.json ({type(err).__name__}): "
                                "give the prior.json a PARSEC search wrote.") from None
    missing = [k for k in decisions if k not in saved_logits]
    extra = [k for k in saved_logits if k not in decisions]
    differ = [k for k in decisions if k in saved_logits and
              (list(saved_values.get(k, [])) != list(decisions[k]) or len(saved_logits[k]) != len(decisions[k]))]
    if missing or extra or differ:
        raise PrerequisiteError(f"prior_init {str(path)!r} does not match this space's decisions: missing "
                                f"{missing[:3]}, unknown {extra[:3]}, different values {differ[:3]}: give a prior "
                                "searched in a DartsCellSpace with the same ops and nodes per cell.")
    return [torch.tensor(saved_logits[k], dtype=torch.float32) for k in decisions]


class PARSECModule(HeldOutArchSearch):
    """Search any space with PARSEC: ``K`` archs per step from a learned categorical prior.

    The prior steps are :class:`~lightning_nas.modules.supernet.HeldOutArchSearch`'s held-out arch steps
    (``arch_steps`` counts them); the weight step's archs come from ``(seed, batch_step)``.

    Args:
        space: the supernet (e.g. :class:`~lightning_nas.spaces.DartsCellSpace`).
        K: archs sampled per step (weight and prior steps); 8 is our choice, not the paper's (see above).
        lr: weight LR (SGD, cosine to ``lr_min``; DARTS' search settings).
        lr_min: final weight LR.
        momentum: SGD momentum.
        weight_decay: decay on weight tensors (not BatchNorm/bias).
        grad_clip: gradient-norm clip of the weight step (DARTS: 5); ``0`` turns it off.
        prior_lr: Adam LR of ``π``. DARTS' architecture optimiser (Liu et al. 2019, ``cnn/architect.py``: Adam,
            LR 3e-4, betas (0.5, 0.999), weight decay 1e-3), not a value checked against PARSEC's text; its
            decay pulls ``π`` towards the uniform prior.
        prior_betas: Adam betas of ``π``.
        prior_weight_decay: Adam (L2) weight decay of ``π``.
        prior_update_every: one prior step after every this many weight steps.
        prior_init: a ``prior.json`` to start ``π`` from (transfer to a larger network or another data set).
        final: ``"argmax"`` (most probable value per decision) or ``"best_of_samples"`` (the best validation
            accuracy among ``final_samples`` archs drawn from the prior).
        final_samples: archs scored by ``best_of_samples``.
        seed: seed of the samples and of the validation batches' order.

    Raises:
        ValueError: an unknown ``final``, ``K`` or ``prior_update_every`` below 1, or a ``prior_init`` whose
            decisions differ from the space's.
        FileNotFoundError: a missing ``prior_init`` file.
    """

    checkpoint_key = "parsec"
    arch_role = "prior"

    def __init__(self, space: SearchSpace, K: int = 8, lr: float = 0.025, lr_min: float = 0.001,  # noqa: N803
                 momentum: float = 0.9, weight_decay: float = 3e-4, grad_clip: float = 5.0, prior_lr: float = 3e-4,
                 prior_betas: tuple[float, float] = (0.5, 0.999), prior_weight_decay: float = 1e-3,
                 prior_update_every: int = 1, prior_init: str | None = None, final: str = "argmax",
                 final_samples: int = 20, seed: int = 0) -> None:
        super().__init__(space, seed)
        if final not in FINALS or K < 1 or prior_update_every < 1 or final_samples < 1:
            raise ValueError(f"PARSECModule needs final in {FINALS}, K >= 1, prior_update_every >= 1 and "
                             f"final_samples >= 1; got {final!r}, {K}, {prior_update_every}, {final_samples}")
        self.save_hyperparameters(ignore=["space"])
        init = load_prior(prior_init, self._decisions) if prior_init else [torch.zeros(len(v))
                                                                           for v in self._decisions.values()]
        self.prior_logits = nn.ParameterList([nn.Parameter(a) for a in init])
        if prior_init:
            rank_zero_info(f"PARSEC: prior loaded from {prior_init} (entropy {self.prior_entropy():.2f} nats).")
        self.last_indices: Tensor | None = None  # the last weight step's archs, (K, decisions) value indices
        self.best_arch_path: Path | None = None

    # --- the prior --------------------------------------------------------------------------
    def distribution(self) -> nn.ParameterList:
        return self.prior_logits

    def _arch(self, index: Tensor) -> Arch:
        return {n: v[int(i)] for (n, v), i in zip(self._decisions.items(), index)}

    def prior_entropy(self) -> float:
        """The prior's entropy (nats, summed over the decisions)."""
        return float(sum(torch.distributions.Categorical(logits=a.detach().double()).entropy()
                         for a in self.prior_logits))

    def argmax_arch(self) -> Arch:
        """The most probable arch under the prior."""
        return self._arch(torch.stack([torch.argmax(a.detach()).cpu() for a in self.prior_logits]))

    def save_prior(self, path: str | Path) -> Path:
        """Write the prior (logits and probabilities per decision) as JSON, readable by ``prior_init``."""
        return save_prior(Path(path), self.space, self._decisions, list(self.prior_logits))

    # --- steps ------------------------------------------------------------------------------
    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        w_opt, _ = self.optimizers()
        gen = step_generator(self.hparams.seed, self.batch_step)
        indices = sample_indices(self.prior_logits, self.hparams.K, gen)
        w_opt.zero_grad(set_to_none=True)
        acc = WeightedGradients(self.space.parameters())
        losses = []
        for index in indices:
            self.space.activate(self._arch(index), validate=False)
            ce = F.cross_entropy(self.space(x), y, reduction="none")
            # the log-likelihood of the whole (all-rank) batch, so the importance weights agree on every rank
            factor = acc.scale(-float(self.global_sum(ce.detach().sum())))
            if factor > 0.0:  # the same on every rank: an underflowed weight skips its backward everywhere
                self.manual_backward(ce.mean() * factor)
            losses.append(ce.detach().mean())
            del ce  # a skipped arch's graph must not live on beside the next arch's (memory of one arch)
        weights = acc.finish().to(self.device, torch.float32)
        if self.hparams.grad_clip > 0:
            self.clip_gradients(w_opt, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        w_opt.step()
        self.lr_schedulers().step()
        self.last_indices = indices
        ess = 1.0 / float((weights.double() ** 2).sum())
        self.log_dict({"train/loss": (weights * torch.stack(losses)).sum(), "train/ess": ess}, prog_bar=True,
                      batch_size=len(y))
        if (batch_idx + 1) % self.hparams.prior_update_every == 0:
            self._prior_step()

    def _prior_step(self) -> None:
        with self.held_out_step() as ((x, y), gen):
            indices = sample_indices(self.prior_logits, self.hparams.K, gen)
            with torch.no_grad(), frozen_bn_statistics(self.space):
                lls = []
                for index in indices:
                    self.space.activate(self._arch(index), validate=False)
                    lls.append(-F.cross_entropy(self.space(x), y, reduction="sum"))
            lls = self.global_sum(torch.stack(lls))
            weights = importance_weights(lls)
            for a, g in zip(self.prior_logits, score_gradient(self.prior_logits, indices, weights)):
                a.grad = (-g).to(a.device, a.dtype)  # Adam minimises: ascend the marginal likelihood
        n = float(self.global_sum(torch.tensor(float(len(y)), device=lls.device)))
        marginal = (torch.logsumexp(lls.double(), 0) - math.log(len(lls))) / n  # log p̂(y | π) per example
        self.log_dict({"prior/log_marginal": marginal.float(), "prior/ess": 1.0 / float((weights ** 2).sum()),
                       "prior/entropy": self.prior_entropy()}, batch_size=len(y))

    # --- validation on the most probable arch -----------------------------------------------
    def validation_arch(self) -> Arch:
        return self.argmax_arch()

    # --- optimisation -----------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        weights = build_optimizer(split_decay(self.space, hp.weight_decay), "sgd", hp.lr, hp.momentum)
        prior = torch.optim.Adam(self.prior_logits.parameters(), lr=hp.prior_lr, betas=tuple(hp.prior_betas),
                                 weight_decay=hp.prior_weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        min_ratio = min(1.0, hp.lr_min / hp.lr) if hp.lr > 0 else 0.0
        schedule = warmup_schedule(weights, total, 0, "cosine", min_ratio=min_ratio)
        return [weights, prior], [{"scheduler": schedule, "interval": "step"}]

    # --- outputs ----------------------------------------------------------------------------
    def _run_dir(self) -> Path:
        return Path(self.trainer.default_root_dir)  # prior.json (latest) and best_arch.json land here

    @override
    def on_train_epoch_end(self) -> None:
        folder = self._run_dir()
        if self.trainer.is_global_zero:
            self.save_prior(folder / "prior.json")

    def score_archs(self, archs: Sequence[Arch]) -> list[float]:
        """Accuracy of each arch on the whole validation split (batch-statistics BatchNorm, as the prior steps)."""
        loader = self.trainer.datamodule.val_dataloader()
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        correct, total = [0.0] * len(archs), 0
        with torch.no_grad(), frozen_bn_statistics(self.space):
            for batch in loader:
                x, y = self.transfer_batch_to_device(batch, self.device, 0)
                total += len(y)
                for i, arch in enumerate(archs):
                    self.space.activate(arch, validate=False)
                    correct[i] += float((self.space(x).argmax(1) == y).sum())
        return [c / max(1, total) for c in correct]

    def final_arch(self) -> tuple[Arch, dict[str, Any]]:
        """The searched arch (``final``) and what to store beside it."""
        if self.hparams.final == "argmax":
            return self.argmax_arch(), {}
        gen = step_generator(self.hparams.seed + 2, 0)
        indices = sample_indices(self.prior_logits, self.hparams.final_samples, gen)
        archs = [self._arch(i) for i in indices]
        scores = self.score_archs(archs)
        best = max(range(len(archs)), key=scores.__getitem__)
        return archs[best], {"val_acc": scores[best], "sample_scores": scores}

    @override
    def on_fit_end(self) -> None:
        folder = self._run_dir()
        if not self.trainer.is_global_zero:
            return
        from lightning_nas.cost import macs, params

        was_training = self.space.training
        arch, meta = self.final_arch()
        self.space.train(was_training)
        self.save_prior(folder / "prior.json")
        meta = {"final": self.hparams.final, **meta, "macs": macs(self.space, arch),
                "params": params(self.space, arch), "probabilities": self.arch_probabilities()}
        self.best_arch_path = publish_arch(arch, self.space, run_folder(folder, "parsec"), folder,
                                           data=self.trainer.datamodule, **meta)
