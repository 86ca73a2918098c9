"""Wall-clock of the reference build and of the oracle search on one process and on several, one thread each.

    python benchmarks/parallel_speed.py [--processes 1,2] [--pairs 8] [--steps 20] [--budget 0.25] [--rounds 3]
        [--proposals 4] [--batch 4]

Each phase runs on toy-wan's train pairs, through `cachepilot.parallel` (Lightning Fabric, `ddp_spawn`, gloo on
CPU), in a fresh reference store per run. A process count's time is the whole call, start-up (spawning, loading
the model in each process) included, which is what a user waits for; the search's own time, inside the processes,
is printed beside it. The search's rollouts run in batches of `--batch`, so its result is the same on any number of
processes; the table says whether it was. A last row runs one process on every core, as a user does by default.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

from cachepilot.envs.references import build_references
from cachepilot.envs.spec import RunSpec
from cachepilot.evaluation.oracle import fulls_for_budget
from cachepilot.evaluation.search import SearchConfig, forecast_reuses, search
from cachepilot.parallel import Processes, Shard
from cachepilot.policies.schedule import full_steps_schedule, uniform_full_steps
from cachepilot.provenance import machine_summary


def _processes(count: int) -> Processes:
    return Processes() if count == 1 else Processes(devices=count, strategy="ddp_spawn")


def _searched(shard: Shard, pairs: int, steps: int, reference: np.ndarray, budget: float, config: dict,
              threads: int | None) -> tuple[float, list]:
    """The search's wall-clock in this process, and its schedules."""
    if threads:
        torch.set_num_threads(threads)
    spec = RunSpec("toy-wan", prompts="train", pairs=pairs, steps=steps, guidance=5.0, budgets=(budget,))
    uniform = full_steps_schedule(spec.steps, uniform_full_steps(spec.steps, fulls_for_budget(budget, spec.steps)
                                                                 / spec.steps))
    starts = {"uniform": [uniform] * len(reference), "uniform-f1": [forecast_reuses(uniform, 1)] * len(reference)}
    start = time.perf_counter()
    result = search(spec, budget, SearchConfig(**config), starts, reference, lambda *a: None, shard)
    return time.perf_counter() - start, [[str(a) for a in s] for s in result.schedules]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--proposals", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="generations per batch, in both phases")
    args = parser.parse_args()
    counts = [int(c) for c in args.processes.split(",")]
    spec = RunSpec("toy-wan", prompts="train", pairs=args.pairs, steps=args.steps, guidance=5.0, budgets=(args.budget,))
    config = {"rounds": args.rounds, "proposals": args.proposals, "batch": args.batch}  # Fabric copies dicts
    cores = os.cpu_count() or 1
    runs = [(c, 1) for c in counts] + [(1, cores)]
    rows, schedules = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        reference = replace(spec, references=f"{tmp}/ref").reference_store().outputs(spec.pair_list())
        for count, threads in runs:
            one = threads if count == 1 else None  # ddp_spawn gives each process its share of the cores
            torch.set_num_threads(threads)
            start = time.perf_counter()
            build_references(spec.model, spec.pair_list(), spec.steps, spec.guidance, f"{tmp}/build-{count}-{threads}",
                             batch_size=args.batch, processes=_processes(count))
            build = time.perf_counter() - start
            start = time.perf_counter()
            inside, found = _processes(count).launch(_searched, args.pairs, args.steps, reference, args.budget, config, one)
            rows.append((count, threads, build, time.perf_counter() - start, inside))
            schedules[(count, threads)] = found
    first = rows[0]
    print(f"toy-wan, {args.pairs} train pairs, {args.steps} steps, guidance 5; references in batches of {args.batch}; "
          f"search at budget {args.budget:g}, {args.rounds} rounds x {args.proposals} proposals per pair, rollouts in "
          f"batches of {args.batch}; {machine_summary()}\n")
    print("| processes | threads each | references build, s | speed-up | oracle search, s (inside) | speed-up | "
          "same schedules as 1 process |\n|---|---|---|---|---|---|---|")
    for count, threads, build, whole, inside in rows:
        same = "yes" if schedules[(count, threads)] == schedules[(first[0], first[1])] else "no"
        print(f"| {count} | {threads} | {build:.1f} | {first[2] / build:.2f}x | {whole:.1f} ({inside:.1f}) | "
              f"{first[3] / whole:.2f}x ({first[4] / inside:.2f}x) | {same} |")


if __name__ == "__main__":
    main()
