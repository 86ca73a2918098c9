"""`cachepilot ablate`: every cache method on the same pairs: results.csv/json, table.md, pareto.png, the GIF."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .common import (COUNT, FOLDER, GUIDANCES, STEP_COUNTS, add_model_arguments, add_process_arguments, budgets,
                     model_source, processes, read_prompts)

HELP = "run every cache method on the same prompts and seeds; tables, Pareto plot, GIF"


def add_arguments(p) -> None:
    add_model_arguments(p, "one prompt per line, instead of a toy-wan split (real models)")
    p.add_argument("--methods", default="all", help="all, or a comma list: baseline and peer names, oracle (searched, "
                   "with the DP), oracle-dp, uniform, learned, learned-<policy>")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--pairs", type=COUNT, help="(prompt i, seed i) pairs (default 16; --quick: 2)")
    p.add_argument("--steps", type=STEP_COUNTS, help="denoising steps, or a comma list of step counts (default 50)")
    p.add_argument("--guidance", type=GUIDANCES, help="classifier-free guidance scale, or a comma list (default 5); "
                   "with several steps or scales every combination runs, each in its own folder of --out, and "
                   "settings.md gives the learned policies' margins at each")
    p.add_argument("--budgets", type=budgets, help="learned policies' budgets (default 0.15,0.2,0.25,0.35,0.5,0.6)")
    p.add_argument("--oracle-budgets", type=budgets, help="the oracles' and uniform schedules' (default "
                   "0.15,0.25,0.35,0.5)")
    p.add_argument("--search-rounds", type=COUNT, help="rounds of the searched oracle's local search (default 8; "
                   "--quick: 2)")
    p.add_argument("--policies", help="comma list of policy folders (default: every policy-* beside the weights)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 pairs, default knobs, one budget")
    add_process_arguments(p)
    p.add_argument("--out", type=FOLDER, default="results/ablation", help="output folder; its runs/ are reused on a "
                   "rerun")


def run(args) -> int:
    from cachepilot.infer.ablation import AblationConfig  # imported when run (cachepilot.cli)

    source = model_source(args)
    settings = {"model": args.model, "model_path": args.model_path, "split": args.split, "methods": args.methods,
                "device": source.device, "dtype": source.dtype, "options": source.options}
    if args.prompts_file:
        settings["prompts"] = tuple(read_prompts(args.prompts_file))
    if args.pairs is not None:
        settings["pairs"] = args.pairs
    if args.budgets:
        settings["budgets"] = args.budgets
    if args.oracle_budgets:
        settings["oracle_budgets"] = args.oracle_budgets
    if args.policies:
        settings["policies"] = tuple(p for p in args.policies.split(",") if p)
    if args.search_rounds is not None:
        from cachepilot.evaluation.search import SearchConfig  # imported when run (cachepilot.cli)

        settings["oracle_search"] = SearchConfig(rounds=args.search_rounds)
    config = AblationConfig.quick(**settings) if args.quick else AblationConfig(**settings)
    steps, guidance = args.steps or (config.steps,), args.guidance or (config.guidance,)
    processes(args).launch(_ablate, config, steps, guidance, Path(args.out))
    return 0


def _ablate(shard, config, steps, guidance, out) -> None:
    """One process's part of the ablation; the first one prints the report."""
    from cachepilot.infer.ablation import ablate, ablate_settings  # imported when run (cachepilot.cli)

    if len(steps) == len(guidance) == 1:
        if ablate(replace(config, steps=steps[0], guidance=guidance[0]), out, shard=shard) is not None:
            print((out / "table.md").read_text())
            print(f"wrote {out}/results.csv, results.json, table.md, pareto.png, side_by_side.gif")
    elif ablate_settings(config, [(s, g) for s in steps for g in guidance], out, shard=shard) is not None:
        print((out / "settings.md").read_text())
        print(f"wrote {out}/settings.md, and each setting's report in {out}/steps<N>-guidance<G>/")
