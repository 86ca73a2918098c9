"""`cachepilot ablate`: every cache method on the same prompts and seeds, scored against the uncached output.

NoCache (the reference), each baseline across its knob sweep, the peers (diffusers' caches, cache-dit when
installed), the oracle at a few budgets and each learned policy shipped beside the model at several
budgets. Each (method, knob) run is one batched generation of all pairs; its per-pair scores (and the
frames of the first pairs, for the side-by-side GIF) are stored as soon as it finishes, under a folder
named by the model hash and the setting, so a rerun only computes what is missing. A run that read files
beside the weights (a policy, the calibration, the oracle's profile) records their digest and is computed
again once they change. `report` turns the runs into results.csv / results.json, the Pareto table, pareto.png and
the GIF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from cachepilot import checks
from cachepilot.envs.spec import RunSpec
from cachepilot.errors import CachepilotError
from cachepilot.evaluation.harness import generate_with
from cachepilot.evaluation.oracle import (DEFAULT_MAX_GAP, GAIN_FILE, SegmentTable, fulls_for_budget, measure_segments,
                                          stored_gain)
from cachepilot.evaluation.peers import PEERS, generate_with_peer
from cachepilot.evaluation.search import SearchResult, realise, search
from cachepilot.io import atomic_write_npz, atomic_write_text
from cachepilot.parallel import Shard
from cachepilot.models.adapters import num_blocks
from cachepilot.policies.registry import BASELINES, make_baseline
from cachepilot.policies.uniform import UniformCache
from cachepilot.policies.schedule import FixedSchedule, full_steps_schedule
from cachepilot.runtime import Action

from .config import UNIFORM, AblationConfig, Entry, Kind, Run, sweep_entries
from .plan import learned_policies, plan
from .report import write_report
from .setting import Setting, segment_arrays


class Runner:
    """Computes the entries a setting has not stored yet."""

    def __init__(self, setting: Setting, bundles: dict):
        self.setting, self.bundles, self._oracle_tables, self._gain = setting, bundles, None, None

    def run(self, entry: Entry) -> Run:
        s, c = self.setting, self.setting.config
        if entry.kind is Kind.PEER:
            frames, fractions, wall = generate_with_peer(s.pipe, PEERS[entry.method], entry.settings, s.prompts, s.seeds,
                                                         c.steps, c.guidance, s.calibration)
        else:
            frames, fractions, wall = generate_with(s.pipe, self.policy(entry), s.prompts, s.seeds, c.steps, c.guidance)
        return s.score(entry, frames, fractions, wall)

    def policy(self, entry: Entry):
        s = self.setting
        if entry.kind is Kind.LEARNED:
            return self.bundles[entry.method].policy(entry.knob)
        fulls = fulls_for_budget(entry.knob, s.config.steps)
        if entry.kind is Kind.SCHEDULE:
            order, basis = UNIFORM[entry.method]
            return UniformCache(fraction=fulls / s.config.steps, order=order, basis=basis)
        if entry.kind is Kind.DP:
            return FixedSchedule.per_sample([t.schedule(fulls) for t in self.oracle_tables()])
        if entry.kind is Kind.ORACLE:
            return FixedSchedule.per_sample(self.searched(entry.knob).schedules, s.config.oracle_search.forecast_basis)
        return make_baseline(entry.method, calibration=s.calibration, num_blocks=num_blocks(s.pipe.transformer),
                             **entry.settings)

    def searched(self, budget: float) -> SearchResult:
        """The searched oracle's schedules at `budget` (searched once, stored with the runs)."""
        s, c = self.setting, self.setting.config
        stored = s.stored_search(budget)
        if stored is not None and stored[0] == s.search_inputs(budget):
            return stored[1]
        spec = RunSpec(s.source, tuple(s.prompts), len(s.prompts), steps=c.steps, guidance=c.guidance, pipe=s.pipe)
        result = search(spec, budget, c.oracle_search, self.search_starts(budget), s.reference, s.log)
        s.log(f"oracle search, budget {budget:g}: {result.cpu_seconds / 60:.1f} CPU minutes, "
              f"{result.wall_seconds / 60:.1f} minutes")
        atomic_write_text(s.search_path(budget), json.dumps({"inputs": s.search_inputs(budget),
                                                             "result": result.as_dict()}, allow_nan=False))
        return result

    def search_starts(self, budget: float) -> dict[str, list[list[Action]]]:
        """The schedules the search starts from: the DP's (where the model has a gain profile), the uniform ones,
        TaylorSeer's best setting within the budget and the best learned policy at the budget (from their stored
        runs), each as the runtime realised it on these pairs; and where one FULL is all the budget holds, that one."""
        s, c = self.setting, self.setting.config
        pairs = (s.prompts, s.seeds, c.steps, c.guidance)
        starts, fulls = {}, fulls_for_budget(budget, c.steps)
        if self.has_gain():
            starts["oracle-dp"] = [t.schedule(fulls) for t in self.oracle_tables()]
        if fulls < 2:  # the uniform schedule computes the last step too: one FULL, the first step's
            starts["first-step"] = [full_steps_schedule(c.steps, {0})] * len(s.prompts)
        for name in ("uniform", "uniform-f1", "uniform-f2"):
            starts[name] = realise(s.pipe, self.policy(Entry(name, budget, Kind.SCHEDULE, "budget")), *pairs)
        best = [s.best_within(sweep_entries(BASELINES["taylorseer"], Kind.BASELINE, True), budget), s.best_learned(budget)]
        for run in filter(None, best):
            starts[run.entry.key] = realise(s.pipe, self.policy(run.entry), *pairs)
        return starts

    def has_gain(self) -> bool:
        try:
            self.oracle_gain()
            return True
        except CachepilotError:
            return False

    def oracle_tables(self):
        """The DP oracle's segment tables for these pairs, forecasts included (measured once, stored with the runs)."""
        if self._oracle_tables is None:
            s, c = self.setting, self.setting.config
            gain = self.oracle_gain()
            path = s.dir / "oracle_tables.npz"
            stored = s.read(path, segment_arrays)
            if stored is None:
                s.log("oracle: measuring segment tables")
                tables, _ = measure_segments(s.pipe, list(zip(s.prompts, s.seeds)), c.steps, c.guidance, gain=gain,
                                             forecast=True)
                stored = np.stack([t.errors for t in tables]), np.stack([t.forecast for t in tables])
                atomic_write_npz(path, errors=stored[0], forecast=stored[1])
            self._oracle_tables = [SegmentTable(e, DEFAULT_MAX_GAP, gain, f) for e, f in zip(*stored)]
        return self._oracle_tables

    def oracle_gain(self) -> np.ndarray:
        if self._gain is not None:
            return self._gain
        s, c = self.setting, self.setting.config
        gain = stored_gain(s.weights / GAIN_FILE, s.model_hash, c.steps, c.guidance, carry=True) if s.weights else None
        if gain is None:
            raise CachepilotError(f"the oracle needs the model's error-amplification profile ({GAIN_FILE} beside the "
                                  "weights); `cachepilot train --algo distill` measures one in its run folder: copy it "
                                  "there, or leave out the oracle")
        self._gain = gain
        return gain


@dataclass
class Ablation:
    setting: Setting
    runs: list[Run]  # the reference first
    points: list  # report.Point per run: means, speedups, Pareto marks


def ablate(config: AblationConfig, out, log=print, progress: bool = True, shard: Shard = Shard()) -> Ablation | None:
    """Run (or reuse) every entry, then write the report into `out`. Over several processes (`shard`), each runs
    every world-th missing entry (one batched generation each, as one process runs it), the searched oracles after
    every other run is stored (they start from them), and the first process writes the report (the others return
    None)."""
    out = checks.folder(out)
    if shard.device is not None:
        config = replace(config, device=shard.device)
    setting = Setting(config, out, shard.first_says(log))
    bundles = learned_policies(setting)
    entries = plan(setting, bundles)
    runner = Runner(setting, bundles)
    if any(e.kind is Kind.DP for e in entries):
        try:
            runner.oracle_gain()
        except CachepilotError as error:
            if "oracle-dp" in config.methods.split(","):
                raise
            setting.log(f"skipping the DP oracle (the searched one starts without it): {error}")
            entries = [e for e in entries if e.kind is not Kind.DP]
    if shard.rank == 0:
        setting.load_reference()
    shard.wait()
    if shard.rank != 0:
        setting.load_reference()  # as the first process stored it
    oracles = [e for e in entries if e.kind in (Kind.DP, Kind.ORACLE)]
    first = [e for e in entries if e not in oracles]
    stored = {e: setting.stored(e) for e in entries}
    setting.log(f"{len(entries)} runs, {sum(r is not None for r in stored.values())} already stored in {setting.dir}")
    stored.update(_run_missing(runner, [e for e in first if stored[e] is None], shard, progress))
    stored.update({e: setting.stored(e) for e in oracles})  # their inputs name the runs just made
    if shard.rank == 0 and any(stored[e] is None for e in oracles) and runner.has_gain():
        runner.oracle_tables()  # measured once, before the processes share out the oracles that start from them
    stored.update(_run_missing(runner, [e for e in oracles if stored[e] is None], shard, progress))
    if shard.rank != 0:
        return None
    runs = {e: run if run is not None else setting.stored(e) for e, run in stored.items()}  # other processes' runs
    lost = [e.key for e, run in runs.items() if run is None]
    if lost:
        raise CachepilotError(f"runs missing from {setting.dir} after every process finished: {', '.join(lost)}; "
                              "run the command again to compute them")
    runs = [setting.reference_run(), *runs.values()]
    return Ablation(setting, runs, write_report(out, setting, runs))


def _run_missing(runner: Runner, missing: list[Entry], shard: Shard, progress: bool) -> dict[Entry, Run]:
    """This process's share of the missing entries, run (every process has listed the same ones before any runs)."""
    shard.wait()
    mine, done = shard.take(missing), {}
    bar = tqdm(total=len(mine), desc="ablation" if shard.world == 1 else f"ablation, process {shard.rank + 1}/{shard.world}",
               unit="run", disable=not progress or not mine)
    for entry in mine:
        bar.set_postfix_str(entry.key)
        done[entry] = runner.run(entry)
        bar.update()
    bar.close()
    shard.wait()
    return done
