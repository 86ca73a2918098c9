"""`cachepilot` command line: one module per command, each adding its own flags and running one library call.

Each command imports the code it runs when it runs. Importing all of it at start-up costs about 9 s on a 2-core
CPU (diffusers' pipelines, Lightning, stable-baselines3), which `--help` and `cachepilot models` need not pay.

Commands that train or calibrate write under `runs/` in the working directory unless given `--out`, and never
replace a shipped artefact (what lies beside a model's weights) without `--force`. What a model ships (its
policies, calibration, oracle profile) is found from its weights folder, wherever the command runs.
"""

from __future__ import annotations

import sys

from cachepilot.errors import CachepilotError

from . import ablate, calibrate, check_model, generate, models, plan, references, train, train_model
from .common import Parser, one_line

COMMANDS = {"models": models, "generate": generate, "train-model": train_model, "train": train, "ablate": ablate,
            "calibrate": calibrate, "check-model": check_model, "references": references, "plan": plan}


def build_parser() -> Parser:
    parser = Parser(prog="cachepilot", description="Learned cache policies for diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CachepilotError as err:
        print(f"cachepilot: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cachepilot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
