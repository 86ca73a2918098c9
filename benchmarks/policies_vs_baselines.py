"""Learned policies vs every baseline at equal compute, and the gap to the oracle, on toy-wan test pairs.

    python benchmarks/policies_vs_baselines.py [--pairs 16] [--budgets 0.5,0.35,0.25] [--out results/ablation]

Built on `cachepilot ablate` (same runs, same store, same report files: whatever either has computed is
reused). For each
budget, each baseline runs at the knob of its sweep whose mean computed fraction is closest at or below
the budget (the peers, other projects' caches, likewise); the learned policies run at the budget (their guard keeps them within it); the oracle runs its
DP schedule for that many FULL steps, and "uniform" the same number of FULL steps evenly spaced. PSNR is
against the uncached output of the same (prompt, seed); the interval is a paired bootstrap 95% CI of
(best learned - method) over the pairs.
"""

from __future__ import annotations

import argparse

import numpy as np

from cachepilot.infer.ablate import AblationConfig, ablate
from cachepilot.evaluation.peers import available_peers
from cachepilot.evaluation.oracle import fulls_for_budget
from cachepilot.provenance import machine_summary


def bootstrap_ci(diff: np.ndarray, rounds: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (rounds, len(diff)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--budgets", default="0.5,0.35,0.25")
    parser.add_argument("--out", default="results/ablation")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    defaults = AblationConfig()
    config = AblationConfig(pairs=args.pairs, steps=args.steps, guidance=args.guidance,  # all methods: one report
                            budgets=tuple(sorted({*defaults.budgets, *budgets})),
                            oracle_budgets=tuple(sorted({*defaults.oracle_budgets, *budgets})))
    result = ablate(config, args.out)
    runs = {}
    for run in result.runs:
        runs.setdefault(run.entry.method, {})[run.entry.knob if not run.entry.extra else run.entry.key] = run
    learned = {m: r for m, r in runs.items() if m.startswith("learned-")}
    print(f"\ntoy-wan, {args.pairs} test pairs, {args.steps} steps, guidance {args.guidance}; "
          f"{machine_summary()}")
    for b in budgets:
        print(f"\nbudget {b}: computed fraction <= {b}")
        print("| method | knob | computed fraction | PSNR dB | best learned - method, PSNR dB [95% CI] |")
        print("|---|---|---|---|---|")
        best = max(learned, key=lambda n: np.mean(learned[n][b].psnr)) if learned else None
        rows = [(n, f"budget={b:g}", r[b]) for n, r in learned.items()]
        for name in ("oracle", "uniform"):
            if b in runs.get(name, {}):
                rows.append((f"{name} (DP)" if name == "oracle" else name, f"{fulls_for_budget(b, args.steps)} FULL",
                             runs[name][b]))
        for name in [*_baselines(), *available_peers()]:
            below = [r for r in runs.get(name, {}).values() if np.mean(r.computed_fraction) <= b + 1e-9]
            pick = max(below, key=lambda r: np.mean(r.computed_fraction)) if below else None
            rows.append((name, pick.entry.label if pick else "no knob reaches it", pick))
        for name, knob, run in rows:
            if run is None:
                print(f"| {name} | {knob} | - | - | - |")
                continue
            delta = ""
            if best is not None and run is not learned[best][b]:
                diff = np.array(learned[best][b].psnr) - np.array(run.psnr)
                lo, hi = bootstrap_ci(diff)
                delta = f"{diff.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]"
            print(f"| {name} | {knob} | {np.mean(run.computed_fraction):.3f} | {np.mean(run.psnr):.2f} | {delta} |")
        if best:
            print(f"(learned column: {best})")


def _baselines() -> list[str]:
    from cachepilot.policies.registry import BASELINES

    return [n for n in BASELINES if n != "none"]



if __name__ == "__main__":
    main()
