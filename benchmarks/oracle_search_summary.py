"""Where the searched oracle's score comes from: its starts, its moves and what its last round still added.

    python benchmarks/oracle_search_summary.py [--pairs 16] [--out results/ablation]

Reads the searches `cachepilot ablate` stored (no generation). Per budget: CPU time, which start each pair kept,
the mean of each pair's best start (what choosing among existing methods per pair gives), the score after the
local search, the least gain on any pair, the moves accepted per pair and the mean gain of the search's last
round. A last round that still gains says the limit is a local search stopped by its round count, not converged.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from cachepilot.infer.ablation import AblationConfig, Setting
from cachepilot.provenance import machine_summary

def short_name(start: str) -> str:
    """`learned-ppo@0.35` -> `PPO`, `taylorseer@4` -> `TaylorSeer`, `oracle-dp` -> `DP`."""
    name = start.split("@")[0].removeprefix("learned-")
    return {"ppo": "PPO", "taylorseer": "TaylorSeer", "oracle-dp": "DP"}.get(name, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--out", default="results/ablation")
    args = parser.parse_args()
    setting = Setting(AblationConfig(pairs=args.pairs), Path(args.out))
    budgets = sorted((float(p.stem.split("@")[1]) for p in setting.dir.glob("oracle-search@*.json")), reverse=True)
    searches = {b: stored[1] for b in budgets if (stored := setting.stored_search(b)) is not None}
    if not searches:
        raise SystemExit(f"no searched oracle in {setting.dir}; run `cachepilot ablate` first")
    print(f"machine: {machine_summary()}; toy-wan, {args.pairs} test pairs (stored searches)")
    print("| budget | CPU minutes | rounds | start kept (pairs) | mean of each pair's best start, dB | "
          "after the search, dB | least gain on a pair, dB | moves accepted per pair | gain of the last round, dB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for budget, result in searches.items():
        starts = np.array([[np.nan if v is None else v for v in psnr] for psnr in result.start_psnr.values()])
        best_start = np.nanmax(starts, axis=0)
        kept = Counter(short_name(s) for s in result.start).most_common()
        last_gain = result.history[-1] - result.history[-2] if len(result.history) > 1 else float("nan")
        print(f"| {budget:g} | {result.cpu_seconds / 60:.1f} | {result.rounds} | "
              f"{', '.join(f'{name} {count}' for name, count in kept)} | {best_start.mean():.2f} | "
              f"{np.mean(result.psnr):.2f} | {np.min(np.asarray(result.psnr) - best_start):+.2f} | "
              f"{np.mean(result.accepted):.1f} | {last_gain:+.2f} |")


if __name__ == "__main__":
    main()
