"""Gymnasium environments around denoising: single and batched episodes, observations, rewards, references."""

from .batched import BatchedCacheEnv
from .cache_env import CacheEnv
from .episodes import CacheEpisodes, Episode, EpisodeConfig
from .references import Reference, ReferenceStore
from .reward import RewardConfig
from .spec import RunSpec, Setting, setting_cross

__all__ = ["CacheEnv", "BatchedCacheEnv", "CacheEpisodes", "Episode", "EpisodeConfig", "RunSpec", "Setting", "setting_cross", "Reference",
           "ReferenceStore", "RewardConfig"]
