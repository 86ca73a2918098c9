"""`cachepilot plan`: what `cachepilot train --algo distill` would cost for a model at a video size, before it runs:
per phase, generations, transformer calls, FLOPs and a projected time, from a measured time per call or from FLOPs
at a stated throughput. Reads a local folder's transformer config or a registry model's published one; loads no
weights."""

from __future__ import annotations

from cachepilot.errors import InvalidInputError

from .common import COUNT, COUNT0, GUIDANCES, POSITIVE, SHARE, STEP_COUNTS, add_setting_arguments, budgets, budgets_or_none
from .train import TRAIN_GUIDANCE, TRAIN_STEPS

HELP = "the cost of training a policy for a model at a video size, per phase, before running anything"


def add_arguments(p) -> None:
    p.add_argument("--model", default="toy-wan")
    p.add_argument("--model-path", help="local diffusers folder: its transformer config is read (no weights)")
    p.add_argument("--frames", type=COUNT, help="video frames (default: the model's published size)")
    p.add_argument("--height", type=COUNT, help="video height in pixels")
    p.add_argument("--width", type=COUNT, help="video width in pixels")
    add_setting_arguments(p)
    p.add_argument("--train-steps", type=STEP_COUNTS, default=TRAIN_STEPS, help="as for train (default 10,20,30,50,75,100)")
    p.add_argument("--train-guidance", type=GUIDANCES, default=TRAIN_GUIDANCE, help="as for train (default 2,3,5,7,8)")
    p.add_argument("--pairs", type=COUNT, default=16)
    p.add_argument("--val-pairs", type=COUNT, default=8)
    p.add_argument("--budgets", type=budgets, default="0.15,0.2,0.3,0.4,0.5,0.6")
    p.add_argument("--rounds", type=COUNT0, default=2, help="DAgger rounds after the oracle's own")
    p.add_argument("--searched-budgets", type=budgets_or_none, default=(0.15,))
    p.add_argument("--epochs", type=COUNT, default=200)
    p.add_argument("--val-every", type=COUNT, default=50)
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--seconds-per-call", type=POSITIVE,
                       help="one transformer call (one sample, one CFG branch, every block) measured on your device "
                            "at this size")
    speed.add_argument("--tflops", type=POSITIVE, default=989.0,
                       help="the device's peak dense TFLOP/s at the dtype you run (default 989: an H100 SXM in bf16)")
    p.add_argument("--utilisation", type=SHARE, default=0.4, help="share of the peak a call sustains (default 0.4)")
    p.add_argument("--devices", type=COUNT, default=8, help="devices the time is also given for (default 8)")


def call_cost(args):
    """The model's transformer call at the asked video size."""
    from cachepilot.models.published import PUBLISHED, CallCost, folder_config  # imported when run (cachepilot.cli)
    from cachepilot.models.registry import get_spec, weights_path

    spec = get_spec(args.model)
    folder = weights_path(args.model, args.model_path)
    if spec.family == "toy-wan":
        from cachepilot.models.toy_wan.scenes import HEIGHT, NUM_FRAMES, WIDTH  # imported when run (cachepilot.cli)

        cls, config = folder_config(folder)
        if (args.frames, args.height, args.width) != (None, None, None):
            raise InvalidInputError("toy-wan generates 8 x 16 x 16 videos only; leave out --frames, --height, --width")
        return CallCost.of(cls, config, (NUM_FRAMES, HEIGHT, WIDTH), 24), (NUM_FRAMES, HEIGHT, WIDTH)
    if args.model_path is not None or (folder is not None and (folder / "transformer" / "config.json").is_file()):
        cls, config = folder_config(folder)
        published = PUBLISHED.get(args.model)
        default, text = (published.video, published.text_tokens) if published else ((None,) * 3, 512)
    elif args.model in PUBLISHED:
        published = PUBLISHED[args.model]
        cls, config, default, text = published.transformer_class, published.config, published.video, published.text_tokens
    else:
        raise InvalidInputError(f"no published config for {args.model!r}; give --model-path with its diffusers folder")
    video = tuple(v if v is not None else d for v, d in zip((args.frames, args.height, args.width), default))
    if None in video:
        raise InvalidInputError("give --frames, --height and --width: this model has no published video size here")
    return CallCost.at_video(cls, config, video, text), video


def run(args) -> int:
    from cachepilot.envs.spec import Setting, setting_cross  # imported when run (cachepilot.cli)
    from cachepilot.train.distill import DistillConfig
    from cachepilot.train.plan import Recipe, Throughput, distill_phases, plan_table

    call, video = call_cost(args)
    primary = Setting(args.steps, args.guidance)
    config = DistillConfig(dagger_rounds=args.rounds, searched_budgets=args.searched_budgets, epochs=args.epochs,
                           student_val_every=args.val_every)
    recipe = Recipe(args.pairs, args.val_pairs, primary, setting_cross(args.train_steps, args.train_guidance, primary),
                    args.budgets, config)
    if args.seconds_per_call is not None:
        throughput, rate = Throughput(seconds_per_call=args.seconds_per_call), f"{args.seconds_per_call:g} s per call (measured)"
    else:
        sustained = args.tflops * 1e12 * args.utilisation
        throughput = Throughput(flops_per_second=sustained)
        rate = f"{args.tflops:g} TFLOP/s peak x {args.utilisation:g} = {sustained / 1e12:.0f} TFLOP/s sustained"
    print(f"{args.model}: {call.blocks} blocks, video {' x '.join(map(str, video))} -> {call.tokens:,} tokens; "
          f"{call.flops / 1e12:.2f} TFLOPs per transformer call (one sample, one CFG branch); {rate}; "
          f"{len(recipe.settings)} settings, {args.pairs} train and {args.val_pairs} val pairs\n")
    print(plan_table(distill_phases(recipe), call, throughput, args.devices))
    return 0
