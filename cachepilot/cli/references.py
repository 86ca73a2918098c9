"""`cachepilot references build`: pre-build the full-compute references the environments score against."""

from __future__ import annotations

from .common import (COUNT, FOLDER, add_model_arguments, add_process_arguments, add_setting_arguments, model_source,
                     processes, prompts_for)

HELP = "the store of full-compute reference outputs used by the environments"


def add_arguments(p) -> None:
    refs = p.add_subparsers(dest="references_command", required=True)
    p = refs.add_parser("build", help="pre-build the references of a prompt split (missing or corrupted ones only)")
    add_model_arguments(p, "one prompt per line, instead of a toy-wan split")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--pairs", type=COUNT, default=64, help="(prompt i, seed i) pairs, the environments' default count")
    add_setting_arguments(p)
    p.add_argument("--trajectory", action="store_true", help="also store per-step latents and signals")
    p.add_argument("--batch-size", type=COUNT, default=16)
    p.add_argument("--root", type=FOLDER, help="store folder (default: $CACHEPILOT_REFERENCES or "
                   "~/.cache/cachepilot/references)")
    add_process_arguments(p)
    p.set_defaults(func=build)


def run(args) -> int:
    return args.func(args)


def build(args) -> int:
    # imported when run (cachepilot.cli)
    from cachepilot.envs.references import build_references, default_root
    from cachepilot.envs.spec import make_pairs
    from cachepilot.models.registry import get_spec

    prompts = prompts_for(args, get_spec(args.model).family, args.split, "build references")
    pairs = make_pairs(args.model, prompts, args.pairs)
    built = build_references(model_source(args), pairs, args.steps, args.guidance, args.root, args.trajectory,
                             args.batch_size, processes(args))
    if built is not None:  # the first process says it, once
        print(f"{len(pairs)} references ready in {args.root or default_root()} ({built} built, {args.steps} steps, "
              f"guidance {args.guidance}{', with trajectories' if args.trajectory else ''})")
    return 0
