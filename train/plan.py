"""What a distillation recipe costs before it runs: per phase, the generations, the transformer calls, the FLOPs, and
a projected time.

The counts follow what `Distiller.learn` runs, phase by phase, from the same recipe (pairs, settings, budgets,
`DistillConfig`). A call is one transformer forward of one sample and one CFG branch; a generation at a budget b
computes about b of its calls in full (the budget guard, the uniform and the searched schedules keep within b),
and reuses cost no block compute. Upper bounds where the run may skip work: every searched start and proposal is
counted as run, and nothing as already stored (a rerun reuses its run folder and the reference store).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cachepilot.envs.spec import Setting
from cachepilot.evaluation.oracle import fulls_for_budget
from cachepilot.models.published import CallCost

from .distill import DistillConfig, keepable_budgets, named_budgets
from .trainer import feasible_budgets


@dataclass
class Phase:
    """One phase's work: generations of one sample, transformer calls, and those calls weighted by what they compute."""

    name: str
    what: str
    generations: int = 0
    calls: int = 0
    computed_calls: float = 0.0

    def add(self, count: int, setting: Setting, fraction: float = 1.0) -> None:
        """`count` generations of one sample at `setting`, computing `fraction` of their calls."""
        calls = count * setting.steps * _branches(setting)
        self.generations += count
        self.calls += calls
        self.computed_calls += calls * fraction

    def reuse_calls(self, count: int, setting: Setting) -> None:
        """`count` denoising steps of one sample that reuse everything (no block compute)."""
        self.calls += count * _branches(setting)


def _branches(setting: Setting) -> int:
    """Transformer calls per denoising step of one sample: one per CFG branch."""
    return 2 if setting.guidance > 1 else 1


@dataclass(frozen=True)
class Recipe:
    """What `cachepilot train --algo distill` runs on: the pairs, the primary setting, the settings trained over,
    the budgets, and the distillation config."""

    pairs: int = 16
    val_pairs: int = 8
    primary: Setting = Setting(50, 5.0)
    settings: tuple[Setting, ...] = ()  # every setting trained over, the primary one included (empty: it alone)
    budgets: tuple[float, ...] = (0.15, 0.2, 0.3, 0.4, 0.5, 0.6)
    config: DistillConfig = field(default_factory=DistillConfig)

    def budgets_at(self, setting: Setting) -> tuple[float, ...]:
        return keepable_budgets(self.budgets, setting.steps)

    @property
    def others(self) -> list[Setting]:
        return [s for s in self.settings if s != self.primary]


def _forks(steps: int, max_gap: int, forecast: bool) -> int:
    """Reuse steps the segment tables run per pair: after each step's FULL, a STEP fork (and, with `forecast`, a
    STEP_F1 fork from each of the max_gap FULLs before it) until the gap runs out."""
    total = 0
    for i in range(steps):
        run = max(0, min(i + max_gap, steps) - (i + 1))
        total += run * (1 + (min(i, max_gap) if forecast else 0))
    return total


def distill_phases(recipe: Recipe) -> list[Phase]:
    """The phases of one distillation run, in the order it runs them."""
    config, primary, steps = recipe.config, recipe.primary, recipe.primary.steps
    per_setting = min(config.pairs_per_setting, recipe.pairs)
    search_pairs = min(config.search_pairs, recipe.pairs)
    lowest_steps = min(s.steps for s in (primary, *recipe.settings))
    eval_budgets = feasible_budgets(recipe.budgets, config.eval_budgets, lowest_steps, log=lambda *a: None)
    searched = named_budgets(recipe.budgets, config.searched_budgets)

    references = Phase("references", "uncached outputs of the val pairs and of each other setting's pairs")
    references.add(recipe.val_pairs, primary)
    for s in recipe.others:
        references.add(per_setting, s)

    gain = Phase("amplification", "error amplification per step: single skips on a grid of steps (once per model)")
    skips = len(range(1, steps, config.gain_every))
    gain.add(config.gain_pairs, primary)
    gain.reuse_calls(config.gain_pairs * _forks(steps, 2, False), primary)
    gain.add(config.gain_pairs * skips, primary, (steps - 1) / steps)

    tables = Phase("segment tables", "each train pair's reference pass and its reuse and forecast forks")
    tables.add(recipe.pairs, primary)
    tables.reuse_calls(recipe.pairs * _forks(steps, config.max_gap, True), primary)

    search = Phase("searched schedules", "shared schedules searched with real rollouts at the searched budgets")
    for b in searched:
        candidates = 2 + search_pairs + config.search_rounds * config.search_proposals
        search.add(candidates * search_pairs, primary, fulls_for_budget(b, steps) / steps)

    choice = Phase("other settings' schedules", "per setting and budget, the best of its starts by real rollouts")
    for s in recipe.others:
        for b in recipe.budgets_at(s):
            starts = 2 + per_setting + (1 if b in searched else 0) + config.setting_search_rounds * config.search_proposals
            choice.add(starts * per_setting, s, fulls_for_budget(b, s.steps) / s.steps)

    at_most = " (fewer where a round does not improve the student)" if config.dagger_rounds else ""
    rollouts = Phase("DAgger rollouts", f"the oracle's round and {config.dagger_rounds} student rounds{at_most}, every "
                     "pair at every budget")
    for _ in range(config.dagger_rounds + 1):
        for s, pairs in [(primary, recipe.pairs), *((s, per_setting) for s in recipe.others)]:
            for b in recipe.budgets_at(s):
                rollouts.add(pairs, s, b)

    validation = Phase("validation", "the student on the val pairs during training, then the uniform schedule")
    checks = math.ceil(config.epochs / config.student_val_every) - 1  # the middle budget; the last epoch scores all
    middle = eval_budgets[len(eval_budgets) // 2]
    for _ in range(config.dagger_rounds + 1):
        validation.add(recipe.val_pairs * checks, primary, middle)
        for b in eval_budgets:
            validation.add(recipe.val_pairs, primary, b)
    for b in eval_budgets:
        validation.add(recipe.val_pairs, primary, fulls_for_budget(b, steps) / steps)
    return [references, gain, tables, search, choice, rollouts, validation]


@dataclass(frozen=True)
class Throughput:
    """How fast a call runs: measured seconds per call at the recipe's size, or FLOPs at a stated rate."""

    seconds_per_call: float | None = None
    flops_per_second: float | None = None  # sustained, e.g. peak x utilisation

    def seconds(self, phase: Phase, call: CallCost) -> float:
        if self.seconds_per_call is not None:
            return phase.computed_calls * self.seconds_per_call
        return phase.computed_calls * call.flops / self.flops_per_second


def plan_table(phases: list[Phase], call: CallCost, throughput: Throughput, devices: int = 1) -> str:
    """The plan as a markdown table, with totals; time on `devices` devices assumes the phases' generations split
    evenly across them."""
    lines = ["| phase | what | generations | transformer calls | computed calls | PFLOPs | hours, 1 device | "
             f"hours, {devices} devices |", "|---|---|---|---|---|---|---|---|"]
    total = Phase("total", "")
    for p in phases:
        total.generations += p.generations
        total.calls += p.calls
        total.computed_calls += p.computed_calls
    for p in [*phases, total]:
        hours = throughput.seconds(p, call) / 3600
        name = f"**{p.name}**" if p is total else p.name
        lines.append(f"| {name} | {p.what} | {p.generations:,} | {p.calls:,} | {p.computed_calls:,.0f} | "
                     f"{p.computed_calls * call.flops / 1e15:,.1f} | {hours:,.2f} | {hours / devices:,.2f} |")
    return "\n".join(lines)
