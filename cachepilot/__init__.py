"""cachepilot: learned cache policies for diffusion transformers, shipped as diffusers plugins.

The public entry points are re-exported here lazily (the core package never imports the folders above it
at import time):

    from cachepilot import apply_cache, remove_cache, load_policy, cache_summary
"""

__version__ = "0.1.0"
__all__ = ["apply_cache", "remove_cache", "load_policy", "cache_summary", "reset_cache"]


def __getattr__(name):
    if name in __all__:
        from cachepilot.infer import plugin

        return getattr(plugin, name)
    raise AttributeError(f"module 'cachepilot' has no attribute {name!r}")
