"""What the runtime keeps between steps, per CFG branch and sample, for each forecast order: measured on toy-wan,
and what the same count of residual-sized tensors costs Wan2.1 1.3B at 81 x 480 x 832 (on paper).

The runtime keeps, per branch and sample, the block-stack residual (and each BLOCK_k tail) once per forecast order
plus one, the cond branch its latest output, the uncond branch the CFG difference (again once per order plus
one), and a few small per-call quantities. TaylorSeer's official code keeps order + 1 factors of each block's
self-attention, cross-attention and FFN outputs instead.

    python benchmarks/forecast_memory.py
"""

from __future__ import annotations

import torch

from cachepilot import apply_cache, cache_summary, remove_cache
from cachepilot.models.registry import load_pipeline
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.provenance import machine_summary
from cachepilot.runtime import FULL, STEP, Action

PROMPT = "a red circle moving left quickly on a gradient background"
# Wan2.1 1.3B at 81 frames x 480 x 832: the VAE compresses time by 4 and space by 8, the patch is (1, 2, 2)
WAN_TOKENS = ((81 - 1) // 4 + 1) * (480 // 8 // 2) * (832 // 8 // 2)  # 21 x 30 x 52 = 32,760
WAN_DIM, WAN_BLOCKS, BF16 = 1536, 30, 2
MIB = 2**20


def kept(pipe, order: int, block_ks: tuple[int, ...]) -> dict[str, int]:
    reuses = [STEP.forecasting(order), *(Action.block(k).forecasting(order) for k in block_ks)]
    apply_cache(pipe, FixedSchedule([FULL] * (order + 1) + reuses))
    try:
        pipe(PROMPT, num_inference_steps=order + 1 + len(reuses), generator=torch.Generator().manual_seed(0),
             output_type="latent")
        return cache_summary(pipe).kept_bytes
    finally:
        remove_cache(pipe)


def main() -> None:
    pipe = load_pipeline("toy-wan")
    pipe.set_progress_bar_config(disable=True)
    config = pipe.transformer.config
    tokens = 8 * (16 // 2) * (16 // 2)  # 3 x 8 x 16 x 16 videos, patch (1, 2, 2)
    residual = tokens * config.num_attention_heads * config.attention_head_dim * 4  # float32
    wan_residual = WAN_TOKENS * WAN_DIM * BF16
    print(f"toy-wan: one residual is {residual / 2**10:.0f} KiB (float32); Wan2.1 1.3B at 81x480x832: "
          f"{WAN_TOKENS:,} tokens x {WAN_DIM} = {wan_residual / MIB:.0f} MiB in bf16; {machine_summary()}")
    print("| forecast order | reuses | toy-wan cond KiB | toy-wan uncond KiB | residual-sized tensors kept | "
          "Wan2.1 1.3B MiB per sample (both branches) |")
    print("|---|---|---|---|---|---|")
    for block_ks in ((), (2, 4)):
        for order in (0, 1, 2):
            sizes = kept(pipe, order, block_ks)
            count = sum(sizes.values()) / residual
            reuses = "STEP" + "".join(f", BLOCK_{k}" for k in block_ks)
            print(f"| {order} | {reuses} | {sizes['cond'] / 2**10:.0f} | {sizes['uncond'] / 2**10:.0f} | {count:.1f} | "
                  f"{count * wan_residual / MIB:,.0f} |")
    for order in (1, 2):
        official = WAN_BLOCKS * 3 * (order + 1) * 2 * wan_residual  # 30 blocks x 3 parts x factors x 2 branches
        print(f"TaylorSeer's official per-part factors at order {order}, Wan2.1 1.3B: {official / 2**30:.1f} GiB per sample")


if __name__ == "__main__":
    main()
