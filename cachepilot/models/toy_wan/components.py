"""toy-wan's architecture: the configs of its three components and a builder for fresh ones.

Why this size: 3 x 8 x 16 x 16 videos with Wan's (1, 2, 2) patching give 512 tokens, enough for
motion to live in the temporal attention; 6 blocks of width 128 keep a 50-step CFG generation at a
few seconds on 2 CPU cores while leaving room for block-level caching (BLOCK_k with k in 1..5).

Why position channels: Wan's RoPE tells a token only where it is relative to others. At high noise the
only way to use "moving right" is to put the colour on the left in frame 0 and on the right in frame 7,
which needs the absolute frame and column; averaged over directions the videos look the same in every
frame, so nothing teaches absolute time on its own and the direction words were ignored (motion stayed
at chance over 5,200 steps). The transformer therefore also reads three fixed channels (frame, row,
column in [-1, 1]) concatenated to the latent, the way Wan's image-to-video transformer reads its
condition channels beside the noisy latent (in_channels 36 = 16 latent + 20 condition).
"""

from __future__ import annotations

import torch
from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

from .scenes import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SPEEDS
from .text_encoder import ToyPromptEncoder

VOCABULARY = sorted(
    {"a", "and", "on", "background", "moving", "standing", *COLOURS, *SHAPES, *DIRECTIONS, *SPEEDS, *BACKGROUNDS}
)
TEXT_DIM = 64
TEXT_RELATIVE_DISTANCE = 12  # word distances the encoder's attention bias tells apart (see text_encoder)
POSITION_CHANNELS = 3  # frame, row, column (see `with_position`)
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=3 + POSITION_CHANNELS,  # the video, then the position channels
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


def position_channels(frames: int, height: int, width: int) -> torch.Tensor:
    """(3, frames, height, width): each pixel's frame, row and column index scaled to [-1, 1]."""
    axes = [torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1) for n in (frames, height, width)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def with_position(latents: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The transformer's input for `latents` (B, C, F, H, W): the position channels appended when the
    transformer takes them (in_channels > C); unchanged for a transformer without them."""
    extra = in_channels - latents.shape[1]
    if extra == 0:
        return latents
    if extra != POSITION_CHANNELS:
        raise ValueError(f"transformer takes {in_channels} channels; latents have {latents.shape[1]} "
                         f"(expected +0 or +{POSITION_CHANNELS})")
    grid = position_channels(*latents.shape[2:]).to(latents)
    return torch.cat([latents, grid.expand(latents.shape[0], -1, -1, -1, -1)], dim=1)


def build_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(**TRANSFORMER_CONFIG)


def build_text_encoder() -> ToyPromptEncoder:
    return ToyPromptEncoder(vocabulary=VOCABULARY, max_length=24, dim=TEXT_DIM, max_relative_distance=TEXT_RELATIVE_DISTANCE)


def build_scheduler() -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(**SCHEDULER_CONFIG)
