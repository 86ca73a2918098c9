"""`cachepilot generate`: one video, with no cache, a baseline, or a learned policy."""

from __future__ import annotations

import time

from cachepilot.errors import InvalidInputError

from .common import BUDGET, COUNT, NUMBER, SEED, add_model_arguments, add_setting_arguments, model_source

HELP = "generate a video (GIF or MP4 by extension)"


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    add_setting_arguments(p)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", required=True, help="output path ending in .gif or .mp4")
    p.add_argument("--fps", type=COUNT, default=8)
    p.add_argument("--scale", type=COUNT, default=8, help="pixel upscale factor for viewing (toy-wan is 16 px)")
    p.add_argument("--cache", default="none", help="cache method: none, learned, uniform, static, teacache, "
                   "magcache, first-block, dbcache, adacache, mixcache")
    p.add_argument("--policy", help="learned: the policy directory (default: policy-distill beside the model's weights)")
    p.add_argument("--calibration", help="teacache / magcache: a calibration.json (default: the one beside the model's "
                   "weights, else the model's published constants)")
    p.add_argument("--budget", type=BUDGET, help="learned: fraction of full compute to spend (default 0.35)")
    p.add_argument("--extrapolate", action="store_true", help="learned: run at a step count or guidance scale outside "
                   "the ones the policy was trained over (it warns; its quality there is not measured)")
    p.add_argument("--knob", type=NUMBER, help="the method's knob (threshold / interval / scale; uniform: its "
                   "fraction of computed steps); default: the paper's")


def run(args) -> int:
    # imported when run (cachepilot.cli)
    from cachepilot.infer.generate import generate_video
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
    if args.extrapolate and args.cache != "learned":
        raise InvalidInputError("--extrapolate applies to --cache learned")
    if args.knob is not None and args.cache in ("none", "learned"):
        raise InvalidInputError(f"--knob applies to the baselines; --cache {args.cache} takes none")
    pipe = model_source(args).load()
    size = video_size(pipe, generation_options(pipe))
    check_generation(pipe, 1, args.steps, generation_options(pipe))
    check_output_size(size["num_frames"] or 1, size["height"] or 1, size["width"] or 1, args.scale)
    if args.cache == "learned":
        policy = args.policy or weights_path(args.model, args.model_path) / "policy-distill"
        budget = 0.35 if args.budget is None else args.budget
        apply_cache(pipe, load_policy(policy), num_inference_steps=args.steps, guidance_scale=args.guidance,
                    budget=budget, extrapolate=args.extrapolate)
    elif args.cache != "none":
        knobs = {} if args.knob is None else {get_baseline(args.cache).knob: args.knob}
        calibration = load_calibration(args.calibration) if args.calibration else find_calibration(pipe, args.model)
        apply_cache(pipe, args.cache, num_inference_steps=args.steps, calibration=calibration, **knobs)
    start = time.perf_counter()
    frames = generate_video(pipe, args.prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
                            negative_prompt=args.negative_prompt, **generation_options(pipe))
    elapsed = time.perf_counter() - start
    if args.cache != "none":
        print(cache_summary(pipe))
    path = save_video(frames[0], args.out, fps=args.fps, scale=args.scale)
    print(f"wrote {path} ({frames.shape[1]} frames, {args.steps} steps, guidance {args.guidance}, seed {args.seed}) "
          f"in {elapsed:.1f} s")
    return 0
