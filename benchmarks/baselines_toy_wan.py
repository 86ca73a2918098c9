"""Every baseline at its default knob on toy-wan test prompts: compute and quality vs the uncached output.

    python benchmarks/baselines_toy_wan.py [--pairs 16] [--steps 50] [--json results/baselines.json]

TeaCache and MagCache read the calibration.json shipped beside toy-wan's weights (`--calibration` for another).
"""

from __future__ import annotations

import argparse
import json
import statistics


from cachepilot.evaluation.harness import ScoredPairs, run_method, timed_reference
from cachepilot.evaluation.peers import PEERS, available_peers, run_peer
from cachepilot.models.registry import embedded_path, load_pipeline
from cachepilot.models.toy_wan.scenes import load_split
from cachepilot.policies.registry import BASELINES, make_baseline
from cachepilot.policies.calibration import CALIBRATION_FILE, load_calibration
from cachepilot.provenance import machine_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--methods", default=",".join([b for b in BASELINES if b != "none"] + available_peers()))
    parser.add_argument("--calibration", default=str(embedded_path("toy-wan") / CALIBRATION_FILE))
    parser.add_argument("--json")
    args = parser.parse_args()
    pipe = load_pipeline("toy-wan")
    calibration = load_calibration(args.calibration)
    num_blocks = len(pipe.transformer.blocks)
    prompts = list(load_split("test"))[: args.pairs]
    seeds = list(range(args.pairs))
    timed_reference(pipe, prompts[:1], seeds[:1], 3, args.guidance)  # warm-up
    reference, ref_wall = timed_reference(pipe, prompts, seeds, args.steps, args.guidance)
    pairs = ScoredPairs(prompts, seeds, args.steps, args.guidance, reference)
    rows, table = [], []
    for name in args.methods.split(","):
        if name in PEERS:
            method = PEERS[name]
            results, wall = run_peer(pipe, method, {}, pairs, calibration)
        else:
            method = BASELINES[name]
            results, wall = run_method(pipe, make_baseline(name, calibration=calibration, num_blocks=num_blocks),
                                       pairs, name, method.default)
        rows += [r.as_dict() for r in results]
        frac = statistics.mean(r.computed_fraction for r in results)
        table.append((name, ", ".join(f"{k}={v:g}" for k, v in method.defaults.items()), frac, 1 / frac, ref_wall / wall,
                      statistics.mean(r.psnr for r in results), statistics.mean(r.ssim for r in results)))
    print(f"toy-wan, {args.pairs} test pairs, {args.steps} steps, guidance {args.guidance}; {machine_summary()}")
    print("| method | knob (default) | computed fraction | FLOPs speedup | transformer wall speedup | PSNR dB | SSIM |")
    print("|---|---|---|---|---|---|---|")
    for name, knob, frac, flops, wall, p, s in table:
        print(f"| {name} | {knob} | {frac:.2f} | {flops:.2f}x | {wall:.2f}x | {p:.2f} | {s:.3f} |")
    if args.json:
        from cachepilot.io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"machine": machine_summary(), "pairs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
