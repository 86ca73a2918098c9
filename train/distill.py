"""Distillation: teach the policy network the oracle's decisions, with DAgger rounds, in Lightning.

Round 0 rolls the oracle itself out through the environment and records (observation, oracle action); every later
round rolls the current student out and has the oracle relabel the states the student reached, then trains a fresh
network on everything gathered so far (as DAgger does; a round's training is seconds next to its rollouts, so each
round trains long enough to copy sharp decisions). The oracle's rule (`SegmentTable.act`) answers from the
student's last two FULL steps and the FULL steps it has left. The segment under way is costed from the table
(measured from the reference trajectory), or, with `relabel="reached"`, from the student's own latents and caches
(`measure_reached`: its trajectory replayed, with reuse runs forked after each of its FULL steps). At the lowest
budgets (`searched_budgets`) the table's costs stop adding up, so there the teacher is one schedule searched with
real rollouts on train pairs (`searched_schedules`), followed step by step and kept in step with its spending
(`ScheduleFollower`). As in DAgger (Ross et al. 2011), the policy kept is the round's student with the best
validation score, not necessarily the last: a round's relabelled states can pull the student away from what the
oracle does. The rounds' rollouts are the costliest phase, so DAgger stops after `dagger_patience` rounds whose
student is no better than the best so far. TensorBoard gets the loss and oracle agreement per step and epoch, and
every `student_val_every` epochs the student's real PSNR and computed fraction per budget on validation pairs
(`StudentValidation`).

Everything a run produces lives in its run directory and is reused when the run is started again: the
amplification profile, the segment tables, each round's data, Lightning's checkpoints.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from cachepilot import checks
from cachepilot.envs.episodes import CacheEpisodes
from cachepilot.envs.spec import RunSpec, Setting
from cachepilot.evaluation.oracle import (DEFAULT_MAX_GAP, GAIN_FILE, SegmentTable, amplification,
                                          fulls_for_budget,
                                          measure_segments, reference_latents, stored_gain)
from cachepilot.evaluation.search import SearchConfig, SharedSearchResult, forecast_reuses, search_shared
from cachepilot.evaluation.validation import evaluate_student
from cachepilot.io import atomic_write_npz, atomic_write_text, locked, read_or_set_aside
from cachepilot.models.registry import pipeline_folder
from cachepilot.parallel import Shard
from cachepilot.policies.learned import PolicyNet, lowest_budget
from cachepilot.policies.policy_file import PolicyBundle
from cachepilot.policies.schedule import FixedSchedule, evenly_spaced, full_steps_schedule, resample_schedule

from .checkpoints import VerifiedCheckpoint, resumable_checkpoint
from .trainer import Trainer, feasible_budgets, validated_policy
from .quiet import silence_third_party_notices
from .rollouts import OracleTeacher, relabel_from_reached, run_episodes


@dataclass
class DistillConfig:
    """How the policy is distilled (what it is trained on is the `RunSpec`: pairs, steps, guidance, budgets, each
    pair rolled out at every budget per round)."""

    dagger_rounds: int = 2  # rounds after the oracle's own round
    dagger_patience: int = 1  # DAgger stops after this many rounds without a better student (0: runs every round)
    relabel: str = "reference"  # DAgger's segment under way costed from the table, or "reached": from the student's state
    searched_budgets: tuple[float, ...] = (0.15,)  # those of the budgets taught by a shared searched schedule, not the DP
    search_pairs: int = 8  # train pairs that searched schedule is scored on
    search_rounds: int = 6
    search_proposals: int = 8  # candidate moves per round, each run on every search pair
    search_batch: int | None = None  # rollouts per generation (None: a round's all at once, split over processes)
    pairs_per_setting: int = 2  # train pairs taught at each setting but the primary one (which teaches them all)
    setting_search_rounds: int = 0  # rounds of moves after the best start, for the other settings' schedules
    epochs: int = 200  # per round, each training a fresh network on everything gathered so far
    batch_size: int = 256
    lr: float = 3e-3
    hidden: tuple[int, ...] = (64, 64)
    gain_pairs: int = 2  # validation pairs that measure the amplification profile
    gain_every: int = 4
    max_gap: int = DEFAULT_MAX_GAP
    num_envs: int = 8
    seed: int = 0
    eval_budgets: tuple[float, ...] = (0.15, 0.25, 0.35, 0.5)
    student_val_every: int = 50  # epochs between real-generation scores of the student on the val pairs
    trainer: dict = field(default_factory=dict)  # Lightning Trainer flags: accelerator, devices, strategy, ...

    def __post_init__(self):
        for name in ("epochs", "batch_size", "gain_pairs", "gain_every", "max_gap", "num_envs",
                     "student_val_every", "search_pairs", "search_rounds", "search_proposals", "pairs_per_setting"):
            setattr(self, name, checks.count(name, getattr(self, name)))
        self.dagger_rounds = checks.count("dagger_rounds", self.dagger_rounds, low=0)
        self.dagger_patience = checks.count("dagger_patience", self.dagger_patience, low=0)
        self.setting_search_rounds = checks.count("setting_search_rounds", self.setting_search_rounds, low=0)
        self.lr = checks.positive("lr", self.lr)
        self.seed = checks.seed(self.seed)
        self.eval_budgets = tuple(checks.budget(b) for b in self.eval_budgets)
        self.hidden = tuple(checks.count("hidden width", h) for h in self.hidden)
        self.relabel = checks.choice("relabel", self.relabel, ("reached", "reference"))
        self.searched_budgets = tuple(checks.budget(b, "searched budget") for b in self.searched_budgets)
        if self.search_batch is not None:
            self.search_batch = checks.count("search_batch", self.search_batch)


class ActionDataModule(L.LightningDataModule):
    """(observation, valid-action mask, oracle action) triples; 10% held out for validation loss and accuracy."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int = 256, seed: int = 0):
        super().__init__()
        self.arrays, self.batch_size, self.seed = arrays, batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        n = len(self.arrays["labels"])
        order = np.random.default_rng(self.seed).permutation(n)
        cut = max(1, n // 10)
        tensors = [torch.as_tensor(self.arrays[k]) for k in ("obs", "masks", "labels")]
        self.val = TensorDataset(*(t[order[:cut]] for t in tensors))
        self.train = TensorDataset(*(t[order[cut:]] for t in tensors))

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=4096)


class DistillModule(L.LightningModule):
    """Cross-entropy of the network's masked logits against the oracle's action."""

    def __init__(self, obs_size: int, num_actions: int, hidden=(64, 64), lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = PolicyNet(obs_size, num_actions, hidden)

    def _loss(self, batch, stage: str):
        obs, masks, labels = batch
        logits = self.net(obs.float()).masked_fill(~masks.bool(), -1e9)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/accuracy", acc, prog_bar=True, sync_dist=True)
        return loss

    def training_step(self, batch, _idx):
        return self._loss(batch, "train")

    def validation_step(self, batch, _idx):
        self._loss(batch, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class StudentValidation(L.Callback):
    """Every `every` epochs, generate the val pairs with the student and log its PSNR and computed fraction:
    agreement with the oracle is a proxy, this is the number that matters. The last epoch scores every
    budget; the ones before it only the middle budget, to keep the cost down. Runs on the global-zero
    process only; the x axis counts epochs across DAgger rounds."""

    def __init__(self, val, budgets, every: int, epoch_offset: int = 0):
        self.val, self.budgets, self.every, self.epoch_offset = val, tuple(budgets), max(1, every), epoch_offset
        self.last: dict[float, dict] | None = None

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch + 1
        if (epoch % self.every and epoch != trainer.max_epochs) or not trainer.is_global_zero:
            return
        net = copy.deepcopy(module.net).cpu().eval()
        last = epoch == trainer.max_epochs
        scores = evaluate_student(self.val, net, self.budgets if last else (self.budgets[len(self.budgets) // 2],))
        self.last = scores if last else None
        if trainer.logger is not None:
            for budget, score in scores.items():
                for key in ("psnr", "computed_fraction"):
                    trainer.logger.experiment.add_scalar(f"student_val/{key}@{budget}", score[key],
                                                         self.epoch_offset + epoch)


def fit(arrays: dict[str, np.ndarray], run_dir: Path, config: DistillConfig, round_: int = 0, tag: str = "",
        logger=None, callbacks=(), log=print) -> PolicyNet:
    """One round of supervised training on (observation, mask, oracle action) arrays (resumes this round's
    checkpoint if the run was interrupted; `tag` names the settings the checkpoint belongs to)."""
    silence_third_party_notices()
    L.seed_everything(config.seed + round_, workers=True, verbose=False)
    module = DistillModule(arrays["obs"].shape[1], arrays["masks"].shape[1], config.hidden, config.lr)
    ckpt_dir = run_dir / "checkpoints" / f"round{round_}{tag}"
    callback = VerifiedCheckpoint(dirpath=ckpt_dir, save_last=True, enable_version_counter=False)
    flags = {"max_epochs": config.epochs, "enable_model_summary": False, "log_every_n_steps": 5,
             "enable_progress_bar": False, "accelerator": "cpu", "devices": 1, **config.trainer}
    trainer = L.Trainer(default_root_dir=run_dir, callbacks=[callback, *callbacks],
                        logger=logger if logger is not None else False, **flags)
    last = ckpt_dir / "last.ckpt"
    resumable = resumable_checkpoint(last, log) is not None
    trainer.fit(module, datamodule=ActionDataModule(arrays, config.batch_size, config.seed),
                ckpt_path=str(last) if resumable else None, weights_only=True)
    return module.net.cpu().eval()


SEARCHED_FILE = "searched_schedules.json"


class SettingOracle:
    """The oracle at one setting of the run, kept in its own `folder` of the run (the primary setting's is the run
    folder itself). At the primary setting: the amplification profile, the segment tables of every train pair and the
    DP's rule, with the searched schedules at the searched budgets. At every other setting, per budget, the best
    schedule by real rollouts on the pairs it teaches there (`setting_schedules`): the DP's segment costs, measured at
    one step size, stop adding up at others (at 20 steps its schedules score below the uniform schedule with
    forecasts), while a schedule chosen by its real outcome does not depend on them."""

    def __init__(self, distiller: "Distiller", setting: Setting, pair_ids: list[int], folder: Path):
        self.distiller, self.setting, self.pair_ids, self.folder = distiller, setting, list(pair_ids), folder
        self.config, self.log = distiller.config, distiller.log
        self._reference_latents = None
        self.chosen: dict[str, dict] = {}  # per budget, the schedule setting_schedules chose: its start and PSNR

    @property
    def episodes(self) -> CacheEpisodes:
        return self.distiller.episodes

    @property
    def primary(self) -> bool:
        return self.setting == self.distiller.spec.primary

    def gain(self) -> np.ndarray:
        """The amplification profile at the primary setting: the run's own, else the one beside the model's weights
        (same weights, steps and guidance only), else measured now on validation pairs."""
        episodes, config, (steps, guidance) = self.episodes, self.config, (self.setting.steps, self.setting.guidance)
        store = episodes.store_at(self.setting)
        folder = pipeline_folder(episodes.pipe)
        for path in (self.folder / GAIN_FILE, *([folder / GAIN_FILE] if folder else [])):
            gain = stored_gain(path, store.model_hash, steps, guidance, self.log)
            if gain is not None:
                return gain
        val = [prompt for prompt, _ in self.distiller.val.pairs][: config.gain_pairs]
        self.log(f"oracle: measuring the error-amplification profile on {len(val)} val prompts")
        gain = amplification(episodes.pipe, [(p, 10_000 + i) for i, p in enumerate(val)], steps, guidance,
                             config.gain_every)
        if self.distiller.shard.rank == 0:
            atomic_write_npz(self.folder / GAIN_FILE, gain=gain, model_hash=np.array(store.model_hash),
                             steps=np.array(steps), guidance=np.array(guidance))
        return gain

    def oracle_tables(self) -> dict[int, SegmentTable]:
        """Segment tables of the train pairs at the primary setting (cached in the folder; none elsewhere); also stores
        each pair's full-compute output as its reference, since the oracle's reference pass computed it."""
        if not self.primary:
            return {}
        episodes, config, log, steps = self.episodes, self.config, self.log, self.setting.steps
        store, shard = episodes.store_at(self.setting), self.distiller.shard
        gain = self.gain()
        path = self.folder / "oracle_tables.npz"
        stored = self._stored_tables(path, log)
        missing = [i for i in self.pair_ids if i not in stored]
        shard.wait()  # every process has listed what is missing before any of them writes
        measured = {}
        for chunk in shard.take([missing[k : k + config.num_envs] for k in range(0, len(missing), config.num_envs)]):
            log(f"oracle, {self.setting}: segment tables for pairs {', '.join(map(str, chunk))}")
            found, frames = measure_segments(episodes.pipe, [episodes.pairs[i] for i in chunk], steps,
                                             self.setting.guidance, config.max_gap, gain, forecast=True)
            for i, table, output in zip(chunk, found, frames):
                measured[i] = (table.errors, table.forecast)
                store.put(*episodes.pairs[i], output)
            with locked(self.folder, ".oracle_tables.lock"):  # merged with what other processes wrote
                merged = self._stored_tables(path, lambda *a: None) | measured
                atomic_write_npz(path, **{f"errors_{i}": e for i, (e, _) in merged.items()},
                                 **{f"forecast_{i}": f for i, (_, f) in merged.items()})
        for part in shard.gather(measured):
            stored |= part
        return {i: SegmentTable(e, config.max_gap, gain, f) for i, (e, f) in sorted(stored.items())}

    def _stored_tables(self, path: Path, log) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per pair, the (errors, forecast) arrays stored at `path` for this step count."""
        steps = self.setting.steps
        stored = read_or_set_aside(path, lambda p: dict(np.load(p)), log) or {}
        if any(k.startswith("errors_") and v.shape != (steps, steps + 1) for k, v in stored.items()):
            log(f"oracle: {path} holds tables for another step count; measuring them again")
            return {}
        return {int(k.split("_")[1]): (v, stored[f"forecast_{k.split('_')[1]}"]) for k, v in stored.items()
                if k.startswith("errors_") and f"forecast_{k.split('_')[1]}" in stored}

    def setting_schedules(self, primary_tables: dict[int, SegmentTable],
                          searched: dict[float, SharedSearchResult]) -> dict[float, list]:
        """Per budget, the schedule with the best mean PSNR on this setting's pairs (`search_shared`, with
        `setting_search_rounds` rounds of moves) from: the uniform schedule, with and without first-order forecasts,
        and the primary setting's DP schedule of each of these pairs and searched schedule at that budget, carried to
        this step count (`resample_schedule`). Cached in the folder."""
        config, episodes, log, steps = self.config, self.episodes, self.log, self.setting.steps
        pairs = [episodes.pairs[i] for i in self.pair_ids]
        search_config = SearchConfig(rounds=config.setting_search_rounds, proposals=config.search_proposals,
                                     seed=config.seed, batch=config.search_batch)
        inputs = json.loads(json.dumps({"model": episodes.store_at(self.setting).model_hash, "steps": steps,
                                        "guidance": self.setting.guidance, "pairs": pairs,
                                        "search": asdict(search_config),
                                        "searched": {f"{b:g}": [str(a) for a in r.schedule]
                                                     for b, r in searched.items()}}))
        path = self.folder / SEARCHED_FILE
        stored = read_or_set_aside(path, _searched_file, log) or {}
        found = stored["budgets"] if stored.get("inputs") == inputs else {}
        spec = replace(self.distiller.spec.at(self.setting), pipe=episodes.pipe,
                       references=episodes.store_at(self.setting))
        primary_steps = self.distiller.spec.steps
        for budget in self.distiller.budgets_at(self.setting):
            if f"{budget:g}" in found:
                continue
            fulls = fulls_for_budget(budget, steps)
            uniform = full_steps_schedule(steps, evenly_spaced(steps, fulls))
            starts = {"uniform": uniform, "uniform-f1": forecast_reuses(uniform, 1)}
            carried = {f"primary-dp-pair{i}": primary_tables[i] for i in self.pair_ids if i in primary_tables}
            for name, table in carried.items():
                try:
                    starts[name] = resample_schedule(table.schedule(fulls_for_budget(budget, primary_steps)), steps, fulls)
                except ValueError:  # the DP's gaps cannot span the generation with this few FULL steps
                    continue
            if budget in searched:
                starts["primary-searched"] = resample_schedule(searched[budget].schedule, steps, fulls)
            result = search_shared(spec, budget, search_config, starts, log=lambda *a: None, pairs=pairs,
                                   shard=self.distiller.shard)
            log(f"{self.setting}, budget {budget:g}: the {result.start} schedule, {np.mean(result.psnr):.2f} dB on "
                f"{len(pairs)} pairs")
            found[f"{budget:g}"] = result.as_dict()
            self.distiller.write_text(path, json.dumps({"inputs": inputs, "budgets": found}, allow_nan=False))
        self.chosen = {b: {"start": r["start"], "psnr": round(float(np.mean(r["psnr"])), 2)} for b, r in found.items()}
        return {float(b): SharedSearchResult.from_dict(r).schedule for b, r in found.items()}

    def teacher(self, tables: dict[int, SegmentTable], searched: dict[float, SharedSearchResult]) -> OracleTeacher:
        """At the primary setting, the oracle's rule on its tables, and the searched schedules at the searched
        budgets; elsewhere the setting's schedules (`setting_schedules`, from the primary's `tables`)."""
        steps, episodes = self.setting.steps, self.episodes
        if self.primary:
            schedules = {b: r.schedule for b, r in searched.items()}
            return OracleTeacher(tables, episodes.actions, steps, episodes.num_blocks, schedules)
        return OracleTeacher({}, episodes.actions, steps, episodes.num_blocks, self.setting_schedules(tables, searched))

    def round_data(self, round_: int, teacher: OracleTeacher, net, tables) -> tuple[dict, dict | None]:
        """A round's (observation, mask, label) arrays at this setting: stored, or rolled out now (by the oracle in
        round 0, by the student `net` after it) and labelled by the oracle; with what relabelling from the reached
        states changed."""
        config, episodes, log = self.config, self.episodes, self.log
        path = self.folder / f"round{round_}-{self.distiller.rounds_key(self)}.npz"
        arrays = read_or_set_aside(path, lambda p: dict(np.load(p)), log)
        if arrays is not None:
            return arrays, None
        budgets = self.distiller.budgets_at(self.setting)
        jobs = [(p, b) for p in self.pair_ids for b in budgets]
        log(f"round {round_}, {self.setting}: {len(jobs)} episodes rolled out by the "
            f"{'oracle' if net is None else 'student'}, labelled by the oracle")
        rollouts = run_episodes(episodes, jobs, teacher, net=net, batch=config.num_envs, setting=self.setting,
                                shard=self.distiller.shard)
        relabelled = None
        if net is not None and config.relabel == "reached" and self.primary:
            clock = time.perf_counter()
            if self._reference_latents is None:
                self._reference_latents = reference_latents(episodes.pipe, episodes.pairs, self.setting.steps,
                                                            self.setting.guidance)
            changed = relabel_from_reached(episodes, rollouts, teacher, self._reference_latents, tables[self.pair_ids[0]].gain,
                                           config.max_gap, batch=6 * config.num_envs)
            relabelled = {"labels_changed": changed, "labels": len(rollouts.labels),
                          "seconds": round(time.perf_counter() - clock, 1)}
            log(f"round {round_}: relabelled from the states reached: {changed} of {len(rollouts.labels)} labels "
                f"changed ({relabelled['seconds']:.0f} s)")
        arrays = rollouts.arrays()
        if self.distiller.shard.rank == 0:
            atomic_write_npz(path, **arrays)
        return arrays, relabelled


class Distiller(Trainer):
    """Distillation from the oracle with DAgger rounds, over a `RunSpec`:
    `Distiller(spec, DistillConfig(), run_dir).learn()` returns the policy, `.save(out)` writes its policy file.
    Over several settings, the primary one teaches every train pair and each other setting `pairs_per_setting` of
    them (a different few per setting), and one network learns from all of it.
    Everything the run produces lives in `run_dir` and is reused when it is started again."""

    def __init__(self, spec: RunSpec, config: DistillConfig | None = None, run_dir="runs/distill.run", log=print,
                 shard: Shard = Shard()):
        super().__init__(spec, config or DistillConfig(), run_dir, shard.first_says(log))
        self.shard = shard
        self.eval_budgets = feasible_budgets(spec.budgets, self.config.eval_budgets, spec.steps_range[0], self.log)

    def write_text(self, path: Path, text: str) -> None:
        """A file every process holds the same content of, written by the first."""
        if self.shard.rank == 0:
            atomic_write_text(path, text)

    @cached_property
    def episodes(self) -> CacheEpisodes:
        """The training pairs' episodes (built on first use: it loads the pipeline)."""
        return CacheEpisodes(self.spec)

    @cached_property
    def val(self) -> CacheEpisodes:
        """The validation pairs' episodes at the primary setting, on the same pipeline and reference store."""
        return CacheEpisodes(self.spec.at(self.spec.primary).validation(self.episodes.pipe,
                                                                         self.episodes.store_at(self.spec.primary)))

    @cached_property
    def oracles(self) -> list[SettingOracle]:
        """The oracle at each setting, the primary one first."""
        n, per = len(self.episodes.pairs), min(self.config.pairs_per_setting, len(self.episodes.pairs))
        others = [s for s in self.spec.setting_list() if s != self.spec.primary]
        return [SettingOracle(self, self.spec.primary, list(range(n)), self.run_dir)] + [
            SettingOracle(self, s, sorted({(k * per + j) % n for j in range(per)}),
                          self.run_dir / f"setting-{s.steps}-{s.guidance:g}") for k, s in enumerate(others)]

    @property
    def searched_budgets(self) -> tuple[float, ...]:
        """Those of the spec's budgets that `config.searched_budgets` names."""
        return named_budgets(self.spec.budgets, self.config.searched_budgets)

    def budgets_at(self, setting: Setting) -> tuple[float, ...]:
        """The spec's budgets a generation at `setting` can keep."""
        return keepable_budgets(self.spec.budgets, setting.steps)

    def settings(self) -> dict:
        """The config as this run applies it, with what the spec adds (for the card and the rounds' file names)."""
        return asdict(self.config) | {"searched_budgets": self.searched_budgets, "pairs": self.spec.pairs,
                                      "val_pairs": self.spec.val_pairs, "budgets": self.spec.budgets,
                                      "search_pairs": min(self.config.search_pairs, len(self.episodes.pairs))}

    def learn(self) -> PolicyBundle:
        """Train by distillation + DAgger (resuming what the run folder holds); the policy kept is the round's
        student with the best mean validation PSNR at the primary setting."""
        config, episodes, log = self.config, self.episodes, self.log
        started = time.perf_counter()
        tables = self.oracles[0].oracle_tables()
        searched = self.searched_schedules(tables)
        teachers = {o.setting: o.teacher(tables, searched) for o in self.oracles}
        self.logger = L.pytorch.loggers.TensorBoardLogger(self.run_dir, name="tensorboard", version=0)
        gathered, net, history, best = [], None, [], None
        for round_ in range(config.dagger_rounds + 1):
            relabelled = {}
            for oracle in self.oracles:
                arrays, changed = oracle.round_data(round_, teachers[oracle.setting], net, tables)
                gathered.append(arrays)
                if changed:
                    relabelled[str(oracle.setting)] = changed
            merged = {k: np.concatenate([a[k] for a in gathered]) for k in ("obs", "masks", "labels")}
            student_val = StudentValidation(self.val, self.eval_budgets, config.student_val_every,
                                            round_ * config.epochs)
            net = self.fit(merged, round_, student_val)
            scores = self.shard.gather(  # the first process scores the student, every one keeps its scores
                (student_val.last or evaluate_student(self.val, net, self.eval_budgets)) if self.shard.rank == 0
                else None)[0]  # (no scores from the callback: a finished round resumed)
            history.append({"round": round_, "samples": int(len(merged["labels"])), "val": scores,
                            **({"relabelled_from_reached": relabelled} if relabelled else {})})
            log(f"round {round_}: {len(merged['labels'])} samples; val " + ", ".join(
                f"budget {b}: {s['psnr']:.2f} dB at {s['computed_fraction']:.2f}" for b, s in scores.items()))
            if best is None or mean_psnr(scores) > mean_psnr(best[2]):
                best = (round_, copy.deepcopy(net), scores)
            elif dagger_stops(round_, best[0], config):
                log(f"round {round_}'s student is no better than round {best[0]}'s: DAgger stops here")
                break
        self.logger.experiment.flush()
        selected, net, scores = best
        log(f"keeping round {selected}'s student: the best mean val PSNR over the budgets")
        if self.shard.rank != 0:  # the first process validates the policy and holds it
            return None
        training = self.training_record(
            "distill", started, rounds=history, selected_round=selected,
            oracle="segment-error DP over STEP and STEP_F1 edges (cachepilot.evaluation.oracle); at the searched "
                   "budgets a shared schedule searched with real rollouts (cachepilot.evaluation.search); at the other "
                   "settings, per budget, the best schedule by real rollouts on that setting's pairs",
            settings={str(o.setting): {"pairs": o.pair_ids, **({"schedules": o.chosen} if o.chosen else {})}
                      for o in self.oracles},
            searched_schedules={f"{b:g}": {"schedule": [str(a) for a in r.schedule],
                                           "train_psnr": round(float(np.mean(r.psnr)), 2), "start_psnr": r.start_psnr,
                                           "cpu_minutes": round(r.cpu_seconds / 60, 1)}
                                for b, r in searched.items()})
        self.policy, self.table = validated_policy(net, episodes, self.val, training, self.eval_budgets, scores, log,
                                                   trained=(self.spec.steps_range, self.spec.guidance_range))
        return self.policy

    def fit(self, arrays: dict[str, np.ndarray], round_: int, student_val: StudentValidation) -> PolicyNet:
        """One round's network. Where the Trainer's flags spread it over this run's processes, they all train it (DDP);
        otherwise the first process trains it as one process does and the others take its weights."""
        config, shard = self.config, self.shard
        flags = {"devices": 1, "num_nodes": 1, **config.trainer}
        together = isinstance(flags["devices"], int) and flags["devices"] * flags["num_nodes"] == shard.world
        if together or shard.rank == 0:
            net = fit(arrays, self.run_dir, config, round_, "-" + self.rounds_key(self.oracles[0]), self.logger,
                      [student_val], self.log)
        if together:
            return net
        state = shard.gather(net.state_dict() if shard.rank == 0 else None)[0]
        if shard.rank != 0:
            net = DistillModule(arrays["obs"].shape[1], arrays["masks"].shape[1], config.hidden, config.lr).net
            net.load_state_dict(state)
        return net.eval()

    def searched_schedules(self, tables: dict[int, SegmentTable]) -> dict[float, SharedSearchResult]:
        """Per searched budget, one schedule searched with real rollouts for the best mean PSNR on the first
        `search_pairs` train pairs at the primary setting (`search_shared`), from the uniform schedules and each
        pair's DP schedule. At low budgets the DP's segment costs stop adding up (they compound) and its schedules
        sit near the uniform one, while such a search finds schedules that carry over to other pairs. Cached in the
        run folder."""
        if not self.searched_budgets:
            return {}
        episodes, config, log, primary = self.episodes, self.config, self.log, self.spec.primary
        steps, store = primary.steps, episodes.store_at(primary)
        pairs = episodes.pairs[: config.search_pairs]
        search_config = SearchConfig(rounds=config.search_rounds, proposals=config.search_proposals, seed=config.seed,
                                     batch=config.search_batch)
        inputs = json.loads(json.dumps({"model": store.model_hash, "steps": steps, "guidance": primary.guidance,
                                        "pairs": pairs, "search": asdict(search_config)}))  # as read back from the file
        path = self.run_dir / SEARCHED_FILE
        stored = read_or_set_aside(path, _searched_file, log) or {}
        found = stored["budgets"] if stored.get("inputs") == inputs else {}
        search_spec = replace(self.spec.at(primary), pairs=len(pairs), pipe=episodes.pipe, references=store)
        for budget in self.searched_budgets:
            if f"{budget:g}" in found:
                continue
            fulls = fulls_for_budget(budget, steps)
            uniform = list(FixedSchedule.uniform(steps, fulls / steps).actions)
            starts = {"uniform": uniform, "uniform-f1": forecast_reuses(uniform, 1)}
            for i in range(len(pairs)):
                try:
                    starts[f"oracle-dp-pair{i}"] = tables[i].schedule(fulls)
                except ValueError:  # the DP's gaps cannot span the generation with this few FULL steps
                    continue
            result = search_shared(search_spec, budget, search_config, starts, log=log, shard=self.shard)
            log(f"shared schedule, budget {budget:g}: {np.mean(result.psnr):.2f} dB on {len(pairs)} train pairs "
                f"({result.cpu_seconds / 60:.1f} CPU minutes)")
            found[f"{budget:g}"] = result.as_dict()
            self.write_text(path, json.dumps({"inputs": inputs, "budgets": found}, allow_nan=False))
        return {b: SharedSearchResult.from_dict(found[f"{b:g}"]) for b in self.searched_budgets}

    def rounds_key(self, oracle: SettingOracle) -> str:
        """A short digest of what a setting's round data and the checkpoints depend on, in their file names: a rerun
        with other settings (budgets, teacher, network, pairs, generation settings) starts its rounds afresh instead
        of resuming another run's."""
        kept = {k: v for k, v in self.settings().items()
                if k not in ("trainer", "student_val_every", "dagger_rounds", "dagger_patience")}
        episodes, setting = self.episodes, oracle.setting
        about = {"config": kept, "model": episodes.store_at(setting).model_hash, "steps": setting.steps,
                 "guidance": setting.guidance, "pairs": [episodes.pairs[i] for i in oracle.pair_ids],
                 **({"settings": [str(s) for s in self.spec.setting_list()]} if self.spec.settings else {})}
        return hashlib.sha256(json.dumps(about, sort_keys=True, default=str).encode()).hexdigest()[:8]


def dagger_stops(round_: int, best_round: int, config: DistillConfig) -> bool:
    """Whether DAgger ends after `round_`, its best student so far `best_round`'s: rounds are left, and
    `dagger_patience` of them have passed without a better student (a patience of 0 runs every round)."""
    return (bool(config.dagger_patience) and round_ < config.dagger_rounds
            and round_ - best_round >= config.dagger_patience)


def named_budgets(budgets, names) -> tuple[float, ...]:
    """Those of `budgets` that `names` names."""
    return tuple(b for b in budgets if any(abs(b - n) < 1e-9 for n in names))


def keepable_budgets(budgets, steps: int) -> tuple[float, ...]:
    """Those of `budgets` a `steps`-step generation can keep (its first step computes in full)."""
    return tuple(b for b in budgets if b >= lowest_budget(steps) - 1e-9)


def _searched_file(path: Path) -> dict:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("budgets"), dict):
        raise ValueError("not a file of searched schedules")
    for entry in data["budgets"].values():
        SharedSearchResult.from_dict(entry)  # every entry reads back, or the file is damaged
    return data


def mean_psnr(scores: dict[float, dict]) -> float:
    """A round's validation score: the budget guard fixes the compute at each budget, so PSNR alone ranks."""
    return float(np.mean([s["psnr"] for s in scores.values()]))
