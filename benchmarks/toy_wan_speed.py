"""Median wall time of one 50-step CFG generation of toy-wan on this machine's CPU.

    python benchmarks/toy_wan_speed.py [--runs 5] [--threads 2] [--update-card]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from cachepilot.infer.generate import generate_video
from cachepilot.models.registry import embedded_path, load_pipeline
from cachepilot.provenance import machine_summary

PROMPT = "a red circle moving left quickly and a blue square standing still on a gradient background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--update-card", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline("toy-wan")
    generate_video(pipe, PROMPT, steps=3, progress=False)  # warm-up
    times = []
    for seed in range(args.runs):
        start = time.perf_counter()
        generate_video(pipe, PROMPT, steps=args.steps, guidance=5.0, seed=seed, progress=False)
        times.append(time.perf_counter() - start)
    machine = machine_summary()
    median = statistics.median(times)
    print("| steps | CFG | runs | median s / video | min | max | machine |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.steps} | yes | {args.runs} | {median:.2f} | {min(times):.2f} | {max(times):.2f} | {machine} |")
    if args.update_card:
        from cachepilot.models.card import update_card

        update_card(embedded_path("toy-wan"), speed={
            "median_seconds_per_50_step_cfg_video": round(median, 2), "runs": args.runs, "machine": machine,
            "command": "python benchmarks/toy_wan_speed.py --update-card"})


if __name__ == "__main__":
    main()
