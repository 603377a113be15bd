"""HAQ on digits: the searched mixed-precision policy vs uniform 4-bit at the same accelerator latency.

1. A torchvision MobileNetV2 (HAQ's network) is trained in float on ``DigitsDataModule`` (32 px).
2. Uniform 4-bit (first and last layer kept at 8 bits, as the search keeps them) is priced on the
   ``BitSerialAccelerator("edge")`` model; its cost over the all-8-bit cost becomes the search's
   ``budget_ratio``, so HAQ must find a policy at most as slow as uniform 4-bit.
3. ``HAQModule`` runs its DDPG search (``episodes``, ``warmup`` random episodes, activation ranges
   calibrated on 2 training batches, no per-episode fine-tune) scoring each policy on the held-out split; at fit end
   it scores uniform 8-bit, uniform 4-bit and the best policy with the same calibration.

Figures: float accuracy; accuracy and cost ratio of the HAQ policy, uniform 4-bit and uniform 8-bit; the accuracy
gain of HAQ over uniform 4-bit at no more latency (the paper's claim, on a much smaller problem: 144 validation
images, so one image is 0.69 points), on the validation split the search used and on the untouched test split;
the mean weight and activation bits of the policy; seconds per episode.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
from lightning.pytorch import Trainer, seed_everything

from benchmarks._spos_digits import quiet
from benchmarks.common import Bench
from lightning_nas.cost.hardware import BitSerialAccelerator, cost_lookup, policy_cost, profile_layers
from lightning_nas.datamodules import DigitsDataModule
from lightning_nas.modules import ClassificationModule, HAQModule
from lightning_nas.modules.quantized import quant_layers, quantize_network
from lightning_nas.search import accuracy

BATCH = 64


def _trainer(folder: str, **kwargs: object) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=folder, **kwargs)


def uniform4_ratio(net: torch.nn.Module, dm: DigitsDataModule, hardware: BitSerialAccelerator) -> float:
    """Cost of uniform 4-bit with first/last layer at 8 bits over the all-8-bit cost, on ``hardware``."""
    sample = next(iter(dm.train_dataloader()))[0][:2]
    layers = profile_layers(quantize_network(net), sample)
    table = cost_lookup(hardware, layers, 8)
    n = len(layers)
    policy = [(8, 8) if i in (0, n - 1) else (4, 4) for i in range(n)]
    return policy_cost(table, policy) / policy_cost(table, [(8, 8)] * n)


def main(argv: list[str] | None = None) -> None:
    bench = Bench("haq_digits", "HAQ (DDPG over per-layer weight/activation bits) on a MobileNetV2 trained on "
                  "digits, against uniform 4-bit at the same bit-serial accelerator latency.")
    args = bench.parse(argv)
    quiet()
    epochs, episodes, warmup = (2, 6, 3) if args.quick else (12, 300, 20)
    seed_everything(args.seed, verbose=False)
    dm = DigitsDataModule(batch_size=BATCH, seed=42)
    hardware = BitSerialAccelerator("edge")
    with tempfile.TemporaryDirectory(prefix="haq_digits_") as folder:
        float_module = ClassificationModule(network="mobilenet_v2", num_classes=10, lr=0.05, weight_decay=4e-5,
                                            label_smoothing=0.0)
        _trainer(folder, max_epochs=epochs, limit_val_batches=0).fit(float_module, datamodule=dm)
        net = float_module.net.eval()
        budget = uniform4_ratio(net, dm, hardware)
        haq = HAQModule(model=net, num_classes=10, hardware=hardware, budget_ratio=budget, episodes=episodes,
                        warmup=warmup, calib_batches=2, val_batches=None, seed=args.seed, output_dir=folder)
        start = time.perf_counter()
        _trainer(folder, max_epochs=-1).fit(haq, datamodule=dm)
        search_s = time.perf_counter() - start
    rows = haq.comparison
    # the policy was picked on the validation split; score it and the baselines once more on the test split
    dm.setup("test")
    haq._cache["val"] = list(dm.test_dataloader())
    test_rows = haq.compare_fixed()
    test_images = sum(len(y) for _, y in haq._cache["val"])
    best = haq.best
    assert best is not None
    bench.settings.update({"network": "torchvision mobilenet_v2 (10 classes, 32 px)", "float_epochs": epochs,
                           "hardware": "BitSerialAccelerator('edge') latency", "budget_ratio": round(budget, 4),
                           "episodes": episodes, "warmup": warmup, "calib_batches": 2, "finetune_batches": 0,
                           "val_images": 144, "layers": len(haq.layers), "keep_first_last": True})
    bench.figure("float_acc", haq.acc_float)
    for label in ("haq", "fixed4", "fixed8"):
        bench.figure(f"{label}.acc", rows[label]["acc"])
        bench.figure(f"{label}.cost_ratio", rows[label]["cost_ratio"])
    bench.figure("haq_minus_fixed4_acc_points", 100 * (rows["haq"]["acc"] - rows["fixed4"]["acc"]))
    bench.figure("test.float.acc", accuracy(haq.net, haq._cache["val"]))  # evaluate() restored the float net
    for label in ("haq", "fixed4", "fixed8"):
        bench.figure(f"test.{label}.acc", test_rows[label]["acc"])
    bench.figure("test.haq_minus_fixed4_acc_points", 100 * (test_rows["haq"]["acc"] - test_rows["fixed4"]["acc"]))
    inner = best["policy"][1:-1]
    bench.figure("haq.mean_wbits", statistics.mean(w for w, _ in inner))
    bench.figure("haq.mean_abits", statistics.mean(a for _, a in inner))
    bench.figure("best_episode", best["episode"])
    bench.figure("s_per_episode", search_s / episodes)
    bench.target("haq.cost_ratio", "<=", round(budget, 4))
    bench.note("haq.acc and fixed*.acc: re-scored at fit end with the same calibration batches and the whole "
               "144-image validation split (no fine-tune). The search picked the HAQ policy on that split, so its "
               f"val figure is optimistic; test.*: the float network and the same policies on the {test_images}-image "
               "test split, never seen by the search.")
    bench.note("Layers counted: every Conv2d and Linear of torchvision's MobileNetV2 "
               f"({len(quant_layers(haq.net))}), first and last kept at 8/8 bits (mean bits exclude them).")
    bench.emit()


if __name__ == "__main__":
    main()
