"""toy-wan's architecture: the configs of its three components and a builder for fresh ones.

Why this size: 3 x 8 x 16 x 16 videos with Wan's (1, 2, 2) patching give 512 tokens, enough for
motion to live in the temporal attention; 6 blocks of width 128 keep a 50-step CFG generation at a
few seconds on 2 CPU cores while leaving room for block-level caching (BLOCK_k with k in 1..5).
"""

from __future__ import annotations

from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

from .scenes import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SPEEDS
from .text_encoder import ToyPromptEncoder

VOCABULARY = sorted(
    {"a", "and", "on", "background", "moving", "standing", *COLOURS, *SHAPES, *DIRECTIONS, *SPEEDS, *BACKGROUNDS}
)
TEXT_DIM = 64
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=3,
    out_channels=3,
    text_dim=TEXT_DIM,
    freq_dim=64,
    ffn_dim=512,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)
# Wan2.1's sampler: UniPC on flow-matching sigmas with a timestep shift (3.0 is Wan's 480p value).
FLOW_SHIFT = 3.0
SCHEDULER_CONFIG = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT, num_train_timesteps=1000)


def build_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(**TRANSFORMER_CONFIG)


def build_text_encoder() -> ToyPromptEncoder:
    return ToyPromptEncoder(vocabulary=VOCABULARY, max_length=24, dim=TEXT_DIM)


def build_scheduler() -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(**SCHEDULER_CONFIG)
