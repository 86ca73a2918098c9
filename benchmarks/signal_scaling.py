"""How the per-call signals a policy reads shift with the step count: the question a policy for every step count
must answer first. Every call computes (FULL), so each change is measured between consecutive steps.

    python benchmarks/signal_scaling.py [--steps 10,20,30,50,75] [--pairs 2] [--guidance 5]

For each step count it prints, per change signal (rel-L1 of the timestep embedding, of block 0's modulated input,
of the block-stack residual between consecutive FULL calls), its median over the calls of one generation, and
the median of the same value divided by the step's noise-level change |sigma_prev - sigma|. A signal that moves
in proportion to the step in noise level keeps the second column level across step counts; the last line gives
the log-log slope of the signal against |d sigma| pooled over every step count (1: proportional).
"""

from __future__ import annotations

import argparse

import numpy as np

from cachepilot.models.registry import load_pipeline
from cachepilot.models.stepping import generate_batch
from cachepilot.models.toy_wan.scenes import load_split
from cachepilot.policies.base import NoCache
from cachepilot.provenance import machine_summary
from cachepilot.runtime import cached

SIGNALS = ("temb_rel_l1", "modulated_rel_l1", "residual_rel_l1")


class Recorder(NoCache):
    """Always FULL; keeps the cond branch's signals of every call."""

    name = "recorder"
    signals = frozenset({"modulated_rel_l1", "residual_rel_l1"})

    def __init__(self):
        self.rows: list[dict] = []

    def decide(self, signals, valid):
        if signals.branch == "cond":
            self.rows.append(signals.as_dict())
        return super().decide(signals, valid)


def measure(pipe, steps: int, prompts: list[str], guidance: float) -> dict[str, list[tuple[float, float]]]:
    """Per signal, (value, the change in sigma it spans) over the cond calls: the embeddings' changes span this
    step; the residual's, read at call t, compares the FULLs at t - 2 and t - 1 and spans that step."""
    found = {s: [] for s in SIGNALS}
    for seed, prompt in enumerate(prompts):
        recorder = Recorder()
        with cached(pipe, recorder, num_inference_steps=steps):
            generate_batch(pipe, [prompt], [seed], steps, guidance, decode=False)
        sigma = [r["sigma"] for r in recorder.rows]
        for t, row in enumerate(recorder.rows):
            for s in SIGNALS:
                lag = 2 if s == "residual_rel_l1" else 1
                if t >= lag and row[s] is not None and None not in (sigma[t - lag], sigma[t - lag + 1]):
                    found[s].append((row[s], abs(sigma[t - lag] - sigma[t - lag + 1])))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,20,30,50,75")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=5.0)
    args = parser.parse_args()
    pipe = load_pipeline("toy-wan")
    pipe.set_progress_bar_config(disable=True)
    prompts = list(load_split("val"))[: args.pairs]
    print(f"machine: {machine_summary()}; toy-wan, {args.pairs} val prompts, guidance {args.guidance:g}, every call FULL")
    print("| steps | median d sigma | " + " | ".join(f"{s} | {s} / d sigma" for s in SIGNALS) + " |")
    print("|---|---|" + "---|---|" * len(SIGNALS))
    pooled = {s: ([], []) for s in SIGNALS}
    for steps in (int(v) for v in args.steps.split(",")):
        found = measure(pipe, steps, prompts, args.guidance)
        cells = []
        for s in SIGNALS:
            pairs = [(v, d) for v, d in found[s] if d > 0]
            values, d_sigma = np.array([v for v, _ in pairs]), np.array([d for _, d in pairs])
            pooled[s][0].extend(values)
            pooled[s][1].extend(d_sigma)
            cells.append(f"{np.median(values):.4f} | {np.median(values / d_sigma):.3f}" if len(values) else "- | -")
        print(f"| {steps} | {np.median([d for _, d in found['temb_rel_l1']]):.4f} | " + " | ".join(cells) + " |")
    slopes = []
    for s in SIGNALS:
        values, d_sigma = (np.array(v) for v in pooled[s])
        keep = (values > 0) & (d_sigma > 0)
        slope = np.polyfit(np.log(d_sigma[keep]), np.log(values[keep]), 1)[0] if keep.sum() > 2 else float("nan")
        slopes.append(f"{s} {slope:.2f}")
    print("log-log slope against |d sigma|, pooled: " + ", ".join(slopes))


if __name__ == "__main__":
    main()
