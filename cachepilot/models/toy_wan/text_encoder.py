"""A tiny prompt encoder for toy-wan: word tokens -> learned embeddings -> one transformer layer.

It plays the role UMT5 plays for Wan: it turns a prompt into `encoder_hidden_states`, padded to a fixed
length with zeros (as WanPipeline pads T5 outputs), and the empty prompt into all zeros (the
unconditional branch of classifier-free guidance).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cachepilot.errors import CachepilotError


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

    @register_to_config
    def __init__(self, vocabulary: list[str], max_length: int = 24, dim: int = 64, num_heads: int = 4):
        super().__init__()
        self.token_embedding = nn.Embedding(len(vocabulary) + 1, dim, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_length, dim))
        self.layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self._ids = {w: i + 1 for i, w in enumerate(vocabulary)}

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Word ids (batch, max_length), right-padded with 0; raises UnknownWordsError naming bad words."""
        rows = []
        for prompt in prompts:
            words = prompt.lower().replace(",", " ").replace(".", " ").split()
            unknown = [w for w in words if w not in self._ids]
            if unknown:
                raise UnknownWordsError(unknown, list(self.config.vocabulary))
            if len(words) > self.config.max_length:
                raise ValueError(f"prompt has {len(words)} words; toy-wan takes at most {self.config.max_length}")
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
        x = self.norm(self.layer(x, src_key_padding_mask=key_padding))
        return x * mask.unsqueeze(-1).to(x.dtype)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.tokenize(prompts))
