"""The registry's real models as published, without their weights: each transformer's config, its video size, and
what one transformer call costs at a given video size.

The configs are the fields of the diffusers model repositories' `transformer/config.json` that shape the model;
a transformer built from one has the published architecture (with random weights), so cost can be measured or
counted where the weights are not on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cachepilot.errors import InvalidInputError

from .adapters import ADAPTERS


@dataclass(frozen=True)
class Published:
    transformer_class: str
    config: dict
    video: tuple[int, int, int]  # (frames, height, width) in pixels, as the model card generates
    text_tokens: int  # the text encoder's sequence length as the pipeline pads it


_WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                 text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)

PUBLISHED: dict[str, Published] = {
    "wan2.1-t2v-1.3b": Published("WanTransformer3DModel", _WAN_1_3B, (81, 480, 832), 512),
    "wan2.1-t2v-14b": Published("WanTransformer3DModel", _WAN_1_3B | dict(num_attention_heads=40, ffn_dim=13824,
                                                                           num_layers=40), (81, 720, 1280), 512),
    "wan2.2-t2v-a14b": Published("WanTransformer3DModel", _WAN_1_3B | dict(num_attention_heads=40, ffn_dim=13824,
                                                                            num_layers=40), (81, 720, 1280), 512),
    "hunyuanvideo": Published("HunyuanVideoTransformer3DModel", dict(
        in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
        num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_axes_dim=(16, 56, 56)),
        (129, 720, 1280), 256),
    "cogvideox-5b": Published("CogVideoXTransformer3DModel", dict(
        num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
        text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=226, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False), (49, 480, 720), 226),
    "ltx-video": Published("LTXVideoTransformer3DModel", dict(
        in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
        attention_head_dim=64, cross_attention_dim=2048, num_layers=28, caption_channels=4096),
        (161, 512, 704), 128),
}

# per transformer class: the VAE's compression (time, space), the patch (time, space), the config keys of the block
# lists, and the FFN width as a function of the config
_VAE = {"WanTransformer3DModel": (4, 8), "HunyuanVideoTransformer3DModel": (4, 8),
        "CogVideoXTransformer3DModel": (4, 8), "LTXVideoTransformer3DModel": (8, 32)}
_BLOCK_KEYS = {"HunyuanVideoTransformer3DModel": ("num_layers", "num_single_layers")}


def _patch(cls: str, config: dict) -> tuple[int, int]:
    if cls == "WanTransformer3DModel":
        t, h, _ = config["patch_size"]
        return t, h
    return config.get("patch_size_t") or 1, config["patch_size"]


def _ffn(cls: str, config: dict, dim: int) -> int:
    if cls == "WanTransformer3DModel":
        return config["ffn_dim"]
    return int(config.get("mlp_ratio", 4.0) * dim)


@dataclass(frozen=True)
class CallCost:
    """One transformer call (one sample, one CFG branch) at a video size: its tokens and the FLOPs of its blocks
    (analytic, `ModelAdapter.block_flops`; the embeddings and the output projection are left out, a few percent at
    most at real size)."""

    transformer_class: str
    blocks: int
    tokens: int
    text_tokens: int
    flops: float

    @classmethod
    def of(cls, transformer_class: str, config: dict, latent: tuple[int, int, int], text_tokens: int) -> "CallCost":
        """At a latent video size (frames, height, width) in latent units."""
        adapter = ADAPTERS.get(transformer_class)
        if adapter is None:
            raise InvalidInputError(f"no cost model for {transformer_class}; known: {', '.join(sorted(ADAPTERS))}")
        dim = config["num_attention_heads"] * config["attention_head_dim"]
        patch_t, patch_s = _patch(transformer_class, config)
        frames, height, width = latent
        tokens = -(-frames // patch_t) * (height // patch_s) * (width // patch_s)
        blocks = sum(int(config[k]) for k in _BLOCK_KEYS.get(transformer_class, ("num_layers",)))
        per_block = adapter.block_flops(tokens, text_tokens, dim, _ffn(transformer_class, config, dim))
        return cls(transformer_class, blocks, tokens, text_tokens, blocks * per_block)

    @classmethod
    def at_video(cls, transformer_class: str, config: dict, video: tuple[int, int, int], text_tokens: int) -> "CallCost":
        """At a video size (frames, height, width) in pixels."""
        return cls.of(transformer_class, config, latent_size(transformer_class, video), text_tokens)


def latent_size(transformer_class: str, video: tuple[int, int, int]) -> tuple[int, int, int]:
    """The latent (frames, height, width) of a video (frames, height, width) in pixels, through the family's VAE."""
    if transformer_class not in _VAE:
        raise InvalidInputError(f"no VAE compression known for {transformer_class}")
    time, space = _VAE[transformer_class]
    frames, height, width = video
    return (frames - 1) // time + 1, height // space, width // space


def folder_config(folder: Path) -> tuple[str, dict]:
    """A local diffusers folder's transformer class and config."""
    path = Path(folder) / "transformer" / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the transformer config {path}: {exc}") from None
    return config.get("_class_name", ""), config
