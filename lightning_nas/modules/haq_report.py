"""What a HAQ search hands on: ``best_policy.json`` (the bits the network runs, their cost) and, at fit end, the
best policy against the float network and uniform 8- and 4-bit, each calibrated and fine-tuned as an episode.

``recipes/haq/finetune_cifar10.yaml`` (:class:`~lightning_nas.modules.quantized.QuantizedNetwork`) reads the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_nas.cost.hardware import policy_cost
from lightning_nas.modules.haq_episode import Batch
from lightning_nas.modules.quantized import POLICY_FORMAT, top1

if TYPE_CHECKING:
    from lightning_nas.modules.haq import HAQModule

__all__ = ["compare_fixed", "policy_document", "write_results"]


def policy_document(module: HAQModule) -> dict[str, Any]:
    """The best policy so far as ``best_policy.json`` content (the bits the network runs, the priced cost)."""
    if module.best is None:
        raise ValueError("no episode has run yet: there is no policy")
    b, hp = module.best, module.hparams
    w_range = b.get("w_range", [0.0] * len(module.layer_names))  # absent in checkpoints of older versions
    layers = {n: {"wbits": w, "abits": a, "act_max": m, "act_signed": p.act_signed, "quantizer": hp.quantizer,
                  "w_range": r}
              for n, (w, a), m, r, p in zip(module.layer_names, module.network_bits(b["policy"]), b["act_max"],
                                            w_range, module.layers)}
    return {"format": POLICY_FORMAT, "method": "HAQ", "hardware": module.hardware.describe(),
            "budget_ratio": hp.budget_ratio, "cost": b["cost"], "cost_ratio": b["cost"] / module.full_cost,
            "acc": b["acc"], "acc_float": module.acc_float, "reward_split": hp.reward_split,
            "reward": b["reward"], "episode": b["episode"], "layers": layers}


def compare_fixed(module: HAQModule, policy: Sequence[tuple[int, int]] | None = None,
                  batches: Iterable[Batch] | None = None) -> dict[str, dict[str, float]]:
    """Held-out accuracy and cost ratio of the float network, uniform 8-bit, 4-bit (pinned as in the search)
    and ``policy`` (default: the best), each calibrated and fine-tuned as in an episode.

    Args:
        module: a HAQ module whose search has run (or been restored).
        policy: the priced policy to compare.
        batches: the held-out batches (default: the validation batches).
    """
    if policy is None:
        policy = [tuple(p) for p in module.best["policy"]] if module.best else []
    batches = list(module.batches("val") if batches is None else batches)
    n = len(module.layer_names)
    rows = {"float": {"acc": top1(module.net, batches, module.device), "cost_ratio": float("nan")}}
    for label, pol in (("fixed8", [(8, 8)] * n), ("fixed4", module.pin([(4, 4)] * n)), ("haq", list(policy))):
        if len(pol) == n:
            ratio = policy_cost(module.cost_table, pol) / module.full_cost
            rows[label] = {"acc": module.evaluate(pol, batches)[0], "cost_ratio": ratio}
    return rows


def write_results(module: HAQModule, folder: str | Path, compare: bool) -> Path:
    """Write ``<folder>/best_policy.json``; with ``compare``, score the fixed precisions, print the table and log it.

    Returns:
        The policy file. The comparison, when made, is also left in ``module.comparison``.
    """
    out = Path(folder) / "best_policy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = policy_document(module)
    out.write_text(json.dumps(doc, indent=2))
    rank_zero_info(f"HAQ: best policy (acc {doc['acc']:.4f}, episode {doc['episode']}) -> {out}")
    if compare:
        rows = compare_fixed(module)
        lines = [f"{'policy':>8} {'acc':>8} {'cost_ratio':>10}"]
        lines += [f"{k:>8} {v['acc']:8.4f} {v['cost_ratio']:10.4f}" for k, v in rows.items()]
        rank_zero_info(f"HAQ vs fixed precision (budget ratio {module.hparams.budget_ratio}):\n" + "\n".join(lines))
        metrics = {f"haq/compare/{k}_{m}": v[m] for k, v in rows.items() for m in v if k != "float" or m == "acc"}
        for logger in module.trainer.loggers:
            logger.log_metrics(metrics, step=module.episode)
        module.comparison = rows
    return out
