"""Gymnasium environments around denoising: single and batched episodes, observations, rewards, references."""

from .batched import BatchedCacheEnv
from .cache_env import CacheEnv
from .episodes import CacheEpisodes, Episode
from .references import Reference, ReferenceStore
from .reward import RewardConfig

__all__ = ["CacheEnv", "BatchedCacheEnv", "CacheEpisodes", "Episode", "Reference", "ReferenceStore", "RewardConfig"]
