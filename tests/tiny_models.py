"""Tiny random transformers of each supported family, built from code (no weights), and a way to call
each one the way its diffusers pipeline does (two calls in cond/uncond contexts, or one batched call)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import (CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel, LTXVideoTransformer3DModel,
                       WanTransformer3DModel)


@dataclass
class Tiny:
    family: str
    model: torch.nn.Module
    make_inputs: Callable[[int, int], dict]  # (batch, seed) -> kwargs of one call
    batched_cfg: bool


def _g(seed):
    return torch.Generator().manual_seed(seed)


def tiny_wan() -> Tiny:
    torch.manual_seed(0)
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                              out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=4, rope_max_seq_len=32).eval()

    def inputs(batch, seed):
        g = _g(seed)
        return dict(hidden_states=torch.randn(batch, 4, 3, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g))
    return Tiny("wan", m, inputs, batched_cfg=False)


def tiny_hunyuan() -> Tiny:
    torch.manual_seed(0)
    m = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                       num_layers=2, num_single_layers=2, num_refiner_layers=1, mlp_ratio=2.0,
                                       patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=False,
                                       text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4)).eval()

    def inputs(batch, seed):
        g = _g(seed)
        return dict(hidden_states=torch.randn(batch, 4, 3, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    encoder_attention_mask=torch.ones(batch, 6, dtype=torch.bool),
                    pooled_projections=torch.randn(batch, 8, generator=g))
    return Tiny("hunyuanvideo", m, inputs, batched_cfg=False)


def tiny_cogvideox() -> Tiny:
    torch.manual_seed(0)
    m = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                    time_embed_dim=8, text_embed_dim=16, num_layers=3, sample_width=8, sample_height=8,
                                    sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                                    max_text_seq_length=6).eval()

    def inputs(batch, seed):
        g = _g(seed)
        return dict(hidden_states=torch.randn(batch, 3, 4, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g))
    return Tiny("cogvideox", m, inputs, batched_cfg=True)


def tiny_ltx() -> Tiny:
    torch.manual_seed(0)
    m = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
                                   attention_head_dim=8, cross_attention_dim=16, num_layers=3, caption_channels=16).eval()

    def inputs(batch, seed):
        g = _g(seed)
        return dict(hidden_states=torch.randn(batch, 3 * 4 * 4, 4, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    encoder_attention_mask=torch.ones(batch, 6), num_frames=3, height=4, width=4)
    return Tiny("ltx-video", m, inputs, batched_cfg=True)


TINY = {"wan": tiny_wan, "hunyuanvideo": tiny_hunyuan, "cogvideox": tiny_cogvideox, "ltx-video": tiny_ltx}
