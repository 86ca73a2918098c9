"""A tiny prompt encoder for toy-wan: word tokens -> learned embeddings -> one transformer layer.

It plays the role UMT5 plays for Wan: it turns a prompt into `encoder_hidden_states`, padded to a fixed
length with zeros (as WanPipeline pads T5 outputs), and the empty prompt into all zeros (the
unconditional branch of classifier-free guidance).

Like T5, its attention adds a learned bias per head and word distance (`max_relative_distance`). Wan's
cross-attention sees the text as an unordered set, so "a red circle moving left and a blue square moving
up" can only tell the DiT which shape moves which way if the encoder has bound each direction word to its
own object's words; word order is what says which, and a bias by distance makes it easy to read.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cachepilot.errors import CachepilotError, InvalidInputError


class UnknownWordsError(CachepilotError, ValueError):
    """A prompt used words the encoder has no embedding for."""

    def __init__(self, words: list[str], vocabulary: list[str]):
        self.words = words
        super().__init__(
            f"unknown word(s) in prompt: {', '.join(repr(w) for w in words)}; "
            f"toy-wan knows: {' '.join(vocabulary)}"
        )


class ToyPromptEncoder(ModelMixin, ConfigMixin):
    """Maps prompts to (batch, max_length, dim) embeddings; id 0 is padding."""

    # Options at these values compute what encoders saved before the option did: fingerprints leave them out,
    # so weights saved without the option keep their model hash (and the references, profiles tied to it).
    hash_neutral_config = {"max_relative_distance": 0}

    @register_to_config
    def __init__(self, vocabulary: list[str], max_length: int = 24, dim: int = 64, num_heads: int = 4,
                 max_relative_distance: int = 0):
        super().__init__()
        self.token_embedding = nn.Embedding(len(vocabulary) + 1, dim, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_length, dim))
        self.layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self._ids = {w: i + 1 for i, w in enumerate(vocabulary)}
        # 0 keeps the encoder of the first toy-wan weights (no bias), so they load unchanged.
        if max_relative_distance:
            self.relative_bias = nn.Parameter(locality_prior(num_heads, max_relative_distance))

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Word ids (batch, max_length), right-padded with 0; raises UnknownWordsError naming bad words."""
        rows = []
        for prompt in prompts:
            words = prompt.lower().replace(",", " ").replace(".", " ").split()
            unknown = [w for w in words if w not in self._ids]
            if unknown:
                raise UnknownWordsError(unknown, list(self.config.vocabulary))
            if len(words) > self.config.max_length:
                raise InvalidInputError(f"the prompt has {len(words)} words; toy-wan reads at most "
                                        f"{self.config.max_length}")
            ids = [self._ids[w] for w in words]
            rows.append(ids + [0] * (self.config.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != 0
        x = self.token_embedding(input_ids) + self.position_embedding[:, : input_ids.shape[1]]
        # An all-padding row (empty prompt) would make attention NaN: let it attend to itself, then zero it.
        empty = ~mask.any(dim=1)
        key_padding = ~mask
        key_padding[empty] = False
        if hasattr(self, "relative_bias"):
            # The layer's own steps (post-norm): its fused inference path misreads a per-head mask.
            layer = self.layer
            x = layer.norm1(x + layer._sa_block(x, self._attention_bias(key_padding).to(x.dtype), None))
            x = layer.norm2(x + layer._ff_block(x))
        else:
            x = self.layer(x, src_key_padding_mask=key_padding)
        x = self.norm(x)
        return x * mask.unsqueeze(-1).to(x.dtype)

    def _attention_bias(self, key_padding: torch.Tensor) -> torch.Tensor:
        """(batch * heads, length, length) additive attention mask: the distance bias, -inf on padding keys."""
        length = key_padding.shape[1]
        reach = self.config.max_relative_distance
        positions = torch.arange(length, device=key_padding.device)
        distance = (positions[None, :] - positions[:, None]).clamp(-reach, reach) + reach  # key minus query
        bias = self.relative_bias[:, distance]  # (heads, length, length)
        padding = torch.zeros(key_padding.shape, dtype=bias.dtype, device=bias.device).masked_fill(key_padding, float("-inf"))
        return (bias[None] + padding[:, None, None, :]).flatten(0, 1)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.tokenize(prompts))


def locality_prior(num_heads: int, reach: int) -> torch.Tensor:
    """(heads, 2 * reach + 1) starting bias: head h favours nearby words with slope 2**-h per word (as ALiBi),
    so the encoder can bind words to their neighbours from the first step; the last head starts flat."""
    distance = torch.arange(-reach, reach + 1).abs().float()
    slopes = [0.0 if h == num_heads - 1 else 2.0 ** -h for h in range(num_heads)]
    return torch.stack([-slope * distance for slope in slopes])
