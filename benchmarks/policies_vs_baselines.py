"""Learned policies vs every baseline and peer at equal compute, and their share of the oracle's headroom.

    python benchmarks/policies_vs_baselines.py [--pairs 16] [--budgets 0.5,0.35,0.25,0.15] [--out results/ablation]
    python benchmarks/policies_vs_baselines.py --results docs/ablation/results.csv   # a stored ablation, in seconds

Built on `cachepilot ablate` (same runs, same store, same report files: whatever either has computed is reused),
or read from an ablation's results.csv (`--results`).
At each budget:

- **at or below**: each baseline and peer at the setting of its sweep that scores best with a mean computed
  fraction at or below the budget; the learned policies at the budget (their guard keeps them within it);
- **interpolated**: each method's own Pareto front (mean computed fraction -> mean PSNR) read at the budget,
  per pair, linearly between the two front settings around it. Sweeps are coarse (a nearest setting can sit 0.05
  below a budget), so this compares the curves rather than whichever setting happens to fall near the budget;
- the searched oracle (a limit) and the uniform schedule with the same FULL steps; the learned policy's share of
  the oracle's headroom, (learned - uniform) / (oracle - uniform);
- speed at equal quality: at each PSNR level from 25 to 45 dB, the compute the best non-learned front needs to
  reach it over the compute the learned front needs.

Intervals are paired bootstrap 95% CIs of (best learned - method) over the pairs. Writes a plot of both views
beside the ablation's report (`policies_vs_baselines.png`).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from cachepilot.infer.ablation import UNIFORM, AblationConfig, Kind, ablate
from cachepilot.infer.ablation.compare import at_or_below, delta, interpolated, speed_table
from cachepilot.infer.ablation.report import read_results
from cachepilot.io import atomic_write_bytes
from cachepilot.provenance import machine_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--budgets", default="0.5,0.35,0.25,0.15")
    parser.add_argument("--out", default="results/ablation")
    parser.add_argument("--results", type=Path, help="read the runs from this results.csv instead of running them")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    defaults = AblationConfig()
    config = AblationConfig(pairs=args.pairs, steps=args.steps, guidance=args.guidance,  # all methods: one report
                            budgets=tuple(sorted({*defaults.budgets, *budgets})),
                            oracle_budgets=tuple(sorted({*defaults.oracle_budgets, *budgets})))
    runs = read_results(args.results) if args.results else ablate(config, args.out).runs
    by_method: dict[str, list] = {}
    for run in runs:
        if run.entry.kind != Kind.REFERENCE:
            by_method.setdefault(run.entry.method, []).append(run)
    at = lambda name, b: next((r for r in by_method.get(name, []) if r.entry.knob == b), None)  # noqa: E731
    learned = [m for m in by_method if m.startswith("learned-")]
    others = [m for m, runs in by_method.items() if runs[0].entry.kind in (Kind.BASELINE, Kind.PEER)]
    pairs = len(next(iter(by_method.values()))[0].psnr)
    source = f"read from {args.results}" if args.results else machine_summary()
    print(f"\ntoy-wan, {pairs} test pairs, {args.steps} steps, guidance {args.guidance}; {source}")
    curves: dict[str, dict[str, list]] = {"at or below the budget": {}, "front interpolated at the budget": {}}
    for b in budgets:
        mine = {m: at(m, b) for m in learned if at(m, b) is not None}
        best_name = max(mine, key=lambda m: np.mean(mine[m].psnr)) if mine else None
        best = np.array(mine[best_name].psnr) if best_name else None
        print(f"\n### budget {b:g}: computed fraction <= {b:g}; best learned: {best_name or 'none at this budget'}\n")
        print("| method | setting at or below | computed fraction | PSNR dB | best learned - method [95% CI] | "
              "front at the budget, PSNR dB | best learned - front [95% CI] |")
        print("|---|---|---|---|---|---|---|")
        rows = [(m, r, np.array(r.psnr)) for m, r in mine.items()]
        rows += [(m, at(m, b), None) for m in ("oracle", "oracle-dp")]
        rows += [(m, at(m, b), interpolated(by_method[m], b)) for m in UNIFORM if m in by_method]
        rows += [(m, at_or_below(by_method.get(m, []), b), interpolated(by_method.get(m, []), b)) for m in others]
        for name, run, front in rows:
            psnr = np.array(run.psnr) if run is not None else None
            if run is None and front is None:
                print(f"| {name} | no setting reaches it | - | - | - | - | - |")
                continue
            setting = run.entry.label if run is not None else "-"
            fraction = f"{np.mean(run.computed_fraction):.3f}" if run is not None else "-"
            shown = f"{psnr.mean():.2f}" if psnr is not None else "-"
            same = name == best_name
            front_shown = f"{front.mean():.2f}" if front is not None and not same else "-"
            print(f"| {name} | {setting} | {fraction} | {shown} | {'' if same else delta(best, psnr)} | {front_shown} | "
                  f"{'' if same else delta(best, front)} |")
            for view, values in (("at or below the budget", psnr), ("front interpolated at the budget", front)):
                if values is not None:
                    curves[view].setdefault(name, []).append((b, float(values.mean())))
        oracle, uniform = at("oracle", b), at("uniform", b)
        if best is not None and oracle is not None and uniform is not None:
            gain, headroom = best - np.array(uniform.psnr), np.array(oracle.psnr) - np.array(uniform.psnr)
            print(f"\nshare of the oracle's headroom over uniform: {gain.mean() / headroom.mean():.0%} "
                  f"(learned - uniform {gain.mean():+.2f} dB, oracle - uniform {headroom.mean():+.2f} dB)")
    print("\n### Speed at equal quality\n\nThe compute each front needs to reach a PSNR level (means over the pairs; the "
          "non-learned front takes every baseline, peer and uniform schedule together, the oracles left out):\n")
    print(speed_table(by_method))
    path = (args.results.parent if args.results else Path(args.out)) / "policies_vs_baselines.png"
    atomic_write_bytes(path, plot(curves, f"toy-wan, {pairs} test pairs ({source})"))
    print(f"\nplot: {path}")


def plot(curves: dict[str, dict[str, list]], title: str) -> bytes:
    fig = Figure(figsize=(13, 5), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    names = sorted({n for view in curves.values() for n in view})
    colours = {n: colormaps["tab20"](i % 20) for i, n in enumerate(names)}
    for ax, (view, lines) in zip(axes, curves.items()):
        for name, points in sorted(lines.items()):
            xs, ys = zip(*sorted(points))
            style = dict(linewidth=2.5, marker="o") if name.startswith("learned") else (
                dict(color="black", linestyle="--", marker="x") if name == "oracle" else dict(marker=".", linewidth=1))
            ax.plot(xs, ys, label=name, **({"color": colours[name]} | style))
        ax.set_title(view, fontsize=10)
        ax.set_xlabel("budget (computed fraction)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR vs uncached output (dB)")
    handles = {}  # one legend entry per method, from whichever panel has it
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[1].legend(handles.values(), handles.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


if __name__ == "__main__":
    main()
