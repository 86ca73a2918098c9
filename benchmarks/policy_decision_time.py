"""How long a learned policy takes to decide, against a full toy-wan transformer call (CPU).

A shipped policy file drives real 50-step CFG generations; every call of its `choose` (observation vector,
budget guard, MLP forward, masked argmax) is timed, and so is every transformer call of an uncached
generation of the same batch. Target: decision time well under 1% of a transformer call. One decision per
step serves both CFG branches, so the last column (all decisions over all transformer calls of an uncached
generation) is the share of transformer time a generation spends deciding. The runtime's cost
of gathering the signals the policy reads is measured separately by benchmarks/runtime_overhead.py.

    python benchmarks/policy_decision_time.py [--policy DIR (default: the shipped policy-distill)] [--batch 1,8]
"""

from __future__ import annotations

import argparse
import statistics
import time

from cachepilot.evaluation.harness import generate_with
from cachepilot.models.registry import load_pipeline, weights_path
from cachepilot.models.stepping import generate_batch
from cachepilot.models.toy_wan.scenes import load_split
from cachepilot.policies.base import NoCache
from cachepilot.policies.policy_file import load_policy
from cachepilot.provenance import machine_summary
from cachepilot.runtime import attach_runtime, cache_summary, remove_cache


def decision_times(pipe, policy, prompts, seeds, steps, guidance) -> list[float]:
    times, choose = [], policy.choose

    def timed_choose(signals, masks):
        start = time.perf_counter()
        picks = choose(signals, masks)
        times.append(time.perf_counter() - start)
        return picks

    policy.choose = timed_choose
    generate_with(pipe, policy, prompts, seeds, steps, guidance)
    return times


def transformer_call_times(pipe, prompts, seeds, steps, guidance) -> list[float]:
    attach_runtime(pipe, NoCache(), num_inference_steps=steps)
    try:
        generate_batch(pipe, prompts, seeds, steps, guidance)
        return list(cache_summary(pipe).wall_times)
    finally:
        remove_cache(pipe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(weights_path("toy-wan") / "policy-distill"))
    parser.add_argument("--budget", type=float, default=0.35)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    args = parser.parse_args()
    pipe = load_pipeline("toy-wan")
    bundle = load_policy(args.policy)
    prompts = list(load_split("test"))
    print(f"toy-wan, {args.steps} steps, guidance {args.guidance}; {machine_summary()}; policy {args.policy} "
          f"({bundle.net.num_parameters} parameters) at budget {args.budget}")
    print("| batch | decisions | median decision ms | median full transformer call ms | decision / call | "
          "all decisions / all calls of an uncached generation |")
    print("|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batch.split(",")):
        pairs = prompts[:batch], list(range(batch))
        transformer_call_times(pipe, *pairs, 3, args.guidance)  # warm-up
        calls = transformer_call_times(pipe, *pairs, args.steps, args.guidance)
        decisions = decision_times(pipe, bundle.policy(args.budget), *pairs, args.steps, args.guidance)
        d, c = statistics.median(decisions), statistics.median(calls)
        share = sum(decisions) / sum(calls)  # one decision per step serves both CFG branches
        print(f"| {batch} | {len(decisions)} | {d * 1e3:.3f} | {c * 1e3:.1f} | {d / c:.2%} | {share:.2%} |")


if __name__ == "__main__":
    main()
