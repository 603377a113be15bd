"""``EvolutionSearch``: SPOS's evolutionary search over a trained supernet, at the end of ``fit``.

Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020,
https://arxiv.org/abs/1904.00420. Each candidate is activated on the shared supernet, its BatchNorm
statistics are re-calibrated on fixed training batches, and it is scored by top-1 accuracy on the
held-out validation split. One evolution runs per constraint (as the official code); a score cache
keyed by arch means no arch is scored twice, and each constraint's answer is the best visited arch
(of any of the evolutions) that meets it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_nas.arch import Arch
from lightning_nas.callbacks.protocols import SearchableModule, require_space
from lightning_nas.search import constraints as _constraints
from lightning_nas.search.constraints import Constraint
from lightning_nas.search.evaluate import (
    accuracy,
    calibration_batch_size,
    collect_batches,
    collect_inputs,
    gather_scores,
    recalibrate_bn,
    restore_buffers,
    supernet_preserved,
)
from lightning_nas.search.evolution import EvolutionConfig, EvolutionState, Record, arch_key, evolve, top_k
from lightning_nas.search.interrupt import (
    STATE_FILE,
    StopRequested,
    StopRequests,
    read_state,
    resume_point,
    save_and_interrupt,
    write_state,
)
from lightning_nas.search.report import SearchProgress, SearchResult, plot_axis_cost, plot_metric, write_report
from lightning_nas.spaces.base import SearchSpace

__all__ = ["EvolutionSearch", "SearchableModule"]

STATE_FORMAT = 1


@dataclass
class _SearchData:
    calib: list[Tensor]
    val: list[tuple[Tensor, Tensor]]


class EvolutionSearch(Callback):
    """Search the trained supernet for the best arch under each constraint (SPOS's evolution).

    Args:
        population: candidates per generation.
        topk: parents come from the ``topk`` best archs visited so far.
        mutations: mutants per generation (each gene resampled with ``mutation_prob``).
        crossovers: crossover children per generation.
        mutation_prob: per-gene probability of a mutation.
        generations: generations scored, the random first one included.
        constraints: cost bounds, ``Constraint`` or dicts such as ``{"metric": "macs", "max": 330000000}``;
            one evolution and one best arch per constraint. ``None``: unconstrained.
        strategy: ``"evolution"``, or ``"random"`` (the baseline: as many uniformly drawn legal archs).
        calib_images: training images for each candidate's BatchNorm re-calibration.
        calib_batch_size: their batch size (default: 1,024 on a CUDA device — issue 17's H100 scored a candidate
            in 1.15 s at 1,024 against 2.05 s at 256, and the ranking does not depend on it — and the loader's
            batch size elsewhere).
        val_batches: validation batches each candidate is scored on (``None``: all).
        seed: the search seed; each generation is seeded by ``(seed, constraint, generation)``.
        output_dir: the search's root folder (default: ``trainer.default_root_dir``): the resume state and the
            latest ``best_arch.json`` go there, everything else into a new ``evolution-<time>/`` folder per run.
        latency_table: path of a ``lightning_nas.cost.LatencyTable`` for ``latency_ms`` constraints.
        run_on_validate: also search when the trainer runs ``validate`` (serve new budgets from one checkpoint).
        test_best: after the search, score each best arch on the datamodule's test split (reported and saved in
            its arch JSON; the search itself never sees the test split).

    Outputs (rank 0): :func:`lightning_nas.search.report.write_report` writes ``result`` (a
    :class:`~lightning_nas.search.report.SearchResult`) into the run's own ``<output_dir>/evolution-<time>/`` (kept
    in ``run_dir``): ``best_arch.json`` (``best_arch_<constraint>.json`` with several constraints), the history,
    the top-k table and the Pareto plot; the best archs are copied to ``<output_dir>`` (the latest answer, where
    ``recipes/retrain.yaml`` looks), beside ``search_state.json`` (the resume point, rewritten after every
    generation); the same go to the loggers. The summary is printed when the trainer tears down, after the progress
    bars listed before this callback (the recipes list it last), so it is the last thing on screen.

    Progress counts candidates (scored / total). On SIGTERM (Lightning's handler) or the first Ctrl+C the search
    stops after the candidate being scored, saves ``search_state.json`` and ``search_interrupted.ckpt`` and raises
    :class:`~lightning_nas.search.interrupt.SearchInterrupted` (exit code 143 / 130) saying how to resume; the
    resumed search gives the uninterrupted result. A ``fit`` resumed from a checkpoint whose training had finished
    runs no training hooks: ``NASTrainer.fit`` (the CLI's) then runs the pending search itself.

    Example::

        trainer = Trainer(callbacks=[PathSampling(), EvolutionSearch(constraints=[{"metric": "macs", "max": 330e6}])])
    """

    def __init__(
        self, population: int = 50, topk: int = 10, mutations: int = 25, crossovers: int = 25,
        mutation_prob: float = 0.1, generations: int = 20,
        constraints: Sequence[Mapping[str, Any] | Constraint] | None = None, strategy: str = "evolution",
        calib_images: int = 20000, calib_batch_size: int | None = None, val_batches: int | None = None,
        seed: int = 0, output_dir: str | None = None, latency_table: str | None = None,
        run_on_validate: bool = False, test_best: bool = False,
    ) -> None:
        if strategy not in ("evolution", "random"):
            raise ValueError(f"EvolutionSearch strategy must be 'evolution' or 'random', got {strategy!r}.")
        random = strategy == "random"
        self.config = EvolutionConfig(population, topk, 0 if random else mutations, 0 if random else crossovers,
                                      mutation_prob, generations)
        self.constraints = [Constraint.parse(c) for c in constraints or []]
        names = [c.name for c in self.constraints]
        if len(set(names)) != len(names):
            raise ValueError(f"Constraint names must differ, got {names}; give each a 'name'.")
        self.strategy, self.seed, self.run_on_validate = strategy, seed, run_on_validate
        self.calib_images, self.calib_batch_size, self.val_batches = calib_images, calib_batch_size, val_batches
        self.output_dir, self.latency_table_path, self.test_best = output_dir, latency_table, test_best
        self.test_scores: dict[str, float] = {}
        self.run_dir: Path | None = None
        self.history: list[Record] = []
        self.best: dict[str, Record] = {}
        self.result: SearchResult | None = None
        self._runs: list[EvolutionState] = []
        self._cache: dict[str, float] = {}
        self._settings: dict[str, Any] = {}
        self._loaded: dict[str, Any] | None = None
        self._latency: Any = None
        self._data: _SearchData | None = None
        self._buffers: dict[str, Tensor] = {}
        self._snapshot: list[dict[str, Any]] = []
        self._summary: list[str] = []
        self._checked: Any = None
        self._fit_started = self._searched = False
        self.finish_pending_after_fit = False  # NASTrainer.fit sets it: it finishes a pending search itself

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(strategy=self.strategy, constraints=[c.name for c in self.constraints])

    @property
    def search_pending(self) -> bool:
        """The last ``fit`` ended without searching (its checkpoint had finished training): nothing is found yet."""
        return self._fit_started and not self._searched

    # --- hooks ------------------------------------------------------------------------------
    def check_before_run(self, pl_module: LightningModule) -> None:
        """Check what the search will need before anything is written: the module's space, the latency table
        (its space, settings, device, batch) and that every constraint admits some arch.

        The CLI calls it before the run folder, config or logger run exist; ``setup()`` calls it too.

        Raises:
            MisconfigurationException: the module has no search space.
            PrerequisiteError: the latency table is of another space, device or batch size.
            ConfigError: a constraint no arch of the space meets.
        """
        space = require_space(pl_module, "EvolutionSearch")
        if self._checked is space:
            return
        if self.latency_table_path is not None and self._latency is None:
            from lightning_nas.cost import LatencyTable

            self._latency = LatencyTable.load(self.latency_table_path)
        if self._latency is not None:  # a table of another space is refused before any work
            self._latency.check(space)
        _constraints.check_feasible(space, self.constraints, self._latency)
        self._checked = space

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate") or (stage == "validate" and not self.run_on_validate):
            return
        self._fit_started, self._searched = stage == "fit", False
        self.check_before_run(pl_module)
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "val_dataloader") or not hasattr(dm, "train_dataloader"):
            raise MisconfigurationException(
                "EvolutionSearch needs a LightningDataModule with train_dataloader() (or calibration_dataloader()) "
                "for BatchNorm re-calibration and val_dataloader() (the held-out split) for scoring."
            )

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on_train_end, not on_fit_end: the latter runs after the strategy's teardown (model off device).
        self.search(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.run_on_validate and trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self.search(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.search_pending and not self.finish_pending_after_fit and trainer.is_global_zero:
            rank_zero_warn(
                f"EvolutionSearch: this fit trained nothing (the checkpoint {trainer.ckpt_path} had finished training),"
                " so no search ran and no arch was found. Finish it with `trainer.search(model, datamodule=dm)` "
                "(lightning_nas.cli.NASTrainer) or `lightning-nas search --config <recipe> --ckpt_path "
                f"{trainer.ckpt_path}`."
            )

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # printed here, after the progress bars' teardown (callbacks before this one), so the summary stays last
        lines, self._summary = self._summary, []
        for line in lines:
            rank_zero_info(line)

    @override
    def state_dict(self) -> dict[str, Any]:
        if not self._settings:
            return {}
        # the runs as of their last finished generation (a generation half scored is replayed from the cache)
        return {"format": STATE_FORMAT, "settings": self._settings, "runs": list(self._snapshot),
                "cache": dict(self._cache)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict) if state_dict.get("settings") else None

    # --- the search -------------------------------------------------------------------------
    def search(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Record]:
        """Run (or resume) the search on every rank; returns the best record per constraint.

        Raises:
            SearchInterrupted: on SIGTERM or SIGINT, after the candidate being scored, with the state saved
                (``search_state.json`` and ``search_interrupted.ckpt`` in the output folder).
        """
        self._searched = True
        space: SearchSpace = pl_module.space  # type: ignore[attr-defined]
        minimal = bool(trainer.fast_dev_run)
        config = EvolutionConfig(2, 1, 0, 0, self.config.mutation_prob, 1) if minimal else self.config
        out_dir = None if minimal else Path(self.output_dir or trainer.default_root_dir)
        self._settings = self._make_settings(space, config)
        self._resume(trainer, out_dir)
        quiet = not trainer.is_global_zero or trainer.progress_bar_callback is None
        progress = SearchProgress(config, self._runs, quiet)
        stop = StopRequests("EvolutionSearch")
        try:
            with stop.catching_sigint(), supernet_preserved(pl_module, space) as self._buffers:
                self._evolve_all(trainer, pl_module, config, out_dir, progress, stop)
                self._select_best()
                self.test_scores = self._test_best(trainer, pl_module) if self.test_best and not minimal else {}
        except StopRequested as halt:
            progress.close()
            raise save_and_interrupt("EvolutionSearch", trainer, out_dir, halt.signal_name, len(self._cache),
                                     self.state_dict()) from None
        finally:
            self._buffers, self._data = {}, None  # the batches and trained buffers are let go
        progress.close()
        self.result = SearchResult(self.strategy, tuple(self.constraints), tuple(r.name for r in self._runs),
                                   tuple(self.history), dict(self.best), config.topk, plot_metric(self.constraints),
                                   dict(self.test_scores))
        if trainer.is_global_zero:
            report = write_report(self.result, trainer, space, out_dir)
            self.run_dir, self._summary = report.run_dir, report.lines
        return self.best

    def _evolve_all(self, trainer: Trainer, pl_module: LightningModule, config: EvolutionConfig,
                    out_dir: Path | None, progress: SearchProgress, stop: StopRequests) -> None:
        space: SearchSpace = pl_module.space  # type: ignore[attr-defined]
        decisions, costs = space.decisions(), self._cost_fn(space)
        score = self._score_fn(trainer, pl_module, progress, stop)

        def saved(run: EvolutionState) -> None:
            self._snapshot = [r.state_dict() for r in self._runs]
            progress.generation_done(run)
            if out_dir is not None and trainer.is_global_zero:
                write_state(out_dir / STATE_FILE, self.state_dict())

        for i, run in enumerate(self._runs):
            c = self.constraints[i] if self.constraints else None
            legal = (lambda a, c=c: c.satisfied(costs(a))) if c is not None else (lambda a: True)
            evolve(decisions, config, score, is_legal=legal, costs=costs, seed=self.seed, run=i, state=run,
                   on_generation=saved)

    def score_arch(self, trainer: Trainer, pl_module: LightningModule, arch: Arch) -> float:
        """Score one arch: re-calibrate BatchNorm on the calibration batches, then top-1 on the validation batches.

        Every candidate starts from the trained buffers, so its score does not depend on the order of scoring.
        """
        data = self._search_data(trainer, pl_module)
        space: SearchSpace = pl_module.space  # type: ignore[attr-defined]
        restore_buffers(space, self._buffers)
        space.activate(arch)
        context = trainer.precision_plugin.forward_context
        recalibrate_bn(space, data.calib, context=context)
        return accuracy(space, data.val, context=context)

    def _make_settings(self, space: SearchSpace, config: EvolutionConfig) -> dict[str, Any]:
        with torch.no_grad():  # the search's result depends on the trained weights: resume only on the same ones
            weights = f"{sum(float(p.double().sum()) for p in space.parameters()):.12e}"
        return {"space": space.fingerprint(), "weights": weights, "config": asdict(config), "strategy": self.strategy,
                "seed": self.seed, "constraints": [c.to_dict() for c in self.constraints],
                "calib_images": self.calib_images, "val_batches": self.val_batches,
                "calib_batch_size": calibration_batch_size(self.calib_batch_size, space)}

    def _resume(self, trainer: Trainer, out_dir: Path | None) -> None:
        """Continue from the checkpointed or saved state with the same settings, if any (rank 0 decides)."""
        state = None
        if trainer.is_global_zero:
            saved = read_state(out_dir / STATE_FILE) if out_dir is not None else None
            state = resume_point([self._loaded, saved], self._settings)
        state = trainer.strategy.broadcast(state, src=0)  # every rank must resume from the same point
        self._runs = [EvolutionState(name=c.name) for c in self.constraints] or [EvolutionState()]
        self._cache = {}
        if state is not None:
            for run, saved in zip(self._runs, state["runs"]):
                run.load_state_dict(saved)
            self._cache = {k: float(v) for k, v in state.get("cache", {}).items()}
        self._snapshot = [r.state_dict() for r in self._runs]

    def _cost_fn(self, space: SearchSpace) -> Callable[[Arch], dict[str, float]]:
        fns = {c.metric: _constraints.cost_function(space, c.metric, self._latency) for c in self.constraints}
        plot = plot_metric(self.constraints)
        if plot not in fns and (fn := plot_axis_cost(space, plot, self._latency)) is not None:
            fns[plot] = fn  # only for the plot's axis
        memo: dict[str, dict[str, float]] = {}

        def costs(arch: Arch) -> dict[str, float]:
            key = arch_key(arch)
            if key not in memo:
                memo[key] = {m: fn(arch) for m, fn in fns.items()}
            return dict(memo[key])

        return costs

    def _score_fn(self, trainer: Trainer, pl_module: LightningModule, progress: SearchProgress,
                  stop: StopRequests) -> Callable[[list[Arch]], list[float]]:
        def score(archs: list[Arch]) -> list[float]:
            keys = [arch_key(a) for a in archs]
            todo = list({k: a for k, a in zip(keys, archs) if k not in self._cache}.items())
            progress.update(len(archs) - len(todo))  # scored before a resume
            rank, world = trainer.global_rank, trainer.world_size
            for start in range(0, len(todo), world):  # one candidate per rank per round, then a stop check
                chunk = todo[start:start + world]
                local = [self.score_arch(trainer, pl_module, a) for _, a in chunk[rank:rank + 1]]
                for (k, _), s in zip(chunk, gather_scores(trainer, local, len(chunk), pl_module.device)):
                    self._cache[k] = s
                progress.update(len(chunk))
                stop.check(trainer)
            return [self._cache[k] for k in keys]

        return score

    def _search_data(self, trainer: Trainer, pl_module: LightningModule) -> _SearchData:
        if self._data is None:
            dm, minimal = trainer.datamodule, bool(trainer.fast_dev_run)
            calib = getattr(dm, "calibration_dataloader", dm.train_dataloader)()
            images = 1 if minimal else self.calib_images
            with torch.random.fork_rng(devices=[]):  # a shuffled loader yields the same batches on every run
                torch.manual_seed(self.seed)
                batch = calibration_batch_size(self.calib_batch_size, space=pl_module)
                inputs = collect_inputs(calib, images, pl_module.device, batch)
            val = collect_batches(dm.val_dataloader(), 1 if minimal else self.val_batches, pl_module.device)
            convert = trainer.precision_plugin.convert_input  # e.g. bf16-true: inputs in the weights' dtype
            self._data = _SearchData([convert(x) for x in inputs], [(convert(x), y) for x, y in val])
        return self._data

    def _test_best(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Top-1 of each best arch on the test split (after the search; the search never sees it)."""
        dm = trainer.datamodule
        if not callable(getattr(dm, "test_dataloader", None)):
            return {}
        test = collect_batches(dm.test_dataloader(), None, pl_module.device)
        data, space = self._search_data(trainer, pl_module), pl_module.space  # type: ignore[attr-defined]
        context = trainer.precision_plugin.forward_context
        scores = {}
        for name, rec in self.best.items():
            restore_buffers(space, self._buffers)
            space.activate(rec["arch"])
            recalibrate_bn(space, data.calib, context=context)
            scores[name] = accuracy(space, test, context=context)
        return scores

    def _select_best(self) -> None:
        self.history = [r for run in self._runs for r in run.history]
        self.best = {}
        for run, c in zip(self._runs, self.constraints or [None]):
            legal = [r for r in self.history if c is None or c.satisfied(r["costs"])]
            if legal:
                self.best[run.name] = top_k(legal, 1)[0]

