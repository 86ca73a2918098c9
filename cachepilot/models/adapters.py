"""Model adapters: what the cache runtime needs to know about a transformer family, and nothing else.

An adapter names the block lists (in execution order), says whether blocks return `hidden` or a
`(hidden, encoder_hidden)` pair, how CFG is laid out (two calls in cache contexts "cond"/"uncond", or
one call whose batch is [uncond; cond]), where the TeaCache indicator lives, and the per-block FLOPs
model. Baselines and policies never special-case a model: they only see the runtime's signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from cachepilot.errors import CachepilotError


class UnsupportedModelError(CachepilotError):
    pass


def _arg(args: tuple, kwargs: dict, index: int, name: str):
    return kwargs[name] if name in kwargs else (args[index] if len(args) > index else None)


@dataclass(frozen=True)
class ModelAdapter:
    family: str
    transformer_class: str
    block_lists: tuple[str, ...]
    returns_encoder: bool  # blocks return (hidden_states, encoder_hidden_states)
    cfg_layout: str  # "separate": one call per branch; "batched": one call, batch = [uncond; cond]
    attention: str  # "cross": self-attn on video tokens + cross-attn to text; "joint": attention over video+text
    temb_arg: tuple[int, str]  # (position, name) of the timestep-embedding argument of a block
    time_embedder: str | None = None  # submodule whose output[0] is the TeaCache indicator (Wan: temb)
    teacache_indicator: str = "temb"  # "temb" or "modulated" (norm1(x) * (1 + scale) + shift of block 0)
    modulated_input: Callable[[torch.nn.Module, tuple, dict], torch.Tensor] | None = None
    latent_frames: Callable[[torch.nn.Module, tuple, dict], int | None] | None = None
    # where the parts of `parts_flops` start in a block (cross-attention families): a cache that skips a part never
    # calls its first Linear, so another library's cache can be measured part by part
    part_modules: tuple[tuple[str, str], ...] = ()
    # block arguments that are the same for every sample (rotary tables), as (position, name): a sub-batch keeps
    # them whole, since their leading size (the token count) may equal the batch size by chance
    shared_args: tuple[tuple[int, str], ...] = ()

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        out = []
        for name in self.block_lists:
            out.extend(getattr(transformer, name))
        return out

    def ffn_dim(self, block: torch.nn.Module) -> int:
        """Hidden width of a block's feed-forward network, read off its first large Linear."""
        dims = [m.out_features for n, m in block.named_modules() if isinstance(m, torch.nn.Linear) and ("ff" in n or "mlp" in n)]
        return max(dims) if dims else 4 * next(m.in_features for m in block.modules() if isinstance(m, torch.nn.Linear))

    def block_flops(self, tokens: int, text_tokens: int, dim: int, ffn: int) -> float:
        """Analytic FLOPs (2 per multiply-add) of one block for one sample: projections, attention, FFN."""
        s, l, d = tokens, text_tokens, dim
        if self.attention == "joint":
            n = s + l
            macs = 4 * n * d * d + 2 * n * n * d + 2 * n * d * ffn
        else:
            macs = 4 * s * d * d + 2 * s * s * d + 2 * s * d * d + 2 * l * d * d + 2 * s * l * d + 2 * s * d * ffn
        return 2.0 * macs

    def parts_flops(self, tokens: int, text_tokens: int, dim: int, ffn: int) -> dict[str, float]:
        """`block_flops` by part of a cross-attention block: self-attention, cross-attention, FFN."""
        s, l, d = tokens, text_tokens, dim
        return {"self_attention": 2.0 * (4 * s * d * d + 2 * s * s * d),
                "cross_attention": 2.0 * (2 * s * d * d + 2 * l * d * d + 2 * s * l * d), "ffn": 2.0 * (2 * s * d * ffn)}

    def hidden(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return _arg(args, kwargs, 0, "hidden_states")

    def encoder(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        return _arg(args, kwargs, 1, "encoder_hidden_states")

    def temb(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        return _arg(args, kwargs, self.temb_arg[0], self.temb_arg[1])

    def is_shared(self, position: int | None, name: str | None) -> bool:
        """Whether the block argument at `position` (positional) or `name` (keyword) is shared by all samples."""
        return any(position == p if name is None else name == n for p, n in self.shared_args)

    def with_streams(self, args: tuple, kwargs: dict, streams: tuple) -> tuple[tuple, dict]:
        """The block's arguments with hidden (and, for joint blocks, encoder) states replaced."""
        args, kwargs = list(args), dict(kwargs)
        names = ("hidden_states", "encoder_hidden_states")[: len(streams)]
        for position, (name, value) in enumerate(zip(names, streams)):
            if name in kwargs or len(args) <= position:
                kwargs[name] = value
            else:
                args[position] = value
        return tuple(args), kwargs


def _wan_modulated(block, args, kwargs) -> torch.Tensor:
    hidden, temb = _arg(args, kwargs, 0, "hidden_states"), _arg(args, kwargs, 2, "temb")
    table = block.scale_shift_table.unsqueeze(0) if temb.ndim == 4 else block.scale_shift_table
    shift, scale = (table + temb.float()).chunk(6, dim=2 if temb.ndim == 4 else 1)[:2]
    if temb.ndim == 4:
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    return block.norm1(hidden.float()) * (1 + scale) + shift


def _wan_frames(transformer, args, kwargs) -> int:
    hidden = _arg(args, kwargs, 0, "hidden_states")
    return hidden.shape[2] // transformer.config.patch_size[0]


def _hunyuan_modulated(block, args, kwargs) -> torch.Tensor:
    hidden, temb = _arg(args, kwargs, 0, "hidden_states"), _arg(args, kwargs, 2, "temb")
    return block.norm1(hidden, emb=temb)[0]


def _hunyuan_frames(transformer, args, kwargs) -> int:
    hidden = _arg(args, kwargs, 0, "hidden_states")
    return hidden.shape[2] // transformer.config.patch_size_t


def _cog_frames(transformer, args, kwargs) -> int:
    hidden = _arg(args, kwargs, 0, "hidden_states")  # (B, F, C, H, W)
    return hidden.shape[1] // (transformer.config.patch_size_t or 1)


def _ltx_modulated(block, args, kwargs) -> torch.Tensor:
    hidden, temb = _arg(args, kwargs, 0, "hidden_states"), _arg(args, kwargs, 2, "temb")
    batch = hidden.size(0)
    values = block.scale_shift_table[None, None] + temb.reshape(batch, temb.size(1), 6, -1)
    shift, scale = values[:, :, 0], values[:, :, 1]
    return block.norm1(hidden) * (1 + scale) + shift


def _ltx_frames(transformer, args, kwargs) -> int | None:
    return kwargs.get("num_frames")


ADAPTERS: dict[str, ModelAdapter] = {
    a.transformer_class: a
    for a in [
        ModelAdapter("wan", "WanTransformer3DModel", ("blocks",), returns_encoder=False, cfg_layout="separate",
                     attention="cross", temb_arg=(2, "temb"), time_embedder="condition_embedder",
                     teacache_indicator="temb", modulated_input=_wan_modulated, latent_frames=_wan_frames,
                     shared_args=((3, "rotary_emb"),),
                     part_modules=(("self_attention", "attn1.to_q"), ("cross_attention", "attn2.to_q"),
                                   ("ffn", "ffn.net.0.proj"))),
        ModelAdapter("hunyuanvideo", "HunyuanVideoTransformer3DModel", ("transformer_blocks", "single_transformer_blocks"),
                     returns_encoder=True, cfg_layout="separate", attention="joint", temb_arg=(2, "temb"),
                     teacache_indicator="modulated", modulated_input=_hunyuan_modulated, latent_frames=_hunyuan_frames,
                     shared_args=((4, "freqs_cis"), (4, "image_rotary_emb"))),
        ModelAdapter("cogvideox", "CogVideoXTransformer3DModel", ("transformer_blocks",), returns_encoder=True,
                     cfg_layout="batched", attention="joint", temb_arg=(2, "temb"), teacache_indicator="temb",
                     latent_frames=_cog_frames, shared_args=((3, "image_rotary_emb"),)),
        ModelAdapter("ltx-video", "LTXVideoTransformer3DModel", ("transformer_blocks",), returns_encoder=False,
                     cfg_layout="batched", attention="cross", temb_arg=(2, "temb"), teacache_indicator="modulated",
                     modulated_input=_ltx_modulated, latent_frames=_ltx_frames,
                     part_modules=(("self_attention", "attn1.to_q"), ("cross_attention", "attn2.to_q"),
                                   ("ffn", "ff.net.0.proj"))),
    ]
}


def adapter_for(transformer: Any) -> ModelAdapter:
    """The adapter of a transformer instance (by class name, so subclasses need their own entry)."""
    name = type(transformer).__name__
    if name not in ADAPTERS:
        raise UnsupportedModelError(
            f"no cache adapter for {name}; supported transformers: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[name]


def num_blocks(transformer: Any) -> int:
    """How many transformer blocks the runtime's block-level actions count over."""
    return len(adapter_for(transformer).blocks(transformer))
