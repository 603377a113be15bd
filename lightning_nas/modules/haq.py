"""``HAQModule``: hardware-aware automated mixed-precision quantization of a trained network.

Wang, Liu, Lin, Lin, Han, "HAQ: Hardware-Aware Automated Quantization with Mixed Precision", CVPR 2019,
https://arxiv.org/abs/1811.08886 (official code: mit-han-lab/haq).

Every conv and linear layer of a trained network becomes a fake-quantized layer. A :class:`DDPG` agent
walks the layers first → last, choosing weight bits then activation bits for each (a continuous action
``a ∈ [0, 1]`` → ``round(b_min − 0.5 + a·(b_max − b_min + 1))``); the policy is then pushed under the
hardware budget (:func:`~lightning_nas.cost.hardware.fit_budget`), the network is quantized with it,
calibrated, fine-tuned and scored; reward ``0.1 × (acc_quant − acc_float)`` (accuracies in %) for every
transition of the episode. The float weights are restored after every episode.

The official code's facts and where ours differs: :class:`HAQModule`.

Lightning design: the trainer's training loop is the episode clock. Each training step runs one whole
episode (the batch it is given is not used: episodes score every policy on the *same* cached calibration,
fine-tune and validation batches, :class:`~lightning_nas.modules.haq_episode.EpisodeBatches`). The agent's own
Adam optimizers and the per-episode SGD fine-tune are not Lightning's (manual optimization); the one optimizer
Lightning manages is the episode clock, a parameter-free optimizer the module steps once per episode, so
Lightning's own ``global_step`` counts episodes and ``max_steps``, ``ModelCheckpoint(every_n_train_steps=...)``
and loggers count them too, without touching its loop counters. The module's ``episode`` (in its checkpoint)
drives the search (noise schedule, stopping after ``episodes``, the progress bar's ``haq/episode``);
``haq/finetune_s`` in the progress bar is the episode's fine-tune time. Epochs are passes over the datamodule's
training loader and mean nothing here: the recipes set ``max_epochs: -1`` and the module stops the fit. Checkpoints
carry the agent (networks, targets, optimizers, replay buffer, RNG), the episode counter and the best policy, so a
resumed run continues the search. Single device only: episodes are sequential, so DDP would only repeat them (a
clear error says so). The episode's pieces live in :mod:`~lightning_nas.modules.haq_episode`, the results
(``best_policy.json``, the comparison with fixed precisions) in :mod:`~lightning_nas.modules.haq_report`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_nas.controllers.ddpg import DDPG
from lightning_nas.cost.hardware import (
    BitSerialAccelerator,
    HardwareModel,
    cost_lookup,
    fit_budget,
    policy_cost,
    profile_layers,
)
from lightning_nas.modules.haq_episode import Batch, EpisodeBatches, layer_states, rollout
from lightning_nas.modules.haq_report import write_results
from lightning_nas.modules.quantized import (
    QuantizedNetwork,
    apply_policy,
    calibrate,
    finetune,
    load_network,
    load_policy,
    quant_layers,
    quantize_network,
    top1,
)
from lightning_nas.nn.quantize import FLOAT_BITS, QUANTIZERS

__all__ = ["HAQModule", "QuantizedNetwork", "apply_policy", "load_network", "load_policy", "quantize_network"]


def _check_scoring(quantizer: str, finetune_batches: int | str, reward_split: str) -> None:
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer={quantizer!r} must be one of {QUANTIZERS}")
    if finetune_batches != "epoch" and not (isinstance(finetune_batches, int) and finetune_batches >= 0):
        raise ValueError(f"finetune_batches={finetune_batches!r} must be a number of batches (>= 0) or 'epoch'")
    if reward_split not in ("finetune", "val"):
        raise ValueError(f"reward_split={reward_split!r} must be 'finetune' or 'val'")
    if reward_split == "finetune" and finetune_batches == 0:
        raise ValueError("reward_split='finetune' scores the per-episode fine-tune, but finetune_batches=0: give "
                         "finetune_batches ('epoch' or a number) or reward_split='val'")


# --- the search ------------------------------------------------------------------------------------------
class HAQModule(LightningModule):
    """Search a mixed-precision policy for a trained network under a hardware budget (HAQ).

    What the official code does, and where (mit-han-lab/haq):

    - ``rl_quantize.py`` runs ``LinearQuantizeEnv`` with ``finetune_flag=True``, ``finetune_epoch=1``,
      ``finetune_lr=1e-3``, ``train_size=20000``, ``val_size=10000`` (both carved out of the training set).
    - ``lib/env/linear_quantize_env.py``, ``step``: after the last action, ``_final_action_wall`` (the budget walk),
      ``calibrate`` on one training batch, then ``_finetune`` for one epoch over the 20k split with SGD (lr 1e-3,
      momentum 0.9, weight decay 4e-5: ``reset`` makes a fresh optimizer each episode, replacing the 1e-5 one of
      ``__init__``); the accuracy it returns, and the reward uses, is the running top-1 of that fine-tune epoch
      (train mode, measured batch by batch while training). The float accuracy it is compared with
      (``org_acc``) is the float network's eval-mode top-1 on the same 20k split (``_validate(self.train_loader)``),
      not on the 10k validation split, which a search with ``finetune_flag=True`` never reads.
    - ``_keep_first_last_layer``: the first and last layer at 8 bits, except the first layer's input, which is
      not quantized (``a_bit = -1``: "input image is already 8 bit").
    - ``lib/utils/quantize_utils.py``, ``QModule``: the linear quantizer of our ``quantizer="haq"``
      (:mod:`lightning_nas.nn.quantize`): per-tensor symmetric weights at ``max|w|`` from 5 bits, KL threshold
      below; activations clipped at ``min(6, max|x|)`` of the calibration batch, KL threshold below 5 bits.

    Here, by default (the official behaviour): ``quantizer="haq"``, ``calib_batches=1``,
    ``finetune_batches="epoch"`` (one pass over the datamodule's training part; recipes give the batches of 20k
    images), ``reward_split="finetune"`` (the fine-tune's running top-1 against the float network on the same
    batches), the first layer's input in float. Deliberate differences: the calibration and fine-tune batches are
    the datamodule's fixed ``calibration_dataloader`` (the same images and augmentation every episode, so rewards
    compare policies, not batches; the official loader reshuffles); the official activation range is an
    ``nn.Parameter`` that the fine-tune also trains (PACT-style gradient), ours stays at its calibrated value; the
    official env applies ``_keep_first_last_layer`` only inside the budget walk, so a policy already under budget
    keeps the agent's first/last bits, while ours pins them always (``keep_first_last``), pricing the float first
    input at ``max_bits`` (the official table lookup with ``-1`` bits reads the 7-bit column). Named alternatives:
    ``quantizer="ema"`` (ours: per-channel weights, moving-average activation ranges), ``reward_split="val"``
    (accuracy after the fine-tune on held-out validation batches, against the float network on them).

    Args:
        model: a trained network to quantize (Python use and tests), or
        checkpoint: a ClassificationModule checkpoint to quantize (``torch.load(weights_only=True)``).
        network: or a torchvision model name, with ``weights``.
        weights: a local state-dict file for ``network``.
        allow_untrained: allow ``network`` without ``weights`` (a random network: smoke tests only).
        num_classes: linked from the datamodule.
        input_size: linked from the datamodule (informational: shapes come from a real batch).
        hardware: the cost model (default: :class:`BitSerialAccelerator` ``edge`` latency).
        budget_ratio: budget as a fraction of the all-``max_bits`` cost.
        min_bits: lowest bit-width.
        max_bits: highest bit-width.
        episodes: episodes to run (official: 600).
        warmup: episodes of random actions (official: 20).
        quantizer: ``"haq"`` (the official linear quantizer) or ``"ema"`` (ours); see
            :mod:`lightning_nas.nn.quantize`.
        calib_batches: training batches that calibrate the ranges of each policy (official: 1).
        finetune_batches: SGD steps (lr ``finetune_lr``, momentum 0.9) per episode on fixed training batches;
            ``"epoch"``: one pass over the training part (official: one epoch over 20k images); 0: none.
        finetune_lr: fine-tune learning rate (official: 1e-3).
        finetune_weight_decay: fine-tune weight decay (official: 4e-5).
        reward_split: ``"finetune"`` (official): the reward's accuracy is the fine-tune's running top-1, against
            the float network's top-1 on the same batches; ``"val"``: the accuracy after the fine-tune on the
            held-out ``val_batches``, against the float network's on them.
        val_batches: held-out batches for ``reward_split="val"`` and the fit-end comparison (``None``: the whole
            validation split).
        cache_batches: keep the calibration/validation batches in memory instead of reloading them.
        reward_scale: λ of the reward ``λ · (acc_quant − acc_float)`` in % (official: 0.1).
        actor_lr: DDPG actor learning rate.
        critic_lr: DDPG critic learning rate.
        tau: DDPG soft target update rate.
        discount: DDPG discount.
        agent_batch_size: DDPG batch size.
        replay_per_layer: replay capacity per layer (official: 128 × layers).
        hidden: DDPG hidden width.
        init_noise: exploration σ at the end of warm-up.
        noise_decay: σ's decay per episode.
        seed: the agent's seed.
        output_dir: where ``best_policy.json`` goes (default: the trainer's ``default_root_dir``).
        compare: evaluate uniform 8-bit and 4-bit next to the best policy at fit end.
        keep_first_last: keep the first and last layer at ``max_bits`` (official: 8/8) and the first layer's
            input in float (official: bits −1), priced at ``max_bits``; the agent still acts for them (its
            transitions are learned from), its choice is overridden.
    """

    def __init__(
        self, model: nn.Module | None = None, checkpoint: str | None = None, network: str | None = None,
        weights: str | None = None, allow_untrained: bool = False, num_classes: int = 10, input_size: int = 32,
        hardware: HardwareModel | None = None, budget_ratio: float = 0.5, min_bits: int = 2, max_bits: int = 8,
        episodes: int = 600, warmup: int = 20, quantizer: Literal["haq", "ema"] = "haq", calib_batches: int = 1,
        finetune_batches: int | Literal["epoch"] = "epoch", finetune_lr: float = 1e-3,
        finetune_weight_decay: float = 4e-5, reward_split: Literal["finetune", "val"] = "finetune",
        val_batches: int | None = 10, cache_batches: bool = True,
        reward_scale: float = 0.1, actor_lr: float = 1e-4, critic_lr: float = 1e-3, tau: float = 0.01,
        discount: float = 1.0, agent_batch_size: int = 64, replay_per_layer: int = 128, hidden: int = 300,
        init_noise: float = 0.5, noise_decay: float = 0.99, seed: int = 0, output_dir: str | None = None,
        compare: bool = True, keep_first_last: bool = True,
    ) -> None:
        super().__init__()
        if not 2 <= min_bits <= max_bits < FLOAT_BITS:
            raise ValueError(f"need 2 <= min_bits <= max_bits < {FLOAT_BITS}, got min_bits={min_bits}, "
                             f"max_bits={max_bits}")
        if not 0 < budget_ratio <= 1:
            raise ValueError(f"budget_ratio={budget_ratio} must be in (0, 1]: a fraction of the all-{max_bits}-bit "
                             "cost")
        _check_scoring(quantizer, finetune_batches, reward_split)
        self.save_hyperparameters(ignore=["model", "hardware"])
        self.automatic_optimization = False
        self.hardware = hardware if hardware is not None else BitSerialAccelerator("edge")
        self.net = quantize_network(load_network(checkpoint, network, weights, num_classes, allow_untrained, model))
        self.episode = 0
        self.best: dict[str, Any] | None = None
        self.agent: DDPG | None = None
        self._pending: dict[str, Any] | None = None
        self._ready = False
        self.finetune_s = 0.0
        self.comparison: dict[str, dict[str, float]] | None = None
        # the episode clock: the one optimizer Lightning steps (once per episode), so `global_step` counts episodes
        self._clock = torch.zeros(0, requires_grad=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    # --- preparation ------------------------------------------------------------------------------------
    @property
    def finetunes(self) -> bool:
        return self.hparams.finetune_batches == "epoch" or self.hparams.finetune_batches > 0

    def _prepare(self) -> None:
        hp = self.hparams
        if self.trainer.world_size > 1:
            raise ValueError("HAQModule runs on one device: its episodes are sequential (set trainer.devices=1)")
        self.batches = EpisodeBatches(self.trainer.datamodule, hp.calib_batches, hp.finetune_batches,
                                      hp.val_batches, hp.cache_batches)
        sample = next(iter(self.batches("calib")))[0].to(self.device)
        self._float_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.layers = profile_layers(self.net, sample)
        self.layer_names = [p.name for p in self.layers]
        qlayers = quant_layers(self.net)
        for p in self.layers:
            qlayers[p.name].act_signed, qlayers[p.name].quantizer = p.act_signed, hp.quantizer
        self.cost_table = cost_lookup(self.hardware, self.layers, hp.max_bits)
        self.full_cost = policy_cost(self.cost_table, [(hp.max_bits, hp.max_bits)] * len(self.layers))
        self.target = hp.budget_ratio * self.full_cost
        low = policy_cost(self.cost_table, self.pin([(hp.min_bits, hp.min_bits if self.hardware.uses_abits
                                                  else hp.max_bits)] * len(self.layers)))
        if low > self.target:
            raise ValueError(f"budget_ratio={hp.budget_ratio} is below the smallest reachable ratio "
                             f"{low / self.full_cost:.4f} (every layer at {hp.min_bits} bits) of "
                             f"{type(self.hardware).__name__}{self._pin_note()}; raise budget_ratio or lower "
                             "min_bits")
        self._static = layer_states(self.layers)
        # the reward's reference: the float network on the batches the reward's accuracy comes from
        reference = "finetune" if hp.reward_split == "finetune" else "val"
        self.acc_float = top1(self.net, self.batches(reference), self.device)
        if self.agent is None:
            self.agent = DDPG(self._static.shape[1] + 2, 1, hp.replay_per_layer * len(self.layers), hp.hidden,
                              hp.actor_lr, hp.critic_lr, hp.tau, hp.discount, hp.agent_batch_size, hp.warmup,
                              hp.init_noise, hp.noise_decay, seed=hp.seed)
        if self._pending is not None:
            self._restore(self._pending)
        self._ready = True
        self.net.train()
        rank_zero_info(f"HAQ: {len(self.layers)} layers, float acc {self.acc_float:.4f} ({reference}), budget "
                       f"{self.target:.4g} {self.hardware.unit} ({hp.budget_ratio:g} × all-{hp.max_bits}-bit)")

    @override
    def on_fit_start(self) -> None:
        self._prepare()

    # --- one episode ----------------------------------------------------------------------------------
    @property
    def pinned(self) -> tuple[int, ...]:
        """Indices of the layers kept at ``max_bits`` (first and last with ``keep_first_last``)."""
        n = len(self.layer_names)
        return tuple(sorted({0, n - 1})) if self.hparams.keep_first_last and n else ()

    def pin(self, policy: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """``policy`` with the :attr:`pinned` layers set to ``(max_bits, max_bits)``."""
        top, pinned = self.hparams.max_bits, self.pinned
        return [(top, top) if i in pinned else (int(w), int(a)) for i, (w, a) in enumerate(policy)]

    def network_bits(self, policy: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """The bits the network runs for a priced ``policy``: the first layer's input in float when the first
        layer is pinned (the official ``a_bit = -1``; it is still priced at its ``max_bits``)."""
        bits = [(int(w), int(a)) for w, a in policy]
        if 0 in self.pinned and bits:
            bits[0] = (bits[0][0], FLOAT_BITS)
        return bits

    def _pin_note(self) -> str:
        return " with the first and last layer kept at max_bits (keep_first_last)" if self.pinned else ""

    def _set_bits(self, policy: Sequence[tuple[int, int]]) -> None:
        qlayers = quant_layers(self.net)
        for name, (w, a) in zip(self.layer_names, policy):
            qlayers[name].wbits, qlayers[name].abits = int(w), int(a)

    def evaluate(self, policy: Sequence[tuple[int, int]],
                 batches: Iterable[Batch] | None = None) -> tuple[float, dict[str, dict[str, Any]]]:
        """Score ``policy`` as an episode does: calibrate, fine-tune, accuracy; the float network is restored.

        Args:
            policy: the priced ``(wbits, abits)`` of each layer (:meth:`network_bits` is what runs).
            batches: held-out batches to score on after the fine-tune, instead of the reward's accuracy.

        Returns:
            ``(accuracy in [0, 1], each layer's quant_spec())``; :attr:`finetune_s` is the fine-tune's time.
        """
        hp = self.hparams
        self._set_bits(self.network_bits(policy))
        try:
            calibrate(self.net, self.batches("calib"), self.device)
            start = time.perf_counter()
            acc = (finetune(self.net, self.batches("finetune"), hp.finetune_lr, hp.finetune_weight_decay,
                             self.device) if self.finetunes else None)
            self.finetune_s = time.perf_counter() - start
            if batches is not None or acc is None or hp.reward_split == "val":
                acc = top1(self.net, self.batches("val") if batches is None else batches, self.device)
            specs = {n: q.quant_spec() for n, q in quant_layers(self.net).items()}
        finally:
            self.net.load_state_dict(self._float_state)
            self._set_bits([(FLOAT_BITS, FLOAT_BITS)] * len(self.layer_names))
        return acc, specs

    def search_step(self) -> dict[str, float]:
        """One episode: act, fit the budget, evaluate, reward, learn. Returns the episode's numbers."""
        hp = self.hparams
        assert self.agent is not None
        states, actions, policy = rollout(self.agent, self._static, self.episode, hp.min_bits, hp.max_bits)
        policy = fit_budget(self.pin(policy), self.cost_table, self.target, hp.min_bits, self.hardware.uses_abits,
                            pinned=self.pinned)
        acc, specs = self.evaluate(policy)
        reward = hp.reward_scale * 100 * (acc - self.acc_float)
        losses = self.agent.learn_episode(states, actions, reward, self.episode)
        cost = policy_cost(self.cost_table, policy)
        if self.best is None or reward > self.best["reward"]:
            self.best = {"reward": reward, "acc": acc, "cost": cost, "episode": self.episode,
                         "policy": [list(p) for p in policy],
                         "act_max": [specs[n]["act_max"] for n in self.layer_names],
                         "w_range": [specs[n]["w_range"] for n in self.layer_names]}
        self.episode += 1
        return {"reward": reward, "acc": acc, "cost_ratio": cost / self.full_cost, "best_acc": self.best["acc"],
                "noise": self.agent.noise, "finetune_s": self.finetune_s, **losses}

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self.episode < self.hparams.episodes:
            return None
        self.trainer.should_stop = True
        return -1  # ends the epoch; with should_stop, the fit

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        if not self._ready:
            self._prepare()
        out = self.search_step()
        shown = {"acc", "best_acc", "finetune_s"}
        self.log_dict({f"haq/{k}": float(v) for k, v in out.items() if k not in shown}, batch_size=1)
        self.log_dict({f"haq/{k}": float(out[k]) for k in shown}, prog_bar=True, batch_size=1)
        self.log("haq/episode", float(self.episode), prog_bar=True, batch_size=1)
        self.optimizers().step()  # the episode clock: Lightning's global_step counts episodes
        if self.episode >= self.hparams.episodes:
            self.trainer.should_stop = True

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The agent owns its Adam optimizers and each episode its own fine-tune SGD (fresh momentum, as official).
        # Lightning counts a step each time an optimizer it manages steps: this one holds no weights (an empty
        # tensor that never gets a gradient) and is stepped once per episode, so `global_step` is the episode count.
        return torch.optim.SGD([self._clock], lr=0.0)

    # --- results ------------------------------------------------------------------------------------------
    @override
    def on_train_end(self) -> None:
        if self.best is None or not self.trainer.is_global_zero:
            return
        write_results(self, self.hparams.output_dir or self.trainer.default_root_dir, self.hparams.compare)

    # --- checkpoints ----------------------------------------------------------------------------------------
    def _restore(self, state: dict[str, Any]) -> None:
        assert self.agent is not None
        if state.get("layers") != self.layer_names:
            raise ValueError("this HAQ checkpoint was saved for a network with other layers: resume with the same one")
        self.agent.load_state_dict(state["agent"])
        self.episode = int(state["episode"])
        self.best = state.get("best")
        self._pending = None

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.agent is not None:
            checkpoint["haq"] = {"agent": self.agent.state_dict(), "episode": self.episode, "best": self.best,
                                 "layers": list(self.layer_names)}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("haq")
        if state is None:
            return
        self._pending = state
        if self._ready:
            self._restore(state)
