"""Gymnasium environments around denoising: single and batched episodes, observations, rewards, references."""

from .batched import BatchedCacheEnv
from .cache_env import CacheEnv
from .episodes import CacheEpisodes, Episode, EpisodeConfig
from .references import Reference, ReferenceStore
from .reward import RewardConfig
from .sharded import ShardedCacheEnv
from .spec import RunSpec, Setting, setting_cross

__all__ = ["CacheEnv", "BatchedCacheEnv", "ShardedCacheEnv", "CacheEpisodes", "Episode", "EpisodeConfig", "RunSpec", "Setting", "setting_cross", "Reference",
           "ReferenceStore", "RewardConfig"]
