"""cachepilot: learned cache policies for diffusion transformers, shipped as diffusers plugins.

    from cachepilot import apply_cache, remove_cache, cache_summary, load_policy

    apply_cache(pipe, load_policy("path/to/policy"), budget=0.35)   # or "teacache", TeaCacheConfig(...), any Policy
    ...generate with the pipeline as usual...
    print(cache_summary(pipe))
    remove_cache(pipe)
"""

import importlib

__version__ = "0.1.0"
_API = {  # name -> the module that defines it
    "apply_cache": "cachepilot.infer.plugin",
    "remove_cache": "cachepilot.runtime",
    "reset_cache": "cachepilot.runtime",
    "cache_summary": "cachepilot.runtime",
    "cached": "cachepilot.runtime",
    "load_policy": "cachepilot.policies.policy_file",
    "published_calibration": "cachepilot.policies.calibration",
}
__all__ = list(_API)


def __getattr__(name):
    # Resolved on first use: every `import cachepilot.<module>` runs this file first, so importing the layers
    # above the core here would run them for each core import and make the core depend on them.
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cachepilot' has no attribute {name!r}")
