"""Speed at real size without real weights: a family's transformer built from its published config, random weights.

Quality means nothing here, cost is real. For one family it measures, calling the transformer as its pipeline
does (two calls per step, or one batched [uncond; cond] call):
1. the runtime's per-call overhead at FULL: a bare and a hooked call alternated (machine drift cancels);
2. wall-clock vs FLOPs speedup of a fixed schedule computing 40% of the steps;
3. the same for the shipped learned policy's schedule: the step-level schedule it takes on a toy-wan test pair at
   the budget, replayed on this model (its BLOCK_k scaled to the model's depth) while the runtime computes every
   signal the policy reads;
4. the policy's decision time (its network on its observation, timed on toy-wan) as a share of one call here.

On this CPU the published depth and video size do not fit in time or memory; `--layers` keeps the first N blocks
(every block costs the same, so shares per call hold) and `--frames --height --width` set the latent size.

    python benchmarks/real_size_speed.py --family wan [--layers 30] [--frames 21 --height 60 --width 104]
        [--steps 50] [--device cuda] [--dtype bfloat16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import diffusers

from cachepilot.evaluation.search import realise
from cachepilot.models.adapters import adapter_for
from cachepilot.models.published import PUBLISHED, latent_size
from cachepilot.models.registry import load_pipeline, weights_path
from cachepilot.models.toy_wan.scenes import load_split
from cachepilot.policies.base import NoCache
from cachepilot.policies.policy_file import load_policy
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.provenance import machine_summary
from cachepilot.runtime import FULL, Action, Kind, attach_runtime, cache_summary, remove_cache

# each family's published model: its transformer class and config, its latent video at the published size, its text
# tokens
_MODELS = {"wan": "wan2.1-t2v-1.3b", "hunyuanvideo": "hunyuanvideo", "cogvideox": "cogvideox-5b", "ltx-video": "ltx-video"}
FAMILIES = {family: (getattr(diffusers, PUBLISHED[name].transformer_class), PUBLISHED[name].config,
                     latent_size(PUBLISHED[name].transformer_class, PUBLISHED[name].video), PUBLISHED[name].text_tokens)
            for family, name in _MODELS.items()}
LAYER_KEYS = {"wan": ("num_layers",), "hunyuanvideo": ("num_layers", "num_single_layers"),
              "cogvideox": ("num_layers",), "ltx-video": ("num_layers",)}


def build(family: str, layers: int | None, device: str, dtype: torch.dtype):
    cls, config, _, _ = FAMILIES[family]
    config = dict(config)
    if layers is not None:  # keep the published proportions of the block lists, `layers` blocks in all
        keys = LAYER_KEYS[family]
        total = sum(config[k] for k in keys)
        for k in keys:
            config[k] = max(1, round(layers * config[k] / total))
    torch.manual_seed(0)
    model = cls(**config).to(device=device).eval()
    return model if dtype == torch.float32 else model.to(dtype=dtype)


def inputs(family: str, model, frames: int, height: int, width: int, batch: int, text_len: int, device, dtype):
    """One call's keyword arguments at this latent size, random (the cost is what is measured)."""
    c, g = model.config, torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    if family == "wan":
        return dict(hidden_states=randn(batch, c.in_channels, frames, height, width),
                    encoder_hidden_states=randn(batch, text_len, c.text_dim))
    if family == "hunyuanvideo":
        return dict(hidden_states=randn(batch, c.in_channels, frames, height, width),
                    encoder_hidden_states=randn(batch, text_len, c.text_embed_dim),
                    encoder_attention_mask=torch.ones(batch, text_len, device=device, dtype=dtype),
                    pooled_projections=randn(batch, c.pooled_projection_dim),
                    guidance=torch.full((batch,), 6000.0, device=device, dtype=dtype))
    if family == "cogvideox":
        from diffusers.models.embeddings import get_3d_rotary_pos_embed  # only this family needs it
        p = c.patch_size
        grid = (height // p, width // p)
        rotary = get_3d_rotary_pos_embed(c.attention_head_dim, ((0, 0), grid), grid, frames, device=device)
        return dict(hidden_states=randn(batch, frames, c.in_channels, height, width),
                    encoder_hidden_states=randn(batch, text_len, c.text_embed_dim), image_rotary_emb=rotary)
    return dict(hidden_states=randn(batch, frames * height * width, c.in_channels),
                encoder_hidden_states=randn(batch, text_len, c.caption_channels),
                encoder_attention_mask=torch.ones(batch, text_len, device=device, dtype=dtype),
                num_frames=frames, height=height, width=width)


class Caller:
    """Calls the transformer the way its pipeline does, one denoising step at a time (cost only: the latent stays)."""

    def __init__(self, family: str, model, size, text_len: int, steps: int, device, dtype):
        self.model, self.steps, self.device = model, steps, device
        self.batched = adapter_for(model).cfg_layout == "batched"
        self.cfg = family != "hunyuanvideo"  # HunyuanVideo's guidance is embedded: one call per step
        self.kwargs = inputs(family, model, *size, 2 if self.batched and self.cfg else 1, text_len, device, dtype)

    def sync(self):
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()

    def call(self, step: int, branch: str):
        t = torch.full((self.kwargs["hidden_states"].shape[0],), 999.0 - 999.0 * step / self.steps, device=self.device)
        with torch.no_grad(), self.model.cache_context(branch, step_index=step, num_inference_steps=self.steps):
            self.model(timestep=t, return_dict=False, **self.kwargs)

    def generation(self) -> float:
        """Seconds of transformer calls for one generation."""
        self.sync()
        start = time.perf_counter()
        for step in range(self.steps):
            for branch in (("cond_uncond",) if self.batched else ("cond", "uncond") if self.cfg else ("cond",)):
                self.call(step, branch)
        self.sync()
        return time.perf_counter() - start


def per_call_overhead(caller: Caller, calls: int) -> tuple[float, float]:
    """Median ms of a bare and of a hooked (always FULL) call, alternated."""
    times = {"bare": [], "hooked": []}
    branch = "cond_uncond" if caller.batched else "cond"
    for i in range(calls + 2):
        for hooked in ((False, True) if i % 2 == 0 else (True, False)):
            if hooked:
                attach_runtime(caller.model, NoCache(), batched_cfg=caller.batched and caller.cfg)
            caller.sync()
            start = time.perf_counter()
            caller.call(i % caller.steps, branch)
            caller.sync()
            if i >= 2:  # warm-up
                times["hooked" if hooked else "bare"].append(time.perf_counter() - start)
            remove_cache(caller.model)
    return 1e3 * statistics.median(times["bare"]), 1e3 * statistics.median(times["hooked"])


def timed_schedule(caller: Caller, policy, runs: int) -> tuple[float, float]:
    """(median transformer seconds per generation, computed fraction) under `policy`."""
    walls = []
    for _ in range(runs):
        attach_runtime(caller.model, policy, num_inference_steps=caller.steps, batched_cfg=caller.batched and caller.cfg)
        try:
            walls.append(caller.generation())
            fraction = cache_summary(caller.model).computed_fraction
        finally:
            remove_cache(caller.model)
    return statistics.median(walls), fraction


def learned_schedule(steps: int, budget: float, num_blocks: int, cfg: bool):
    """The shipped PPO policy's step-level schedule on a toy-wan test pair, with the time it takes per decision, its
    BLOCK_k scaled to `num_blocks` blocks (its CFG steps computed where there is no uncond branch), and the policy
    (for the signals it reads)."""
    pipe = load_pipeline("toy-wan")
    policy = load_policy(weights_path("toy-wan") / "policy-ppo").policy(budget)
    decide, spent = policy.decide_batch, []

    def timed_decide(signals, valid):
        start = time.perf_counter()
        try:
            return decide(signals, valid)
        finally:
            spent.append(time.perf_counter() - start)
    policy.decide_batch = timed_decide
    schedule = realise(pipe, policy, [load_split("test")[0]], [0], steps, 5.0)[0]
    toy_blocks = policy.num_blocks

    def scaled(a: Action) -> Action:
        if a.kind is Kind.CFG and not cfg:  # no uncond branch to rebuild: the cond branch computes, as FULL
            return FULL
        if a.kind is not Kind.BLOCK:
            return a
        return Action.block(max(1, round(a.k * num_blocks / toy_blocks)), a.back).forecasting(a.forecast)
    return [scaled(a) for a in schedule], 1e3 * statistics.median(spent), policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="wan")
    parser.add_argument("--layers", type=int, help="blocks in all (default: the published depth)")
    parser.add_argument("--frames", type=int, help="latent frames (default: the published video)")
    parser.add_argument("--height", type=int, help="latent height")
    parser.add_argument("--width", type=int, help="latent width")
    parser.add_argument("--steps", type=int, default=50, help="the shipped policy's step count (50)")
    parser.add_argument("--fraction", type=float, default=0.4)
    parser.add_argument("--budget", type=float, default=0.35)
    parser.add_argument("--calls", type=int, default=10, help="alternated calls for the overhead")
    parser.add_argument("--runs", type=int, default=1, help="generations per schedule (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--json")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    _, _, published, text_len = FAMILIES[args.family]
    size = tuple(v if v is not None else p for v, p in zip((args.frames, args.height, args.width), published))
    model = build(args.family, args.layers, args.device, dtype)
    blocks = len(adapter_for(model).blocks(model))
    params = sum(p.numel() for p in model.parameters())
    caller = Caller(args.family, model, size, text_len, args.steps, args.device, dtype)

    bare_ms, hooked_ms = per_call_overhead(caller, args.calls)
    full_s, _ = timed_schedule(caller, NoCache(), args.runs)
    uniform_s, uniform_fraction = timed_schedule(caller, FixedSchedule.uniform(args.steps, args.fraction), args.runs)
    schedule, decision_ms, learned = learned_schedule(args.steps, args.budget, blocks, caller.cfg)
    replay = FixedSchedule(schedule)
    replay.signals = learned.signals  # the runtime computes what the policy would observe
    learned_s, learned_fraction = timed_schedule(caller, replay, args.runs)
    result = {
        "machine": machine_summary(), "family": args.family, "parameters": params, "blocks": blocks,
        "latent": size, "steps": args.steps, "device": args.device, "dtype": args.dtype,
        "call_bare_ms": bare_ms, "call_runtime_full_ms": hooked_ms, "call_overhead_pct": 100 * (hooked_ms / bare_ms - 1),
        "uniform_fraction": uniform_fraction, "uniform_flops_speedup": 1 / uniform_fraction,
        "uniform_wall_speedup": full_s / uniform_s,
        "learned_fraction": learned_fraction, "learned_flops_speedup": 1 / learned_fraction,
        "learned_wall_speedup": full_s / learned_s, "decision_ms": decision_ms,
        "decision_share_pct": 100 * decision_ms / bare_ms,
    }
    print(f"{args.family}: {params / 1e6:.0f}M parameters, {blocks} blocks, latent {size}, {args.steps} steps, "
          f"{args.device} {args.dtype}; {result['machine']}")
    print("| measurement | value |")
    print("|---|---|")
    print(f"| transformer call, bare / runtime always FULL, ms | {bare_ms:.1f} / {hooked_ms:.1f} |")
    print(f"| runtime overhead per call | {result['call_overhead_pct']:+.1f}% |")
    print(f"| {args.fraction:.0%} schedule: FLOPs / wall-clock speedup | {result['uniform_flops_speedup']:.2f}x / "
          f"{result['uniform_wall_speedup']:.2f}x ({result['uniform_wall_speedup'] / result['uniform_flops_speedup']:.2f}) |")
    print(f"| learned policy's schedule at {args.budget:g}: FLOPs / wall-clock speedup | "
          f"{result['learned_flops_speedup']:.2f}x / {result['learned_wall_speedup']:.2f}x "
          f"({result['learned_wall_speedup'] / result['learned_flops_speedup']:.2f}) |")
    print(f"| policy decision, ms / share of one call | {decision_ms:.2f} / {result['decision_share_pct']:.3f}% |")
    if args.json:
        from cachepilot.io import atomic_write_text  # only when asked to write

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
