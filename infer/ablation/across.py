"""The ablation at several generation settings (step counts, guidance scales), and the table of how the learned
policies' margins hold across them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from cachepilot import checks
from cachepilot.io import atomic_write_text
from cachepilot.parallel import Shard
from cachepilot.provenance import machine_summary

from .compare import FORECASTERS, REUSERS, best_learned, best_of, by_method, delta
from .config import AblationConfig
from .runner import Ablation, ablate

VIEWS = ("at or below", "interpolated")


def setting_folder(out: Path, steps: int, guidance: float) -> Path:
    return out / f"steps{steps}-guidance{guidance:g}"


def ablate_settings(config: AblationConfig, settings, out, log=print, progress: bool = True,
                    shard: Shard = Shard()) -> dict[tuple, Ablation] | None:
    """`ablate` at each (steps, guidance) of `settings`, in its own folder of `out` (each setting's baselines
    resampled or recalibrated for its step count as each one's paper does), then `settings.md` over all of them
    (by the first process, when `shard` is one of several; the others return None)."""
    out, say = checks.folder(out), shard.first_says(log)
    found = {}
    for steps, guidance in settings:
        say(f"--- {steps} steps, guidance {guidance:g}")
        found[(steps, guidance)] = ablate(replace(config, steps=steps, guidance=guidance),
                                          setting_folder(out, steps, guidance), log, progress, shard)
    if shard.rank != 0:
        return None
    atomic_write_text(out / "settings.md", margins_table(found, config))
    return found


HEADER = ("| steps | guidance | budget | best learned, PSNR dB | view | best reuse cache | learned - reuse [95% CI] | "
          "best forecaster | learned - forecaster [95% CI] |\n|---|---|---|---|---|---|---|---|---|")


def margins(grouped: dict[str, list], budgets, learned: dict[str, list] | None = None):
    """Per learned budget (highest first) and view: (budget, view, the best learned policy's name and per-pair PSNR,
    and for the best reuse cache and the best forecaster each its name and per-pair PSNR), from one setting's runs
    grouped by method; `learned`: the runs the best learned policy is taken from (default: all of them)."""
    for budget in sorted(budgets, reverse=True):
        name, run = best_learned(grouped if learned is None else learned, budget)
        if run is None:
            continue
        for view in VIEWS:
            yield (budget, view, name, np.array(run.psnr), best_of(grouped, REUSERS, budget, view),
                   best_of(grouped, FORECASTERS, budget, view))


def margin_row(steps: str, guidance: str, budget: float, view: str, name: str, mine, reuse, ahead) -> str:
    """One line of the margins table (`HEADER`)."""
    return (f"| {steps} | {guidance} | {budget:g} | {name}, {mine.mean():.2f} | {view} | {_shown(*reuse)} | "
            f"{delta(mine, reuse[1])} | {_shown(*ahead)} | {delta(mine, ahead[1])} |")


def margins_table(found: dict[tuple, Ablation], config: AblationConfig) -> str:
    """Per setting and learned budget: the best learned policy, and its margin over the best reuse cache and the best
    forecaster, in both views, with paired bootstrap 95% CIs."""
    lines = [f"{config.model}, {config.pairs} {config.split} pairs; {machine_summary()}", "", HEADER]
    for (steps, guidance), ablation in found.items():
        for budget, view, name, mine, reuse, ahead in margins(by_method(ablation.runs), config.budgets):
            lines.append(margin_row(str(steps), f"{guidance:g}", budget, view, name, mine, reuse, ahead))
    return "\n".join(lines) + "\n"


def _shown(name: str | None, psnr) -> str:
    return "none reaches it" if name is None else f"{name}, {psnr.mean():.2f}"
