"""What the low-budget teacher's searched shared schedule scores beyond the pairs it was searched on.

Distillation searches one schedule per `--searched-budgets` budget on train pairs (`search_shared`) and teaches
it there; the policy card records it. This replays that schedule on the val and test pairs, beside the uniform
FULL/STEP schedule with the same FULL count, the same with its reuses forecast (order 1), and the policy itself
at the budget. It shows how much of the searched schedule's lead carries over to unseen pairs, and how much of
that the student learned.

    python benchmarks/shared_schedule.py [--policy DIR (default: the shipped policy-distill)] [--val 8] [--test 16]
"""

from __future__ import annotations

import argparse

import numpy as np

from cachepilot.envs import CacheEpisodes, RunSpec
from cachepilot.evaluation.harness import ScoredPairs, run_method
from cachepilot.evaluation.oracle import fulls_for_budget
from cachepilot.evaluation.search import forecast_reuses, replay
from cachepilot.models.registry import weights_path
from cachepilot.policies.policy_file import load_policy
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.provenance import machine_summary
from cachepilot.runtime import Action


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(weights_path("toy-wan") / "policy-distill"))
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--test", type=int, default=16)
    args = parser.parse_args()
    bundle = load_policy(args.policy)
    searched = bundle.card.training.get("searched_schedules") or {}
    if not searched:
        raise SystemExit(f"{args.policy} was not taught by a searched schedule at any budget")
    steps, guidance = bundle.card.steps, bundle.card.guidance
    print(f"machine: {machine_summary()}; {bundle.card.model}, {steps} steps, guidance {guidance:g}")
    print("| budget | pairs | searched shared schedule | uniform | uniform, forecast order 1 | the policy |")
    print("|---|---|---|---|---|---|")
    pipe = None
    for key, entry in searched.items():
        budget = float(key)
        schedule = [Action.parse(a) for a in entry["schedule"]]
        uniform = list(FixedSchedule.uniform(steps, fulls_for_budget(budget, steps) / steps).actions)
        print(f"| {key} | train (searched on) | {entry['train_psnr']:.2f} | | | |")
        for split, n in (("val", args.val), ("test", args.test)):
            episodes = CacheEpisodes(RunSpec(bundle.card.model, split, n, steps=steps, guidance=guidance,
                                             budgets=budget, pipe=pipe))
            pipe = episodes.pipe
            prompts, seeds = [p for p, _ in episodes.pairs], [s for _, s in episodes.pairs]
            reference = episodes.store.outputs(episodes.pairs)
            scores = [replay(pipe, [s] * n, prompts, seeds, reference, steps, guidance)[0].mean()
                      for s in (schedule, uniform, forecast_reuses(uniform, 1))]
            results, _ = run_method(pipe, bundle.policy(budget), ScoredPairs(prompts, seeds, steps, guidance, reference),
                                    "learned", budget)
            learned = np.mean([r.psnr for r in results])
            print(f"| {key} | {n} {split} | " + " | ".join(f"{v:.2f}" for v in (*scores, learned)) + " |")


if __name__ == "__main__":
    main()
