"""`cachepilot` command line: each subcommand parses its flags and calls one library function.

Each command imports the code it runs when it runs. Importing all of it at start-up costs about 9 s on a 2-core
CPU (diffusers' pipelines, Lightning, stable-baselines3), which `--help` and `cachepilot models` need not pay.

Commands that train or calibrate write under `runs/` in the working directory unless given `--out`, and never
replace a shipped artefact (what lies beside a model's weights) without `--force`. What a model ships (its
policies, calibration, oracle profile) is found from its weights folder, wherever the command runs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cachepilot import checks
from cachepilot.errors import CachepilotError, InvalidInputError

RUNS = Path("runs")  # where commands write by default, relative to the working directory


def _print_table(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for i, c in enumerate(columns):  # only the last column may wrap: names must stay whole
        table.add_column(c, no_wrap=i < len(columns) - 1, overflow="fold")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    Console().print(table)


def _read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file; an error names the file where there are none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"--prompts-file {path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"--prompts-file {path} is a folder; give a text file, one prompt per line") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"--prompts-file {path} cannot be read as UTF-8 text ({err})") from None
    prompts = [p.strip() for p in text.splitlines() if p.strip()]
    if not prompts:
        raise InvalidInputError(f"--prompts-file {path} holds no prompts; write one prompt per line")
    return prompts


def _source(args):
    """The model a command runs on (see `_model_arguments`)."""
    from cachepilot.models.registry import ModelSource  # command's own code (module docstring)

    options = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
    return ModelSource(args.model, args.model_path, args.device, args.dtype,
                       tuple((k, v) for k, v in options.items() if v is not None))


def _prompt_pairs(args, spec_family: str, train: int, val: int):
    """Training and validation prompts: toy-wan's splits, or a prompts file's first `train` prompts and the `val`
    after them (pair i takes seed i, so the two sets must not share prompts)."""
    if not args.prompts_file:
        if spec_family != "toy-wan":
            raise CachepilotError(f"pass --prompts-file (one prompt per line) to train on {args.model!r}")
        return "train", "val"
    prompts = _read_prompts(args.prompts_file)
    if len(prompts) < train + val:
        raise InvalidInputError(f"{args.prompts_file} has {len(prompts)} prompts; --pairs {train} and --val-pairs {val} "
                                f"need {train + val} (the first for training, the rest for validation)")
    return prompts[:train], prompts[train : train + val]


def cmd_models(args) -> int:
    from cachepilot.models.registry import MODELS, weights_path, weights_present  # command's own code (docstring)

    rows = []
    for name, spec in MODELS.items():
        path = weights_path(name)
        status = "present" if weights_present(name) else ("missing" if path else "--model-path")
        rows.append([name, spec.pipeline_class, status, spec.description])
    _print_table("cachepilot models", ["model", "pipeline", "weights", "description"], rows)
    return 0


def cmd_generate(args) -> int:
    # the command's own code (module docstring)
    from cachepilot.infer.generate import generate
    from cachepilot.infer.plugin import apply_cache
    from cachepilot.models.limits import check_generation, video_size
    from cachepilot.models.registry import weights_path
    from cachepilot.models.stepping import generation_options
    from cachepilot.policies.calibration import find_calibration, load_calibration
    from cachepilot.policies.policy_file import load_policy
    from cachepilot.policies.registry import get_baseline
    from cachepilot.runtime import cache_summary
    from cachepilot.video import check_output_size, check_writable, save_video

    check_writable(args.out)
    if args.budget is not None and args.cache != "learned":
        raise InvalidInputError(f"--budget applies to --cache learned; {args.cache} takes --knob")
    if args.knob is not None and args.cache in ("none", "learned"):
        raise InvalidInputError(f"--knob applies to the baselines; --cache {args.cache} takes none")
    pipe = _source(args).load()
    size = video_size(pipe, generation_options(pipe))
    check_generation(pipe, 1, args.steps, generation_options(pipe))
    check_output_size(size["num_frames"] or 1, size["height"] or 1, size["width"] or 1, args.scale)
    if args.cache == "learned":
        policy = args.policy or weights_path(args.model, args.model_path) / "policy-distill"
        budget = 0.35 if args.budget is None else args.budget
        apply_cache(pipe, load_policy(policy), num_inference_steps=args.steps, guidance_scale=args.guidance,
                    budget=budget)
    elif args.cache != "none":
        knobs = {} if args.knob is None else {get_baseline(args.cache).knob: args.knob}
        calibration = load_calibration(args.calibration) if args.calibration else find_calibration(pipe, args.model)
        apply_cache(pipe, args.cache, num_inference_steps=args.steps, calibration=calibration, **knobs)
    start = time.perf_counter()
    frames = generate(pipe, args.prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
                      negative_prompt=args.negative_prompt, **generation_options(pipe))
    elapsed = time.perf_counter() - start
    if args.cache != "none":
        print(cache_summary(pipe))
    path = save_video(frames[0], args.out, fps=args.fps, scale=args.scale)
    print(f"wrote {path} ({frames.shape[1]} frames, {args.steps} steps, guidance {args.guidance}, seed {args.seed}) in {elapsed:.1f} s")
    return 0


def cmd_train_model(args) -> int:
    # the command's own code (module docstring)
    from cachepilot.models.card import update_card
    from cachepilot.models.registry import check_output, get_spec
    from cachepilot.train.toy_model import ToyTrainConfig, export_toy_wan, train_toy_wan

    if get_spec(args.model).family != "toy-wan":
        raise CachepilotError(f"train-model trains the embedded testbed only (toy-wan), not {args.model!r}")
    out = check_output(args.out or RUNS / args.model / "model", args.force)
    if not args.export_only:
        config = ToyTrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                two_objects=args.two_objects)
        train_toy_wan(args.run_dir, config, accelerator=args.accelerator, devices=args.devices,
                      strategy=args.strategy, resume=not args.no_resume, init_from=args.init_from)
    facts = export_toy_wan(args.run_dir, out)
    update_card(out, **toy_wan_card_sections(), training=facts)
    print(f"exported EMA weights after {facts['training_steps']} steps to {out}")
    return 0


def toy_wan_card_sections() -> dict:
    from cachepilot.models.toy_wan import components, scenes  # command's own code (module docstring)

    return {
        "name": "toy-wan",
        "description": "A small but real diffusers WanTransformer3DModel trained by cachepilot (flow matching, "
        "Wan timestep shift 3.0, 10% prompt dropout for CFG) on synthetic moving-shape videos. "
        "It is cachepilot's embedded default model: everything runs on a CPU with no downloads.",
        "architecture": {k: str(v) for k, v in components.TRANSFORMER_CONFIG.items()}
        | {"video": f"3 x {scenes.NUM_FRAMES} x {scenes.HEIGHT} x {scenes.WIDTH} (the latent is the video, in [-1, 1])",
           "position channels": f"{components.POSITION_CHANNELS} fixed inputs beside the latent: frame, row, column in [-1, 1]",
           "scheduler": "UniPCMultistepScheduler, flow_prediction, flow_shift 3.0", "text_encoder": "ToyPromptEncoder (word embeddings + 1 transformer layer, 64-d, 24 tokens, "
                           f"attention bias by word distance up to {components.TEXT_RELATIVE_DISTANCE}, as T5)"},
        "data": {"colours": ", ".join(scenes.COLOURS), "shapes": ", ".join(scenes.SHAPES),
                 "motions": "left/right/up/down x slowly/quickly, or standing still", "objects": "1 or 2",
                 "backgrounds": ", ".join(scenes.BACKGROUNDS),
                 "splits": ", ".join(f"{s} {len(scenes.load_split(s))} prompts" for s in scenes.SPLITS)},
    }


def _card_to_update(args) -> Path:
    """The model folder whose card a check may record into: never a shipped one, and never over a record made on
    more videos or steps unless `--force`."""
    from cachepilot.models.card import read_card  # command's own code (module docstring)
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


def cmd_check_model(args) -> int:
    # the command's own code (module docstring)
    from cachepilot.io import atomic_write_text
    from cachepilot.models.card import update_card
    from cachepilot.models.registry import get_spec, load_pipeline
    from cachepilot.models.toy_wan import checker

    if get_spec(args.model).family != "toy-wan":
        raise CachepilotError("check-model judges toy-wan videos (synthetic shapes); real models have no such checker")
    if args.force and not args.update_card:
        raise InvalidInputError("--force applies to --update-card")
    json_path = checks.writable_file(args.json) if args.json else None  # before the check, not after it
    card_folder = _card_to_update(args) if args.update_card else None
    pipe = load_pipeline(args.model, args.model_path)
    summary, verdicts = checker.evaluate(pipe, split=args.split, pairs=args.pairs, steps=args.steps, guidance=args.guidance)
    _print_table(f"toy-wan checker on {args.pairs} {args.split} pairs", ["metric", "value"],
                 [["colour accuracy", f"{summary['colour_accuracy']:.1%}"], ["motion accuracy", f"{summary['motion_accuracy']:.1%}"]])
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


def cmd_calibrate(args) -> int:
    # the command's own code (module docstring)
    from cachepilot.models.registry import check_output, get_spec, weights_path
    from cachepilot.models.toy_wan.scenes import load_split
    from cachepilot.policies.calibration import CALIBRATION_FILE, write_calibration
    from cachepilot.train.calibrate import calibrate

    spec = get_spec(args.model)
    out = check_output(args.out or RUNS / args.model / CALIBRATION_FILE, args.force,
                       weights_path(args.model, args.model_path))
    if args.prompts_file:
        prompts = _read_prompts(args.prompts_file)[: args.prompts]
    elif spec.family == "toy-wan":
        split = list(load_split("train"))
        prompts = random.Random(0).sample(split, checks.count("--prompts", args.prompts, high=len(split)))
    else:
        raise CachepilotError("pass --prompts-file (one prompt per line) to calibrate a real model")
    pipe = _source(args).load()
    record = calibrate(pipe, prompts, steps=args.steps, guidance=args.guidance, model_id=args.model)
    write_calibration(record, out)
    tea = record["teacache"]
    print(f"wrote {out}: TeaCache fit R^2 {tea['r2']:.3f} over {tea['points']} points; "
          f"MagCache ratios for {', '.join(record['magcache']['mag_ratios'])}")
    print(f"baselines use it as {CALIBRATION_FILE} beside the model's weights, or with `generate --calibration {out}`")
    return 0


def cmd_references_build(args) -> int:
    # the command's own code (module docstring)
    from cachepilot.envs.episodes import make_pairs
    from cachepilot.envs.references import ReferenceStore
    from cachepilot.models.registry import get_spec

    if args.prompts_file:
        prompts = _read_prompts(args.prompts_file)
    elif get_spec(args.model).family == "toy-wan":
        prompts = args.split
    else:
        raise CachepilotError("pass --prompts-file (one prompt per line) to build references for a real model")
    pairs = make_pairs(args.model, prompts, args.pairs)
    pipe = _source(args).load()
    store = ReferenceStore(pipe, args.model, steps=args.steps, guidance=args.guidance, root=args.root)
    store.get_many(pairs, trajectory=args.trajectory, batch_size=args.batch_size)
    print(f"{len(pairs)} references ready in {store.root} (model hash {store.model_hash}, {args.steps} steps, "
          f"guidance {args.guidance}{', with trajectories' if args.trajectory else ''})")
    return 0


def _checked(check):
    """An argparse type: a number (`cachepilot.checks` rules), refused in one line where it breaks them."""
    def number(text: str):
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check(value)
        except InvalidInputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return number


_COUNT = _checked(lambda v: checks.count("value", v))
_COUNT0 = _checked(lambda v: checks.count("value", v, low=0))
_GUIDANCE = _checked(checks.guidance)
_SEED = _checked(checks.seed)
_BUDGET = _checked(checks.budget)
_NUMBER = _checked(lambda v: checks.number("value", v))
_POSITIVE = _checked(lambda v: checks.positive("value", v))
_SHARE = _checked(lambda v: checks.number("value", v, low=0.0, high=1.0))


def _path_check(check):
    """An argparse type: a path that `check` accepts, refused in one line where it does not."""
    def path(text: str) -> str:
        try:
            check(text)
        except InvalidInputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text
    return path


_FOLDER = _path_check(checks.folder)
_OUTPUT_FILE = _path_check(checks.output_file)
_DEVICE = _path_check(checks.device)


def _budgets(text: str) -> tuple[float, ...]:
    """Comma-separated fractions of full compute."""
    return tuple(_BUDGET(v.strip()) for v in text.split(","))


def _budgets_or_none(text: str) -> tuple[float, ...]:
    return () if text.strip().lower() in ("", "none") else _budgets(text)


def _one_line(message: str) -> str:
    """An error as one line: a newline it quotes (a path can hold one) is shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every other error of the command line
        print(f"cachepilot: error: {_one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# Flags of one algorithm only, with their defaults: given with the other algorithm they are refused, not ignored.
ALGORITHM_FLAGS = {
    "distill": {"rounds": 2, "relabel": "reference", "searched_budgets": (0.15,), "epochs": 200, "val_every": 50,
                "accelerator": "cpu", "devices": "1", "strategy": "auto"},
    "ppo": {"timesteps": 12_000, "init_from": None, "fresh": False},
}


def _algorithm_flags(args) -> None:
    """Refuse the flags of the other algorithm; fill in the defaults of this one's."""
    for algo, flags in ALGORITHM_FLAGS.items():
        for name, default in flags.items():
            given = getattr(args, name)
            if algo != args.algo and given is not None:
                raise InvalidInputError(f"--{name.replace('_', '-')} applies to --algo {algo}, not {args.algo}")
            if given is None:
                setattr(args, name, default)


def cmd_train(args) -> int:
    """Train a cache policy for a model and save it as a policy file; prints its validation table."""
    # the command's own code (module docstring)
    from cachepilot.models.registry import check_output, get_spec, weights_path
    from cachepilot.train.distill import DistillConfig, distill
    from cachepilot.train.rl import PPOConfig, train_ppo

    _algorithm_flags(args)
    prompts, val_prompts = _prompt_pairs(args, get_spec(args.model).family, args.pairs, args.val_pairs)
    source = _source(args)
    out = check_output(args.out or RUNS / args.model / f"policy-{args.algo}", args.force,
                       weights_path(args.model, args.model_path))
    budgets = args.budgets
    trainer = {"accelerator": args.accelerator, "devices": args.devices, "strategy": args.strategy}
    if args.algo == "distill":
        config = DistillConfig(pairs=args.pairs, val_pairs=args.val_pairs, budgets=budgets, dagger_rounds=args.rounds,
                               epochs=args.epochs, num_envs=args.num_envs, seed=args.seed, trainer=trainer,
                               student_val_every=args.val_every, relabel=args.relabel,
                               searched_budgets=args.searched_budgets)
        bundle, _ = distill(out, config, model=source, run_dir=args.run_dir, steps=args.steps, guidance=args.guidance,
                            references=args.references, prompts=prompts, val_prompts=val_prompts)
    else:
        config = PPOConfig(total_timesteps=args.timesteps, num_envs=args.num_envs, pairs=args.pairs,
                           val_pairs=args.val_pairs, budgets=(min(budgets), max(budgets)), init_from=args.init_from,
                           seed=args.seed)
        bundle, _ = train_ppo(out, config, model=source, run_dir=args.run_dir, steps=args.steps,
                              guidance=args.guidance, references=args.references, prompts=prompts,
                              val_prompts=val_prompts, fresh=args.fresh)
    print(f"policy saved to {out} ({bundle.net.num_parameters} parameters, "
          f"{bundle.card.training['wall_minutes']} min)")
    return 0


def cmd_ablate(args) -> int:
    """Every cache method on the same pairs: results.csv/json, table.md, pareto.png, side_by_side.gif."""
    from cachepilot.infer.ablate import AblationConfig, ablate  # command's own code (module docstring)

    source = _source(args)
    settings = {"model": args.model, "model_path": args.model_path, "split": args.split, "methods": args.methods,
                "device": source.device, "dtype": source.dtype, "options": source.options}
    if args.prompts_file:
        settings["prompts"] = tuple(_read_prompts(args.prompts_file))
    for name in ("pairs", "steps", "guidance"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.budgets:
        settings["budgets"] = args.budgets
    if args.oracle_budgets:
        settings["oracle_budgets"] = args.oracle_budgets
    if args.policies:
        settings["policies"] = tuple(p for p in args.policies.split(",") if p)
    if args.search_rounds is not None:
        from cachepilot.evaluation.search import SearchConfig  # command's own code (module docstring)

        settings["oracle_search"] = SearchConfig(rounds=args.search_rounds)
    config = AblationConfig.quick(**settings) if args.quick else AblationConfig(**settings)
    out = Path(args.out)
    ablate(config, out)
    print((out / "table.md").read_text())
    print(f"wrote {out}/results.csv, results.json, table.md, pareto.png, side_by_side.gif")
    return 0


def _model_arguments(p, prompts_file: str | None = None) -> None:
    """Which model, from where, on which device and in which dtype, and the video size it generates."""
    p.add_argument("--model", default="toy-wan")
    p.add_argument("--model-path", help="local diffusers folder with the model's weights")
    p.add_argument("--device", type=_DEVICE, help="torch device to run on, e.g. cuda (default: cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights' dtype (default: as saved)")
    p.add_argument("--height", type=_COUNT, help="video height in pixels (default: the pipeline's)")
    p.add_argument("--width", type=_COUNT, help="video width in pixels (default: the pipeline's)")
    p.add_argument("--num-frames", type=_COUNT, help="video length in frames (default: the pipeline's)")
    if prompts_file:
        p.add_argument("--prompts-file", help=prompts_file)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cachepilot", description="Learned cache policies for diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list known models and whether their weights are present")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("generate", help="generate a video (GIF or MP4 by extension)")
    _model_arguments(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", type=_COUNT, default=50)
    p.add_argument("--guidance", type=_GUIDANCE, default=5.0)
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--out", required=True, help="output path ending in .gif or .mp4")
    p.add_argument("--fps", type=_COUNT, default=8)
    p.add_argument("--scale", type=_COUNT, default=8, help="pixel upscale factor for viewing (toy-wan is 16 px)")
    p.add_argument("--cache", default="none", help="cache method: none, learned, static, teacache, magcache, "
                   "first-block, dbcache, adacache, mixcache")
    p.add_argument("--policy", help="learned: the policy directory (default: policy-distill beside the model's weights)")
    p.add_argument("--calibration", help="teacache / magcache: a calibration.json (default: the one beside the model's "
                   "weights, else the model's published constants)")
    p.add_argument("--budget", type=_BUDGET, help="learned: fraction of full compute to spend (default 0.35)")
    p.add_argument("--knob", type=_NUMBER, help="the method's knob (threshold / interval / scale); default: the paper's")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train-model", help="train (or resume training) the toy-wan testbed model and export it")
    p.add_argument("model", help="toy-wan")
    p.add_argument("--run-dir", type=_FOLDER, default="runs/toy-wan", help="Lightning checkpoints and TensorBoard logs")
    p.add_argument("--out", type=_FOLDER, help="where the exported pipeline folder goes (default: runs/<model>/model)")
    p.add_argument("--force", action="store_true", help="replace a shipped model folder (e.g. the installed toy-wan)")
    p.add_argument("--max-steps", type=_COUNT, default=20_000, help="total optimiser steps (counting resumed ones)")
    p.add_argument("--batch-size", type=_COUNT, default=8)
    p.add_argument("--lr", type=_POSITIVE, default=4e-4)
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--two-objects", type=_SHARE, default=0.5, help="share of two-object training scenes (0 to 1)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if the run has a checkpoint")
    p.add_argument("--export-only", action="store_true", help="only export the run's last checkpoint")
    p.add_argument("--init-from", help="without a run checkpoint, warm-start from this exported folder "
                   "(e.g. the shipped toy-wan, see `cachepilot models`) and count its training steps")
    p.set_defaults(func=cmd_train_model)

    p = sub.add_parser("train", help="train a cache policy (distillation from the oracle, or PPO) and save it")
    _model_arguments(p, "one prompt per line (real models): the first --pairs train, the next --val-pairs validate")
    p.add_argument("--algo", choices=["distill", "ppo"], default="distill")
    p.add_argument("--out", type=_FOLDER, help="policy directory (default: runs/<model>/policy-<algo>)")
    p.add_argument("--force", action="store_true", help="replace a shipped policy (one beside the model's weights)")
    p.add_argument("--run-dir", type=_FOLDER, help="oracle tables, rollouts, checkpoints, TensorBoard logs (default: "
                   "<out>.run); "
                   "a rerun resumes from it")
    p.add_argument("--steps", type=_COUNT, default=50)
    p.add_argument("--guidance", type=_GUIDANCE, default=5.0)
    p.add_argument("--pairs", type=_COUNT, default=16, help="training (prompt, seed) pairs from the train split")
    p.add_argument("--val-pairs", type=_COUNT, default=8)
    p.add_argument("--budgets", type=_budgets, default="0.15,0.2,0.3,0.4,0.5,0.6",
                   help="distill: the budgets each pair is rolled out at; ppo: their range is drawn from")
    p.add_argument("--rounds", type=_COUNT0, help="distill: DAgger rounds after the oracle's own (default 2)")
    p.add_argument("--relabel", choices=["reference", "reached"],
                   help="distill: DAgger costs the segment under way from the oracle's table (reference, the default) "
                   "or measures it from the state the student reached (real forks of its trajectory; slower)")
    p.add_argument("--searched-budgets", type=_budgets_or_none,
                   help="distill: those of --budgets taught by one schedule searched with real rollouts on train pairs "
                   "instead of the DP (default 0.15; about 4 minutes each on 2 cores for toy-wan; none: the DP "
                   "everywhere)")
    p.add_argument("--epochs", type=_COUNT, help="distill: epochs per round (default 200)")
    p.add_argument("--val-every", type=_COUNT, help="distill: epochs between real-generation scores of the student on "
                   "the val pairs (default 50; 1: every epoch; each costs a few seconds)")
    p.add_argument("--timesteps", type=_COUNT, help="ppo: environment steps in total (default 12000); a rerun may ask "
                   "for more to train on")
    p.add_argument("--init-from", help="ppo: warm-start the actor from this policy file (e.g. the distilled one)")
    p.add_argument("--fresh", action="store_true", default=None, help="ppo: delete the run folder's checkpoint and "
                   "start over (a rerun otherwise resumes it, and refuses other settings than it was made with)")
    p.add_argument("--num-envs", type=_COUNT, default=8, help="episodes run in one batch")
    p.add_argument("--references", type=_FOLDER, help="reference store folder (default: $CACHEPILOT_REFERENCES or "
                   "~/.cache)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--accelerator", help="distill: Lightning Trainer flag (default cpu)")
    p.add_argument("--devices", help="distill: Lightning Trainer flag (default 1; e.g. 2 with --strategy ddp)")
    p.add_argument("--strategy", help="distill: Lightning Trainer flag (default auto; ddp, ddp_spawn, ...)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ablate", help="run every cache method on the same prompts and seeds; tables, Pareto plot, GIF")
    _model_arguments(p, "one prompt per line, instead of a toy-wan split (real models)")
    p.add_argument("--methods", default="all", help="all, or a comma list: baseline and peer names, oracle (searched, "
                   "with the DP), oracle-dp, uniform, learned, learned-<policy>")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--pairs", type=_COUNT, help="(prompt i, seed i) pairs (default 16; --quick: 2)")
    p.add_argument("--steps", type=_COUNT, help="default 50")
    p.add_argument("--guidance", type=_GUIDANCE, help="default 5")
    p.add_argument("--budgets", type=_budgets, help="learned policies' budgets (default 0.15,0.2,0.25,0.35,0.5,0.6)")
    p.add_argument("--oracle-budgets", type=_budgets, help="the oracles' and uniform schedules' (default "
                   "0.15,0.25,0.35,0.5)")
    p.add_argument("--search-rounds", type=_COUNT, help="rounds of the searched oracle's local search (default 8; "
                   "--quick: 2)")
    p.add_argument("--policies", help="comma list of policy folders (default: every policy-* beside the weights)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 pairs, default knobs, one budget")
    p.add_argument("--out", type=_FOLDER, default="results/ablation", help="output folder; its runs/ are reused on a "
                   "rerun")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("calibrate", help="fit TeaCache / MagCache / AdaCache / MixCache statistics for a model")
    _model_arguments(p, "one prompt per line (required for real models)")
    p.add_argument("--prompts", type=_COUNT, default=16, help="how many prompts (toy-wan: sampled from the train split)")
    p.add_argument("--steps", type=_COUNT, default=50)
    p.add_argument("--guidance", type=_GUIDANCE, default=5.0)
    p.add_argument("--out", type=_OUTPUT_FILE, help="default: runs/<model>/calibration.json")
    p.add_argument("--force", action="store_true", help="replace a shipped calibration (one beside the model's weights)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("check-model", help="judge toy-wan generations: colour and motion accuracy on a split")
    p.add_argument("model", help="toy-wan")
    p.add_argument("--model-path")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--pairs", type=_COUNT, default=64)
    p.add_argument("--steps", type=_COUNT, default=50)
    p.add_argument("--guidance", type=_GUIDANCE, default=5.0)
    p.add_argument("--json", help="write per-video verdicts here")
    p.add_argument("--update-card", action="store_true", help="store the scores in the card of the model folder given "
                   "by --model-path (never in a shipped one)")
    p.add_argument("--force", action="store_true", help="with --update-card: replace a record made on more videos or "
                   "steps")
    p.set_defaults(func=cmd_check_model)

    p = sub.add_parser("references", help="the store of full-compute reference outputs used by the environments")
    refs = p.add_subparsers(dest="references_command", required=True)
    p = refs.add_parser("build", help="pre-build the references of a prompt split (missing or corrupted ones only)")
    _model_arguments(p, "one prompt per line, instead of a toy-wan split")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--pairs", type=_COUNT, default=64, help="(prompt i, seed i) pairs, the environments' default count")
    p.add_argument("--steps", type=_COUNT, default=50)
    p.add_argument("--guidance", type=_GUIDANCE, default=5.0)
    p.add_argument("--trajectory", action="store_true", help="also store per-step latents and signals")
    p.add_argument("--batch-size", type=_COUNT, default=16)
    p.add_argument("--root", type=_FOLDER, help="store folder (default: $CACHEPILOT_REFERENCES or "
                   "~/.cache/cachepilot/references)")
    p.set_defaults(func=cmd_references_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CachepilotError as err:
        print(f"cachepilot: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cachepilot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
