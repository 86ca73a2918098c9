"""`cachepilot calibrate`: TeaCache / MagCache / AdaCache / MixCache statistics for a model."""

from __future__ import annotations

import random
from dataclasses import replace

from cachepilot import checks

from .common import (COUNT, OUTPUT_FILE, RUNS, add_model_arguments, add_process_arguments, add_setting_arguments,
                     model_source, processes, prompts_for)

HELP = "fit TeaCache / MagCache / AdaCache / MixCache statistics for a model"


def add_arguments(p) -> None:
    add_model_arguments(p, "one prompt per line (required for real models)")
    p.add_argument("--prompts", type=COUNT, default=16, help="how many prompts (toy-wan: sampled from the train split)")
    add_setting_arguments(p)
    p.add_argument("--out", type=OUTPUT_FILE, help="default: runs/<model>/calibration.json")
    p.add_argument("--force", action="store_true", help="replace a shipped calibration (one beside the model's weights)")
    add_process_arguments(p)


def run(args) -> int:
    # imported when run (cachepilot.cli)
    from cachepilot.models.registry import check_output, get_spec, weights_path
    from cachepilot.models.toy_wan.scenes import load_split
    from cachepilot.policies.calibration import CALIBRATION_FILE

    out = check_output(args.out or RUNS / args.model / CALIBRATION_FILE, args.force,
                       weights_path(args.model, args.model_path))
    prompts = prompts_for(args, get_spec(args.model).family, "train", "calibrate")
    if isinstance(prompts, str):  # toy-wan: a fixed sample of its train split
        split = list(load_split(prompts))
        prompts = random.Random(0).sample(split, checks.count("--prompts", args.prompts, high=len(split)))
    else:
        prompts = prompts[: args.prompts]
    processes(args).launch(_calibrate, model_source(args), prompts, args, out)
    return 0


def _calibrate(shard, source, prompts: list[str], args, out) -> None:
    """This process's share of the generations; the first process writes the record and says so."""
    # imported when run (cachepilot.cli)
    from cachepilot.policies.calibration import CALIBRATION_FILE, write_calibration
    from cachepilot.train.calibrate import calibrate

    pipe = replace(source, device=shard.device or source.device).load()
    record = calibrate(pipe, prompts, steps=args.steps, guidance=args.guidance, model_id=args.model, shard=shard)
    if shard.rank != 0:
        return
    write_calibration(record, out)
    tea = record["teacache"]
    print(f"wrote {out}: TeaCache fit R^2 {tea['r2']:.3f} over {tea['points']} points; "
          f"MagCache ratios for {', '.join(record['magcache']['mag_ratios'])}")
    print(f"baselines use it as {CALIBRATION_FILE} beside the model's weights, or with `generate --calibration {out}`")
