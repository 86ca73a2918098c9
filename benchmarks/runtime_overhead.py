"""Runtime overhead and real savings on toy-wan (CPU), 50-step CFG generations.

1. Overhead: the runtime with a policy that always says FULL vs the bare model, measured two ways in
   one process: per transformer call (a hooked and a bare copy of the transformer called alternately,
   400 times each: machine drift cancels) and per generation (whole 50-step CFG generations, interleaved,
   order reversed every other run; noisier). Target: within 3%. Also with every optional signal computed
   (what a learned policy that observes everything costs).
2. Savings: a fixed schedule that computes 40% of the calls (FULL on evenly spaced steps, STEP between)
   vs always-FULL, timing the transformer calls only. Target: >= 2x.
3. The shipped learned policy (PPO) at budget 0.35, forecasts and decisions included, the same way: its
   transformer wall-clock speedup against its FLOPs speedup. Target: >= 0.9 of it.

    python benchmarks/runtime_overhead.py [--runs 7] [--threads N] [--json results/runtime_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cachepilot.models.registry import load_pipeline, weights_path
from cachepilot.policies.policy_file import load_policy
from cachepilot.policies.base import NoCache
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.runtime import attach_runtime, cache_summary, cached, remove_cache
from cachepilot.provenance import machine_summary

class FullReadingEverything(NoCache):
    """Always FULL, but asks for every optional signal: the runtime's cost when a learned policy observes all."""

    name = "none+all-signals"
    signals = None


PROMPT = "a red circle moving left quickly and a blue square standing still on a gradient background"


def timed(pipe, steps: int, seed: int) -> float:
    start = time.perf_counter()
    pipe(PROMPT, num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed), output_type="latent")
    return time.perf_counter() - start


def per_call_overhead(pipe, calls: int = 400) -> tuple[float, float, float]:
    """Median ms of a bare and a hooked (always-FULL) transformer call, alternated; and the overhead in %."""
    import copy

    bare, hooked = pipe.transformer, copy.deepcopy(pipe.transformer)
    attach_runtime(hooked, NoCache())
    x = torch.randn(1, pipe.transformer.config.in_channels, 8, 16, 16)  # the latent (+ position channels)
    text = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)[0]

    def call(model, i):
        with torch.no_grad(), model.cache_context("cond", step_index=i % 50, num_inference_steps=50):
            model(hidden_states=x, timestep=torch.tensor([999.0 - 20 * (i % 50)]), encoder_hidden_states=text, return_dict=False)

    times = {"bare": [], "hooked": []}
    for i in range(calls + 20):
        order = [("bare", bare), ("hooked", hooked)] if i % 2 == 0 else [("hooked", hooked), ("bare", bare)]
        for name, model in order:
            start = time.perf_counter()
            call(model, i)
            if i >= 20:  # warm-up
                times[name].append(time.perf_counter() - start)
    b, h = statistics.median(times["bare"]), statistics.median(times["hooked"])
    return 1e3 * b, 1e3 * h, 100 * (h / b - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--fraction", type=float, default=0.4)
    parser.add_argument("--policy", help="policy folder (default: the shipped policy-ppo)")
    parser.add_argument("--budget", type=float, default=0.35)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline("toy-wan")
    pipe.set_progress_bar_config(disable=True)
    timed(pipe, 5, 0)  # warm-up
    call_bare_ms, call_hooked_ms, call_overhead = per_call_overhead(pipe)

    bare, hooked, hooked_all, transformer_full, transformer_sched, pipeline_sched = [], [], [], [], [], []
    transformer_learned, pipeline_learned = [], []
    schedule = FixedSchedule.uniform(args.steps, args.fraction)
    learned = load_policy(args.policy or weights_path("toy-wan") / "policy-ppo").policy(args.budget)
    def run_hooked(policy, walls=None) -> float:
        with cached(pipe, policy):
            seconds = timed(pipe, args.steps, run)
            if walls is not None:
                walls.append(cache_summary(pipe).wall_time)
            return seconds

    for run in range(args.runs):  # interleaved, order reversed every other run (ABBA): drift hits all alike
        variants = [
            lambda: bare.append(timed(pipe, args.steps, run)),
            lambda: hooked.append(run_hooked(NoCache(), transformer_full)),
            lambda: hooked_all.append(run_hooked(FullReadingEverything())),
            lambda: pipeline_sched.append(run_hooked(schedule, transformer_sched)),
            lambda: pipeline_learned.append(run_hooked(learned, transformer_learned)),
        ]
        for variant in variants if run % 2 == 0 else variants[::-1]:
            variant()
    attach_runtime(pipe, schedule)
    timed(pipe, args.steps, 0)
    summary = cache_summary(pipe)
    remove_cache(pipe)
    attach_runtime(pipe, learned)
    timed(pipe, args.steps, 0)
    learned_fraction = cache_summary(pipe).computed_fraction
    remove_cache(pipe)

    med = statistics.median
    result = {
        "machine": machine_summary(),
        "runs": args.runs, "steps": args.steps,
        "call_bare_ms": call_bare_ms, "call_runtime_full_ms": call_hooked_ms, "call_overhead_pct": call_overhead,
        "bare_pipeline_s": med(bare), "runtime_full_pipeline_s": med(hooked),
        "overhead_pct": 100 * (med(hooked) / med(bare) - 1),
        "overhead_min_pct": 100 * (min(hooked) / min(bare) - 1),
        "overhead_paired_pct": 100 * (med([h / b for h, b in zip(hooked, bare)]) - 1),
        "runtime_full_all_signals_pipeline_s": med(hooked_all),
        "overhead_all_signals_pct": 100 * (med(hooked_all) / med(bare) - 1),
        "schedule_computed_fraction": summary.computed_fraction,
        "transformer_full_s": med(transformer_full), "transformer_schedule_s": med(transformer_sched),
        "transformer_speedup": med(transformer_full) / med(transformer_sched),
        "pipeline_speedup": med(bare) / med(pipeline_sched),
        "learned_budget": args.budget, "learned_computed_fraction": learned_fraction,
        "learned_flops_speedup": 1 / learned_fraction,
        "learned_transformer_speedup": med(transformer_full) / med(transformer_learned),
        "learned_pipeline_speedup": med(bare) / med(pipeline_learned),
    }
    result["learned_wall_over_flops"] = result["learned_transformer_speedup"] / result["learned_flops_speedup"]
    print(f"machine: {result['machine']}; median of {args.runs} runs, {args.steps} steps, CFG")
    print("| measurement | value |")
    print("|---|---|")
    print(f"| transformer call, bare / runtime always FULL, ms (median of 400 alternated calls) | "
          f"{call_bare_ms:.2f} / {call_hooked_ms:.2f} |")
    print(f"| runtime overhead per call | {call_overhead:+.1f}% |")
    print(f"| bare pipeline, s / video | {result['bare_pipeline_s']:.3f} |")
    print(f"| runtime, always FULL, s / video | {result['runtime_full_pipeline_s']:.3f} |")
    print(f"| runtime overhead (medians) | {result['overhead_pct']:+.1f}% |")
    print(f"| runtime overhead (fastest runs) | {result['overhead_min_pct']:+.1f}% |")
    print(f"| runtime overhead (median of per-run ratios) | {result['overhead_paired_pct']:+.1f}% |")
    print(f"| runtime, always FULL, every optional signal computed, s / video | {result['runtime_full_all_signals_pipeline_s']:.3f} |")
    print(f"| runtime overhead with every signal | {result['overhead_all_signals_pct']:+.1f}% |")
    print(f"| fixed schedule computed fraction | {result['schedule_computed_fraction']:.2f} |")
    print(f"| transformer time, always FULL / schedule, s | {result['transformer_full_s']:.3f} / {result['transformer_schedule_s']:.3f} |")
    print(f"| transformer wall-clock speedup | {result['transformer_speedup']:.2f}x |")
    print(f"| whole-pipeline speedup | {result['pipeline_speedup']:.2f}x |")
    print(f"| learned policy (PPO) at {args.budget:g}: computed fraction, FLOPs speedup | "
          f"{learned_fraction:.3f}, {result['learned_flops_speedup']:.2f}x |")
    print(f"| learned policy: transformer wall-clock speedup (decisions and forecasts included) | "
          f"{result['learned_transformer_speedup']:.2f}x |")
    print(f"| learned policy: wall-clock / FLOPs speedup | {result['learned_wall_over_flops']:.2f} |")
    print(f"| learned policy: whole-pipeline speedup | {result['learned_pipeline_speedup']:.2f}x |")
    if args.json:
        from cachepilot.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
