"""Learned policies vs every baseline at equal compute, and the gap to the oracle, on toy-wan test pairs.

    python benchmarks/policies_vs_baselines.py [--pairs 16] [--budgets 0.5,0.35,0.25] [--out results/policies]

For each budget, each baseline runs at the knob of its sweep whose mean computed fraction is closest
at or below the budget; the learned policies run at the budget (their guard keeps them within it); the
oracle runs its DP schedule for that many FULL steps. PSNR is against the uncached output of the same
(prompt, seed); the interval is a paired bootstrap 95% CI of (learned - baseline) over the pairs.
Every run is stored in --out, so a rerun only computes what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from cachepilot.infer.evaluate import run_method, timed_reference
from cachepilot.io import atomic_write_text
from cachepilot.models.registry import embedded_path, load_pipeline
from cachepilot.models.toy_wan.scenes import load_split
from cachepilot.policies.calibration import CALIBRATION_FILE, load_calibration
from cachepilot.policies.policy_file import load_policy
from cachepilot.policies.registry import make_baseline
from cachepilot.policies.schedule import FixedSchedule, full_steps_schedule
from cachepilot.train.oracle import fulls_for_budget, measure_segments

# each baseline's knob values, chosen to span computed fractions of about 0.2 to 0.6 on toy-wan
SWEEPS = {
    "static": (2, 3, 4, 5),
    "teacache": (0.05, 0.08, 0.15, 0.3),
    "magcache": (0.12, 0.24, 0.36, 0.6),
    "first-block": (0.1, 0.2, 0.3, 0.5),
    "dbcache": (0.12, 0.2, 0.3, 0.5),
    "adacache": (0.25, 0.5, 1.0, 2.0),
    "mixcache": (1.0, 2.0, 3.0, 5.0),
}


def bootstrap_ci(diff: np.ndarray, rounds: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (rounds, len(diff)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class Runs:
    """Per-pair results of (method, knob) runs, stored as JSON files under `root`."""

    def __init__(self, root: Path, pipe, prompts, seeds, reference, steps, guidance):
        self.root, self.pipe, self.prompts, self.seeds = root, pipe, prompts, seeds
        self.reference, self.steps, self.guidance = reference, steps, guidance
        root.mkdir(parents=True, exist_ok=True)

    def get(self, method: str, knob: float, make_policy) -> dict:
        path = self.root / f"{method}-{knob:g}.json"
        if path.exists():
            return json.loads(path.read_text())
        results, _ = run_method(self.pipe, make_policy(), self.prompts, self.seeds, self.reference, self.steps,
                                self.guidance, method, knob)
        run = {"method": method, "knob": knob, "psnr": [r.psnr for r in results],
               "computed_fraction": [r.computed_fraction for r in results]}
        atomic_write_text(path, json.dumps(run))
        print(f"  {method} {knob:g}: compute {np.mean(run['computed_fraction']):.3f}, PSNR {np.mean(run['psnr']):.2f}", flush=True)
        return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--budgets", default="0.5,0.35,0.25")
    parser.add_argument("--policies", default="checkpoints/toy-wan/policy-distill,checkpoints/toy-wan/policy-ppo")
    parser.add_argument("--oracle-gain", default="checkpoints/toy-wan/oracle_gain.npz",
                        help="amplification profile for the oracle (written by `cachepilot train --algo distill`)")
    parser.add_argument("--out", default="results/policies")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    pipe = load_pipeline("toy-wan")
    calibration = load_calibration(embedded_path("toy-wan") / CALIBRATION_FILE)
    prompts = list(load_split("test"))[: args.pairs]
    seeds = list(range(args.pairs))
    reference, _ = timed_reference(pipe, prompts, seeds, args.steps, args.guidance)
    out = Path(args.out) / f"pairs{args.pairs}-steps{args.steps}-guidance{args.guidance:g}"  # runs are per pair set
    runs = Runs(out, pipe, prompts, seeds, reference, args.steps, args.guidance)

    baselines = {}
    for name, sweep in SWEEPS.items():
        baselines[name] = [runs.get(name, knob, lambda n=name, k=knob: make_baseline(
            n, k, calibration=calibration, num_blocks=len(pipe.transformer.blocks))) for knob in sweep]
    learned = {}
    for path in [p for p in args.policies.split(",") if p and Path(p).exists()]:
        bundle = load_policy(path)
        name = Path(path).name
        learned[name] = {b: runs.get(name, b, lambda b=b, bundle=bundle: bundle.policy(b)) for b in budgets}
    oracle = {}
    if Path(args.oracle_gain).exists():
        gain = np.load(args.oracle_gain)["gain"]
        tables = None
        for b in budgets:
            if not (out / f"oracle-{b:g}.json").exists() and tables is None:
                tables, _ = measure_segments(pipe, list(zip(prompts, seeds)), args.steps, args.guidance, gain=gain)
            oracle[b] = runs.get("oracle", b, lambda b=b: FixedSchedule.per_sample(
                [full_steps_schedule(args.steps, t.plan(fulls_for_budget(b, args.steps))) for t in tables]))
    uniform = {b: runs.get("uniform", b, lambda b=b: FixedSchedule.uniform(
        args.steps, fulls_for_budget(b, args.steps) / args.steps)) for b in budgets}

    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"\ntoy-wan, {args.pairs} test pairs, {args.steps} steps, guidance {args.guidance}; {machine}")
    for b in budgets:
        print(f"\nbudget {b}: computed fraction <= {b}")
        print("| method | knob | computed fraction | PSNR dB | learned - method, PSNR dB [95% CI] |")
        print("|---|---|---|---|---|")
        best = max(learned, key=lambda n: np.mean(learned[n][b]["psnr"])) if learned else None
        rows = [(n, f"budget={b:g}", r[b]) for n, r in learned.items()]
        rows.append(("oracle (DP)", f"{fulls_for_budget(b, args.steps)} FULL", oracle[b]) if b in oracle else None)
        rows.append(("uniform", f"{fulls_for_budget(b, args.steps)} FULL", uniform[b]))
        for name, sweep in baselines.items():
            below = [r for r in sweep if np.mean(r["computed_fraction"]) <= b + 1e-9]
            pick = max(below, key=lambda r: np.mean(r["computed_fraction"])) if below else None
            rows.append((name, f"{pick['knob']:g}" if pick else "no knob reaches it", pick))
        for row in filter(None, rows):
            name, knob, run = row
            if run is None:
                print(f"| {name} | {knob} | - | - | - |")
                continue
            delta = ""
            if best is not None and name != best:
                diff = np.array(learned[best][b]["psnr"]) - np.array(run["psnr"])
                lo, hi = bootstrap_ci(diff)
                delta = f"{diff.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]"
            print(f"| {name} | {knob} | {np.mean(run['computed_fraction']):.3f} | {np.mean(run['psnr']):.2f} | {delta} |")
        if best:
            print(f"(learned column: {best})")


if __name__ == "__main__":
    main()
