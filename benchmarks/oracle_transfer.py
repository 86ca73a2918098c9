"""How much of the searched oracle's lead belongs to each (prompt, seed): its schedules replayed on the other pairs.

    python benchmarks/oracle_transfer.py [--budget 0.35] [--pairs 16] [--out results/ablation]

The searched oracle (`cachepilot ablate`) keeps a move only when the final PSNR of that very pair rises, so it
may tune its schedule to the pair's noise. A policy sees signals, not the reference, so what it can hope to
learn is what carries over. This replays each pair's searched schedule on every pair (one batched generation per
schedule group) and prints: the oracle on its own pairs, the mean of every schedule on every other pair, the best
single schedule used for all pairs, and the shipped learned policies and the uniform schedule at the budget from
the same ablation. Reads the stored search; run the ablation first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cachepilot.evaluation.search import replay
from cachepilot.infer.ablation import AblationConfig, Setting
from cachepilot.provenance import machine_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.35)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--group", type=int, default=4, help="schedules replayed per batched generation")
    parser.add_argument("--out", default="results/ablation")
    args = parser.parse_args()
    setting = Setting(AblationConfig(pairs=args.pairs), Path(args.out))
    stored = setting.stored_search(args.budget)
    if stored is None:
        raise SystemExit(f"no searched oracle at budget {args.budget:g} in {setting.dir}; run `cachepilot ablate` first")
    result = stored[1]
    setting.load_reference()
    n = len(result.schedules)
    psnr = np.zeros((n, n))  # psnr[k, p]: pair k's schedule on pair p
    for k0 in range(0, n, args.group):
        ks = range(k0, min(k0 + args.group, n))
        batch = [result.schedules[k] for k in ks for _ in range(n)]
        scores, *_ = replay(setting.pipe, batch, setting.prompts * len(ks), setting.seeds * len(ks),
                            np.concatenate([setting.reference] * len(ks)), setting.config.steps,
                            setting.config.guidance)
        psnr[k0 : k0 + len(ks)] = scores.reshape(len(ks), n)
    own = np.diag(psnr)
    others = (psnr.sum() - own.sum()) / (n * (n - 1))
    per_schedule = psnr.mean(1)
    best = int(per_schedule.argmax())
    print(f"machine: {machine_summary()}; toy-wan, {n} test pairs, budget {args.budget:g}")
    print("| schedules | mean PSNR dB |")
    print("|---|---|")
    print(f"| the searched oracle, each pair's own schedule | {own.mean():.2f} |")
    print(f"| each pair's schedule on every other pair (mean of {n * (n - 1)}) | {others:.2f} |")
    print(f"| the best single one of them on all pairs (pair {best}'s) | {per_schedule[best]:.2f} |")
    print(f"| the median single one on all pairs | {np.median(per_schedule):.2f} |")
    for run in sorted(setting.dir.glob(f"*@{args.budget:g}.json")):
        method = run.name.rsplit("@", 1)[0]
        if method.startswith(("learned-", "uniform")):
            print(f"| {method} (the ablation's run) | {np.mean(json.loads(run.read_text())['psnr']):.2f} |")


if __name__ == "__main__":
    main()
