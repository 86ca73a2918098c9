"""`cachepilot check-model`: judge toy-wan generations (colour and motion accuracy) and record them in a card."""

from __future__ import annotations

import json
from pathlib import Path

from cachepilot import checks
from cachepilot.errors import CachepilotError, InvalidInputError

from .common import COUNT, add_setting_arguments, print_table

HELP = "judge toy-wan generations: colour and motion accuracy on a split"


def add_arguments(p) -> None:
    p.add_argument("model", help="toy-wan")
    p.add_argument("--model-path")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--pairs", type=COUNT, default=64)
    add_setting_arguments(p)
    p.add_argument("--json", help="write per-video verdicts here")
    p.add_argument("--update-card", action="store_true", help="store the scores in the card of the model folder given "
                   "by --model-path (never in a shipped one)")
    p.add_argument("--force", action="store_true", help="with --update-card: replace a record made on more videos or "
                   "steps")


def card_to_update(args) -> Path:
    """The model folder whose card a check may record into: never a shipped one, and never over a record made on
    more videos or steps unless `--force`."""
    from cachepilot.models.card import read_card  # imported when run (cachepilot.cli)
    from cachepilot.models.registry import shipped_folder, weights_path

    folder = weights_path(args.model, args.model_path)
    if folder.resolve().is_relative_to(shipped_folder().resolve()):
        raise InvalidInputError(f"{folder} ships with cachepilot and its card is not written; check a copy or an "
                                "export of the model instead (--model-path DIR)")
    recorded = read_card(folder).get("quality", {})
    weaker = [f"{key} {asked} < {recorded[key]}" for key, asked in (("videos", args.pairs), ("steps", args.steps))
              if isinstance(recorded.get(key), int) and asked < recorded[key]]
    if weaker and not args.force:
        raise InvalidInputError(f"{folder / 'card.json'} records a check on more ({', '.join(weaker)}); pass --force to "
                                "replace it with this one")
    return folder


def run(args) -> int:
    # imported when run (cachepilot.cli)
    from cachepilot.io import atomic_write_text
    from cachepilot.models.card import update_card
    from cachepilot.models.registry import get_spec, load_pipeline
    from cachepilot.models.toy_wan import checker

    if get_spec(args.model).family != "toy-wan":
        raise CachepilotError("check-model judges toy-wan videos (synthetic shapes); real models have no such checker")
    if args.force and not args.update_card:
        raise InvalidInputError("--force applies to --update-card")
    json_path = checks.writable_file(args.json) if args.json else None  # before the check, not after it
    card_folder = card_to_update(args) if args.update_card else None
    pipe = load_pipeline(args.model, args.model_path)
    summary, verdicts = checker.evaluate(pipe, split=args.split, pairs=args.pairs, steps=args.steps,
                                         guidance=args.guidance)
    print_table(f"toy-wan checker on {args.pairs} {args.split} pairs", ["metric", "value"],
                [["colour accuracy", f"{summary['colour_accuracy']:.1%}"],
                 ["motion accuracy", f"{summary['motion_accuracy']:.1%}"]])
    if json_path is not None:
        details = [{"prompt": v.prompt, "colour_ok": v.colour_ok, "motion_ok": v.motion_ok,
                    "colours_found": v.colours_found, "directions_found": v.directions_found} for v in verdicts]
        atomic_write_text(json_path, json.dumps({"summary": summary, "videos": details}, indent=2) + "\n")
    verdict = checker.bar_verdict(summary)
    print(verdict)
    if card_folder is not None:
        quality = summary | {"bar": verdict, "command": "cachepilot check-model toy-wan --model-path DIR --update-card"}
        update_card(card_folder, quality=quality)
        print(f"recorded in {card_folder / 'card.json'}")
    return 0
