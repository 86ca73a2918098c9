"""How a learned policy compares with the other methods at a budget, in the two views a claim must hold in.

- **at or below**: each method at the setting of its sweep that scores best with a mean computed fraction at or
  below the budget (a learned policy at the budget: its guard keeps it within);
- **interpolated**: each method's own Pareto front (mean computed fraction -> mean PSNR) read at the budget, per
  pair, linearly between the two front settings around it.

Differences come with paired bootstrap 95% CIs over the pairs. Methods are grouped as users weigh them: the caches
that reuse what was computed, and those that forecast it.
"""

from __future__ import annotations

import numpy as np

# Methods whose reuses extrapolate the kept history (the rest add back what was computed, as it was)
FORECASTERS = ("taylorseer", "uniform-f1", "uniform-f2", "uniform-f1-sigma", "uniform-f2-sigma", "diffusers-taylorseer",
               "diffusers-taylorseer-parts", "cache-dit-dbcache-taylorseer")
REUSERS = ("static", "teacache", "magcache", "first-block", "dbcache", "adacache", "mixcache", "uniform",
           "diffusers-fbcache", "diffusers-magcache", "cache-dit-dbcache")


def bootstrap_ci(diff: np.ndarray, rounds: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (rounds, len(diff)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def at_or_below(runs: list, budget: float):
    """The run scoring best among those whose mean computed fraction is within the budget (None: none is)."""
    within = [r for r in runs if np.mean(r.computed_fraction) <= budget + 1e-9]
    return max(within, key=lambda r: np.mean(r.psnr)) if within else None


def interpolated(runs: list, budget: float) -> np.ndarray | None:
    """Per-pair PSNR of the method's own front read at `budget` (None: the front does not span it)."""
    points = sorted(((np.mean(r.computed_fraction), np.mean(r.psnr), r) for r in runs), key=lambda p: p[0])
    front = [p for p in points if not any(q[0] <= p[0] and q[1] > p[1] for q in points if q is not p)]
    below = [p for p in front if p[0] <= budget + 1e-9]
    above = [p for p in front if p[0] >= budget - 1e-9]
    if not below or not above:
        return None
    (f0, _, r0), (f1, _, r1) = below[-1], above[0]
    if f1 - f0 < 1e-9:
        return np.array(r0.psnr)
    w = (budget - f0) / (f1 - f0)
    return (1 - w) * np.array(r0.psnr) + w * np.array(r1.psnr)


def delta(best: np.ndarray | None, other: np.ndarray | None) -> str:
    """best - other, its mean and paired bootstrap CI, as a table cell."""
    if best is None or other is None:
        return "-"
    diff = best - other
    lo, hi = bootstrap_ci(diff)
    return f"{diff.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]"


def by_method(runs) -> dict[str, list]:
    """An ablation's runs (the reference left out) grouped by method."""
    grouped: dict[str, list] = {}
    for run in runs:
        if run.entry.kind != "reference":
            grouped.setdefault(run.entry.method, []).append(run)
    return grouped


def best_learned(grouped: dict[str, list], budget: float):
    """The learned policy scoring best at `budget` (its name and run; (None, None): none ran there)."""
    found = {m: r for m, runs in grouped.items() if m.startswith("learned-")
             for r in runs if abs(r.entry.knob - budget) < 1e-9}
    name = max(found, key=lambda m: np.mean(found[m].psnr), default=None)
    return name, found.get(name)


def best_of(grouped: dict[str, list], names, budget: float, view: str):
    """Of the methods `names`, the one scoring best at `budget` in `view` ("at or below" or "interpolated"): its
    name and per-pair PSNR ((None, None): none reaches the budget)."""
    found = {}
    for name in names:
        runs = grouped.get(name, [])
        if view == "at or below":
            run = at_or_below(runs, budget)
            values = None if run is None else np.array(run.psnr)
        else:
            values = interpolated(runs, budget)
        if values is not None:
            found[name] = values
    name = max(found, key=lambda n: found[n].mean(), default=None)
    return name, found.get(name)


def compute_to_reach(points: list[tuple[float, float]], level: float) -> float | None:
    """The least mean computed fraction at which a front of (fraction, mean PSNR) points reaches `level` dB,
    linearly between the two front points around it (None: no point reaches it)."""
    points = sorted(points)
    front = [p for p in points if not any(q[0] <= p[0] and q[1] > p[1] for q in points if q is not p)]
    for (f0, p0), (f1, p1) in zip([(0.0, -np.inf), *front], front):
        if p1 >= level:
            if not (np.isfinite(p0) and np.isfinite(p1)):  # the first front point, or a lossless one
                return f1
            return f0 + (level - p0) / (p1 - p0) * (f1 - f0)
    return None


def speed_at_equal_quality(grouped: dict[str, list], levels) -> list[tuple[float, float | None, float | None]]:
    """At each PSNR level: the compute the best non-learned front needs to reach it (every baseline, peer and
    uniform schedule together; the oracles left out) and the compute the learned policies' front needs. Their
    ratio is the speed a user gains from the learned policy at that quality."""
    mean_point = lambda r: (float(np.mean(r.computed_fraction)), float(np.mean(r.psnr)))  # noqa: E731
    learned = [mean_point(r) for m, runs in grouped.items() if m.startswith("learned-") for r in runs]
    others = [mean_point(r) for m, runs in grouped.items() if not m.startswith(("learned-", "oracle")) for r in runs]
    return [(level, compute_to_reach(others, level), compute_to_reach(learned, level)) for level in levels]


SPEED_LEVELS = tuple(np.arange(25.0, 45.1, 2.5))  # PSNR dB, where caches of video DiTs are used


def speed_table(grouped: dict[str, list], levels=SPEED_LEVELS) -> str:
    """`speed_at_equal_quality` as a markdown table ("" where no learned policy ran)."""
    if not any(m.startswith("learned-") for m in grouped):
        return ""
    shown = lambda f: f"{f:.3f}" if f is not None else "not reached"  # noqa: E731
    lines = ["| PSNR dB | best non-learned: computed fraction | learned: computed fraction | learned speed-up at equal "
             "quality |", "|---|---|---|---|"]
    for level, others, mine in speed_at_equal_quality(grouped, levels):
        ratio = f"{others / mine:.2f}x" if others is not None and mine is not None else "-"
        lines.append(f"| {level:g} | {shown(others)} | {shown(mine)} | {ratio} |")
    return "\n".join(lines)
