"""Where a GPU's time goes in a SPOS search (issue 17): steps, the fit loop, evolution scoring, the loader.

On one GPU (bf16 autocast, ``recipes/spos/cifar10.yaml``'s space, batch 256, fake CIFAR-10 of the real size in the
real on-disk format) it measures, in one run of about 5 minutes on an H100 (8 at most):

- **steps**: a SPOS supernet training step on an activated path vs the exported sub-network's step (same arch and
  batch: forward, label-smoothed cross-entropy, backward, SGD with momentum and weight decay; the supernet drops the
  gradients of candidates off the path), and vs that network compiled with ``torch.compile`` (the reference for
  what the card can do; compile time reported). Figures: ``*_step_images_per_s``, ``supernet_over_exported`` and
  ``supernet_over_compiled_exported`` (speed ratios, ≥ 1 means the supernet is faster; target ≥ 0.9 for the latter).
- **fit**: ``Trainer.fit`` epoch images/s of ``SPOSModule`` + ``PathSampling`` with the recipe's other per-step
  callbacks (``LearningRateMonitor``, ``RichProgressBar``; a CSV logger in W&B's place), with the default loader and
  with ``on_device=True``, vs the raw step (path sampled and activated, the same step, batches already on the device).
  Each fit runs two epochs of ``fit_batches`` batches and the second is timed. Figures: ``fit_over_raw_step`` and
  ``fit_on_device_over_raw_step`` (target ≥ 0.9), ``fit_on_device_over_fit`` (the speed-up).
  ``fit_on_device_no_bar`` also logs the module's training metrics without ``prog_bar`` (Lightning turns a
  progress-bar metric into a Python number every step: two device syncs per step with ``SPOSModule``'s logging;
  measured on a CPU, 4.6 per step with the recipe's callbacks, 0.2 without ``prog_bar``); ``no_bar_over_bar`` is that
  lever's speed-up.
- **scoring**: one evolution candidate as ``EvolutionSearch`` scores it (trained buffers restored, arch activated,
  BatchNorm re-calibrated on 20,000 training images, top-1 on the 5,000-image held-out split: the recipe's
  fidelity) with calibration batches of 256 (the recipe's: the loader's), 1,024 and 4,096, and at 4,096 with the
  validation batches re-batched to 1,024 (``EvolutionSearch`` scores on the loader's batches: a lever to measure).
  Figures: ``score_s_per_candidate.<variant>``, ``evolution_s_per_1000_candidates`` (at batch 256; target ≤ 300,
  issue 17), ``evolution_s_per_1000_candidates_best`` (``evolution_best_variant``) and
  ``score_speedup_<variant>_over_calib256``.
- **loader**: training-loader images/s (each batch copied to the GPU) with the default workers and with
  ``on_device=True``; ``loader_over_raw_step`` > 1 means the loader keeps up with the raw step.

Every comparison is made in the same run, the variants alternating in interleaved rounds; a figure is the median
per-round ratio with its min–max (``benchmarks/common.py``). Without CUDA it runs a smoke version (tiny space,
batch 16, a few hundred fake images; seconds) whose JSON the harness keeps out of ``benchmarks/results/``.

GPU command (Python 3.12 with torch and Lightning; neither jsonargparse nor wandb is needed, nor installing
``lightning_nas``), from the repository root, copying the result where the device runner brings files back (its
``python3`` is the one with torch; give it a 600 s limit)::

    python3 -m benchmarks --gpu 2>&1 | tee "$OUT"/gpu.log; cp benchmarks/results/gpu_*.json "$OUT"/

(``python -m benchmarks --only gpu_speed`` is the same; ``python -m benchmarks.gpu_speed`` prints the JSON only.)
"""

from __future__ import annotations

import contextlib
import copy
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import Tensor, nn

from benchmarks._spos_digits import quiet
from benchmarks.common import Bench, interleaved, ratios, spread, timed

BF16 = torch.bfloat16
SECTIONS = ["fit", "loader", "scoring", "steps"]


@dataclass(frozen=True)
class Sizes:
    """What one run measures; :data:`FULL` on a GPU, :data:`SMOKE` elsewhere (or with ``--quick``)."""

    batch: int
    space: dict[str, Any]
    train_images: int  # fake CIFAR-10 training set (10 % of it is the held-out split)
    step_archs: int
    step_rounds: int
    step_reps: int
    compile_archs: int
    fit_rounds: int
    fit_batches: int
    calib_images: int
    calib_batches: tuple[int, ...]
    score_rounds: int
    loader_rounds: int
    loader_batches: int


FULL = Sizes(batch=256, space={}, train_images=50_000, step_archs=4, step_rounds=6, step_reps=5, compile_archs=2,
             fit_rounds=3, fit_batches=40, calib_images=20_000, calib_batches=(256, 1024, 4096), score_rounds=4,
             loader_rounds=4, loader_batches=40)
SMOKE = Sizes(batch=16, space={"width_mult": 0.25, "stage_depths": (1, 1, 2, 1), "head_channels": 64},
              train_images=200, step_archs=1, step_rounds=2, step_reps=1, compile_archs=1, fit_rounds=1,
              fit_batches=3, calib_images=64, calib_batches=(16, 32, 64), score_rounds=2, loader_rounds=2,
              loader_batches=3)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """bf16 autocast on CUDA (what ``precision="bf16-mixed"`` does around the forward), nothing elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=BF16)
    return contextlib.nullcontext


def make_space(sizes: Sizes) -> nn.Module:
    from lightning_nas.spaces import ShuffleNetSpace

    return ShuffleNetSpace(num_classes=10, input_size=32, **sizes.space)


def train_step(net: nn.Module, batches: list[tuple[Tensor, Tensor]], context: Callable[[], Any],
               drop: Callable[[], list[nn.Parameter]] | None = None, before: Callable[[], None] | None = None
               ) -> Callable[[], None]:
    """One SGD step of ``net`` per call, cycling through ``batches``; ``drop`` lists gradients to discard (SPOS),
    ``before`` runs first (path sampling)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    position = [0]

    def step() -> None:
        x, y = batches[position[0] % len(batches)]
        position[0] += 1
        if before is not None:
            before()
        opt.zero_grad(set_to_none=True)
        with context():
            loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
        loss.backward()
        if drop is not None:
            for p in drop():
                p.grad = None
        opt.step()

    return step


def fake_batches(sizes: Sizes, device: torch.device, count: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(sizes.batch, 3, 32, 32, generator=gen).to(device),
             torch.randint(0, 10, (sizes.batch,), generator=gen).to(device)) for _ in range(count)]


def med(values: list[float]) -> float:
    return spread(values)["median"]


def ratio_figures(bench: Bench, key: str, values: list[float]) -> None:
    """``key`` = the median per-round ratio, ``key_min_max`` its range."""
    s = spread(values)
    bench.figure(key, s["median"])
    bench.figure(f"{key}_min_max", [s["min"], s["max"]])


# --- steps: supernet vs exported vs compiled exported ------------------------------------------------------------
def steps_section(bench: Bench, sizes: Sizes, device: torch.device, backend: str | None, seed: int,
                  compile_until: float = float("inf")) -> None:
    """``compile_until``: no new compile starts after this ``time.perf_counter()`` (the run's time budget)."""
    from lightning_nas.modules import SPOSModule

    space = make_space(sizes).to(device)
    module = SPOSModule(space)  # its inactive_parameters(): the real SPOS step drops those gradients
    context, batches = autocast(device), fake_batches(sizes, device, 1, seed)
    gen = torch.Generator().manual_seed(seed)
    times: dict[str, list[float]] = {"supernet": [], "exported": [], "compiled": [], "supernet_c": [],
                                     "exported_c": []}
    compile_s = []
    for a in range(sizes.step_archs):
        arch = space.sample(gen)
        space.train().activate(arch)
        exported = space.export(arch).to(device).train()
        fns = {"supernet": train_step(space, batches, context, module.inactive_parameters),
               "exported": train_step(exported, batches, context)}
        if backend is not None and a < sizes.compile_archs and time.perf_counter() > compile_until:
            bench.note(f"compiled network: arch {a + 1} not compiled (the run's time budget)")
        elif backend is not None and a < sizes.compile_archs:
            compiled = torch.compile(copy.deepcopy(exported), backend=backend)
            fns["compiled"] = train_step(compiled, batches, context)
            start = time.perf_counter()
            fns["compiled"]()  # compiles forward and backward
            fns["compiled"]()
            sync(device)
            compile_s.append(time.perf_counter() - start)
        got = interleaved(fns, sizes.step_rounds, sizes.step_reps)
        times["supernet"] += got["supernet"]
        times["exported"] += got["exported"]
        if "compiled" in got:
            times["compiled"] += got["compiled"]
            times["supernet_c"] += got["supernet"]
            times["exported_c"] += got["exported"]
    b = sizes.batch
    bench.figure("supernet_step_images_per_s", b / med(times["supernet"]))
    bench.figure("exported_step_images_per_s", b / med(times["exported"]))
    ratio_figures(bench, "supernet_over_exported", ratios(times["exported"], times["supernet"]))
    if times["compiled"]:
        bench.figure("compiled_exported_step_images_per_s", b / med(times["compiled"]))
        ratio_figures(bench, "supernet_over_compiled_exported", ratios(times["compiled"], times["supernet_c"]))
        ratio_figures(bench, "exported_over_compiled_exported", ratios(times["compiled"], times["exported_c"]))
        bench.target("supernet_over_compiled_exported", ">=", 0.9)
        bench.figure("compile_s_per_arch", med(compile_s))
        saving = med(times["exported_c"]) - med(times["compiled"])
        bench.figure("compiled_saving_ms_per_step", 1e3 * saving)
        if saving > 0:  # steps a per-candidate compile needs to pay for itself; a SPOS step changes the path
            bench.figure("compile_payback_steps", med(compile_s) / saving)


# --- the fit loop vs the raw step --------------------------------------------------------------------------------
class EpochTimer(Callback):
    """Images and seconds of each training epoch (the device synchronised at both ends)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.epochs: list[tuple[int, float]] = []
        self._start, self._images = 0.0, 0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        sync(self.device)
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._images += len(batch[1])

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        sync(self.device)
        self.epochs.append((self._images, time.perf_counter() - self._start))


def make_datamodule(root: Path, sizes: Sizes, **kwargs: Any) -> Any:
    from lightning_nas.datamodules import CIFAR10DataModule

    return CIFAR10DataModule(str(root), batch_size=sizes.batch, val_split=0.1, seed=42, **kwargs)


def fit_epoch(module: Any, dm: Any, sizes: Sizes, device: torch.device, work: Path) -> float:
    """Seconds per image of the second of two fit epochs of ``fit_batches`` batches (recipe callbacks, no search)."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from lightning_nas.callbacks import PathSampling

    timer = EpochTimer(device)
    trainer = Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                      precision="bf16-mixed" if device.type == "cuda" else "32-true", max_epochs=2,
                      limit_train_batches=sizes.fit_batches, limit_val_batches=0, num_sanity_val_steps=0,
                      enable_checkpointing=False, enable_model_summary=False, default_root_dir=work,
                      logger=CSVLogger(work / "logs"),
                      callbacks=[PathSampling(seed=0), LearningRateMonitor(), RichProgressBar(), timer])
    trainer.fit(module, datamodule=dm)
    images, seconds = timer.epochs[-1]
    return seconds / images


def fit_section(bench: Bench, sizes: Sizes, device: torch.device, root: Path, work: Path, seed: int) -> float:
    """Returns the raw step's median seconds per image (the loader section compares with it)."""
    from lightning_nas.modules import SPOSModule

    space = make_space(sizes)
    module = SPOSModule(space, lr=0.25, weight_decay=4e-5, lr_decay="linear", label_smoothing=0.1)
    default, on_device = make_datamodule(root, sizes), make_datamodule(root, sizes, on_device=True)
    gen = torch.Generator().manual_seed(seed)
    batches = fake_batches(sizes, device, 4, seed)

    def raw() -> float:
        module.to(device).train()
        step = train_step(space, batches, autocast(device), module.inactive_parameters,
                          before=lambda: space.activate(space.sample(gen)))
        step()
        return timed(step, sizes.fit_batches) / sizes.batch

    no_bar = {"on": False}
    log_dict = module.log_dict

    def log_without_bar(*args: Any, **kwargs: Any) -> None:
        # a prog_bar metric is turned into a Python number every step (a device sync): the lever measured here
        log_dict(*args, **{**kwargs, "prog_bar": False} if no_bar["on"] else kwargs)

    module.log_dict = log_without_bar  # type: ignore[method-assign]

    def fit_no_bar() -> float:
        no_bar["on"] = True
        try:
            return fit_epoch(module, on_device, sizes, device, work / "fit_on_device_no_bar")
        finally:
            no_bar["on"] = False

    fns = {"fit": lambda: fit_epoch(module, default, sizes, device, work / "fit"),
           "fit_on_device": lambda: fit_epoch(module, on_device, sizes, device, work / "fit_on_device"),
           "fit_on_device_no_bar": fit_no_bar, "raw": raw}
    per_image: dict[str, list[float]] = {k: [] for k in fns}
    labels = list(fns)
    for r in range(sizes.fit_rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            per_image[label].append(fns[label]())
    for label in labels:
        bench.figure(f"{label}_images_per_s" if label != "raw" else "raw_step_images_per_s",
                     1 / med(per_image[label]))
    ratio_figures(bench, "fit_over_raw_step", ratios(per_image["raw"], per_image["fit"]))
    ratio_figures(bench, "fit_on_device_over_raw_step", ratios(per_image["raw"], per_image["fit_on_device"]))
    ratio_figures(bench, "fit_on_device_over_fit", ratios(per_image["fit"], per_image["fit_on_device"]))
    ratio_figures(bench, "fit_on_device_no_bar_over_raw_step",
                  ratios(per_image["raw"], per_image["fit_on_device_no_bar"]))
    ratio_figures(bench, "no_bar_over_bar", ratios(per_image["fit_on_device"], per_image["fit_on_device_no_bar"]))
    bench.target("fit_over_raw_step", ">=", 0.9)
    bench.target("fit_on_device_over_raw_step", ">=", 0.9)
    bench.settings["fit_loader_workers"] = default.num_workers
    return med(per_image["raw"])


# --- evolution scoring at several calibration batch sizes --------------------------------------------------------
def scoring_section(bench: Bench, sizes: Sizes, device: torch.device, root: Path, seed: int) -> None:
    from lightning_nas.search.evaluate import (
        accuracy,
        collect_batches,
        collect_inputs,
        recalibrate_bn,
        restore_buffers,
        save_buffers,
    )

    dm = make_datamodule(root, sizes)
    space = make_space(sizes).to(device)
    context = autocast(device)
    with torch.random.fork_rng(devices=[]):  # as EvolutionSearch collects them
        torch.manual_seed(seed)
        chunks = collect_inputs(dm.calibration_dataloader(), sizes.calib_images, device)
    calib = {b: collect_inputs(chunks, sizes.calib_images, device, batch_size=b) for b in sizes.calib_batches}
    val = collect_batches(dm.val_dataloader(), None, device)
    big = sizes.calib_batches[-1]
    val_big = list(zip(torch.cat([x for x, _ in val]).split(4 * sizes.batch),
                       torch.cat([y for _, y in val]).split(4 * sizes.batch)))
    trained = save_buffers(space)
    gen = torch.Generator().manual_seed(seed + 1)
    split: dict[str, list[float]] = {"recalibrate": [], "accuracy": []}
    base = f"calib{sizes.calib_batches[0]}"

    def scorer(label: str, calib_batches: list[Tensor], val_batches: list[tuple[Tensor, Tensor]]
               ) -> Callable[[dict], float]:
        def score(arch: dict) -> float:
            restore_buffers(space, trained)
            space.activate(arch)
            start = time.perf_counter()
            recalibrate_bn(space, calib_batches, context=context)
            sync(device)
            middle = time.perf_counter()
            acc = accuracy(space, val_batches, context=context)  # ends in a device sync (float of the count)
            if label == base:
                split["recalibrate"].append(middle - start)
                split["accuracy"].append(time.perf_counter() - middle)
            return acc

        return score

    scorers = {f"calib{b}": scorer(f"calib{b}", calib[b], val) for b in sizes.calib_batches}
    scorers[f"calib{big}_val{4 * sizes.batch}"] = scorer("big", calib[big], val_big)  # a lever: larger val batches
    warm = space.sample(gen)
    for score in scorers.values():  # warm-up (kernels chosen, caches filled)
        score(warm)
    split["recalibrate"].clear()
    split["accuracy"].clear()
    seconds: dict[str, list[float]] = {k: [] for k in scorers}
    order = list(scorers)
    for r in range(sizes.score_rounds):
        arch = space.sample(gen)  # one candidate per round, scored by every variant
        for label in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            scorers[label](arch)
            seconds[label].append(time.perf_counter() - start)
    for label in order:
        bench.figure(f"score_s_per_candidate.{label}", med(seconds[label]))
        if label != base:
            ratio_figures(bench, f"score_speedup_{label}_over_{base}", ratios(seconds[base], seconds[label]))
    bench.figure("evolution_s_per_1000_candidates", 1000 * med(seconds[base]))
    bench.target("evolution_s_per_1000_candidates", "<=", 300)
    best = min(order, key=lambda k: med(seconds[k]))
    bench.figure("evolution_s_per_1000_candidates_best", 1000 * med(seconds[best]))
    bench.figure("evolution_best_variant", best)
    total = med(split["recalibrate"]) + med(split["accuracy"])
    bench.figure(f"recalibration_share_pct.{base}", 100 * med(split["recalibrate"]) / total)
    bench.settings.update({"calib_images": sum(len(x) for x in calib[sizes.calib_batches[0]]),
                           "val_images": sum(len(y) for _, y in val)})


# --- the training loader ----------------------------------------------------------------------------------------
def loader_section(bench: Bench, sizes: Sizes, device: torch.device, root: Path, raw_s_per_image: float | None
                   ) -> None:
    on_device = make_datamodule(root, sizes, on_device=True)
    on_device.device_train_dataset(device)  # no trainer here: put it on the GPU by hand
    loaders = {"loader": make_datamodule(root, sizes).train_dataloader(),
               "loader_on_device": on_device.train_dataloader()}
    state = {k: iter(()) for k in loaders}
    epochs = {k: 0 for k in loaders}

    def batches(label: str) -> Iterator[Any]:
        while True:
            yield from state[label]
            epochs[label] += 1
            loaders[label].sampler.set_epoch(epochs[label])
            state[label] = iter(loaders[label])

    streams = {k: batches(k) for k in loaders}

    def pull(label: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(sizes.loader_batches):
                x, y = next(streams[label])
                x.to(device, non_blocking=True)
                y.to(device, non_blocking=True)
            sync(device)

        return run

    got = interleaved({k: pull(k) for k in loaders}, sizes.loader_rounds, 1, warmup=1)
    per_image = {k: [t / (sizes.loader_batches * sizes.batch) for t in v] for k, v in got.items()}
    bench.figure("loader_images_per_s", 1 / med(per_image["loader"]))
    bench.figure("loader_on_device_images_per_s", 1 / med(per_image["loader_on_device"]))
    ratio_figures(bench, "on_device_loader_over_loader", ratios(per_image["loader"], per_image["loader_on_device"]))
    if raw_s_per_image:
        bench.figure("loader_over_raw_step", raw_s_per_image / med(per_image["loader"]))
        bench.figure("loader_on_device_over_raw_step", raw_s_per_image / med(per_image["loader_on_device"]))


def main(argv: list[str] | None = None) -> None:
    bench = Bench("gpu_speed", "Issue 17's GPU figures: supernet vs exported vs compiled exported step, the fit "
                  "loop vs the raw step (default and on-device loader), per-candidate evolution scoring at "
                  "calibration batch 256/1024/4096, loader images/s; each against its baseline in the same run.")

    def extra(parser: Any) -> None:
        parser.add_argument("--compile-backend", default=None,
                            help="torch.compile backend (default: inductor on CUDA, eager in the smoke run; "
                                 "'none' skips the compiled network)")
        parser.add_argument("--budget-s", type=float, default=420.0,
                            help="no compile starts after 60 %% of this many seconds (the run must end in 8 min)")
        parser.add_argument("--only-sections", nargs="+", default=None, choices=SECTIONS,
                            help=f"a subset of {SECTIONS} (default: all)")

    args = bench.parse(argv, extra)
    quiet()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = args.quick or device.type != "cuda"
    sizes = SMOKE if smoke else FULL
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")
    backend = None if backend == "none" else backend
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    bench.settings.update({"device": device.type, "device_name": name, "smoke": smoke,
                           "precision": "bf16-mixed" if device.type == "cuda" else "32-true",
                           "cuda": torch.version.cuda if device.type == "cuda" else None,
                           "space": f"ShuffleNetSpace(10, 32, {sizes.space or 'recipe defaults'})",
                           "compile_backend": backend, **{f"sizes.{k}": v for k, v in asdict(sizes).items()}})
    sections = args.only_sections or SECTIONS
    failed, wall = [], {}
    raw = None
    from tests.helpers.fake_data import write_fake_cifar10

    with tempfile.TemporaryDirectory(prefix="gpu_speed_") as tmp:
        root = write_fake_cifar10(Path(tmp) / "cifar", n_train=sizes.train_images, n_test=max(16, sizes.batch))
        for section in SECTIONS:  # fit first: the loader section reuses its raw step
            if section not in sections:
                continue
            start = time.perf_counter()
            try:
                if section == "fit":
                    raw = fit_section(bench, sizes, device, root, Path(tmp) / "work", args.seed)
                elif section == "loader":
                    loader_section(bench, sizes, device, root, raw)
                elif section == "scoring":
                    scoring_section(bench, sizes, device, root, args.seed)
                else:
                    steps_section(bench, sizes, device, backend, args.seed, bench.started + 0.6 * args.budget_s)
            except Exception as err:  # noqa: BLE001 - one broken section must not lose the others' figures
                failed.append(section)
                bench.note(f"section {section} failed: {type(err).__name__}: {err}")
                traceback.print_exc()
            wall[section] = round(time.perf_counter() - start, 1)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    bench.settings["section_wall_s"] = wall
    if device.type == "cuda":
        bench.figure("peak_gpu_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30)
    bench.figure("failed_sections", failed)
    bench.note("Speed ratios: the baseline's seconds over the variant's, per round; > 1 means the variant (the "
               "first name) is faster. Images/s are medians over rounds.")
    if smoke:
        bench.note("Smoke run (no CUDA device or --quick): tiny sizes, figures say nothing about a GPU.")
    bench.emit()


if __name__ == "__main__":
    main()
