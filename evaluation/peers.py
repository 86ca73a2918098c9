"""Other projects' caches as peer methods (diffusers' own; cache-dit's DBCache when installed), run by the
same evaluation code as ours.

Compute is measured, not assumed: a forward hook on a submodule of every block counts the blocks that
really ran (a cache that skips a block never calls its submodules), and the transformer's calls are timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

from cachepilot.models.adapters import adapter_for, num_blocks
from cachepilot.policies.dbcache import default_front_blocks

from .harness import PairResult, generate_batch, score


@dataclass(frozen=True)
class Peer:
    name: str
    knob: str
    default: float
    sweep: tuple[float, ...]
    config: Callable[[float, int, dict | None, int], object]  # (knob, steps, calibration, blocks) -> cache config
    library: str = "diffusers"
    calibration: str | None = None  # the section of the model's calibration it is configured from

    def enable(self, pipe, value: float, steps: int, calibration: dict | None) -> None:
        config = self.config(value, steps, calibration, num_blocks(pipe.transformer))
        if self.library == "cache-dit":
            _cache_dit().enable_cache(_cache_dit_adapter(pipe), cache_config=config)
        else:
            pipe.transformer.enable_cache(config)

    def disable(self, pipe) -> None:
        if self.library == "cache-dit":
            _cache_dit().disable_cache(pipe)
        else:
            pipe.transformer.disable_cache()


def _magcache(value, steps, calibration, blocks):
    if calibration is None:
        raise ValueError("diffusers-magcache needs the model's calibration (MagCache ratios)")
    # diffusers keeps one ratio array for every cache context; give it the cond branch's
    return MagCacheConfig(threshold=value, num_inference_steps=steps, mag_ratios=calibration["magcache"]["mag_ratios"]["cond"])


def _fbcache(value, steps, calibration, blocks):
    return FirstBlockCacheConfig(threshold=value)


def _taylorseer(value, steps, calibration, blocks):
    return TaylorSeerCacheConfig(cache_interval=int(value), use_lite_mode=True, taylor_factors_dtype=torch.float32)


def _cache_dit():
    try:  # an optional extra, imported only when a cache-dit peer runs (its import also takes ~6 s)
        import cache_dit
    except ImportError:
        raise PeerUnavailable("the cache-dit peer needs the optional extra: pip install 'cachepilot[peers]' "
                              "(or pip install cache-dit)") from None
    return cache_dit


def _cache_dit_adapter(pipe):
    """cache-dit's block adapter for a Wan-style transformer (its own Wan adapter, minus the pipeline-class check)."""
    cache_dit = _cache_dit()
    transformer = pipe.transformer
    adapter = adapter_for(transformer)
    if adapter.family != "wan":
        raise PeerUnavailable(f"the cache-dit peer is wired for Wan-style transformers here, not {adapter.family}")
    return cache_dit.BlockAdapter(pipe=pipe, transformer=transformer, blocks=getattr(transformer, adapter.block_lists[0]),
                                  forward_pattern=cache_dit.ForwardPattern.Pattern_2, has_separate_cfg=True)


def _dbcache(value, steps, calibration, blocks):
    # the same Fn / Bn as our dbcache baseline (cache-dit's F8B0, Fn capped at half the blocks)
    return _cache_dit().DBCacheConfig(Fn_compute_blocks=default_front_blocks(blocks), Bn_compute_blocks=0,
                                      residual_diff_threshold=value, max_warmup_steps=8, num_inference_steps=steps)


class PeerUnavailable(RuntimeError):
    pass


PEERS: dict[str, Peer] = {p.name: p for p in [
    Peer("diffusers-fbcache", "threshold", 0.05, (0.03, 0.05, 0.1, 0.2), _fbcache),
    Peer("diffusers-magcache", "threshold", 0.06, (0.06, 0.12, 0.24), _magcache, calibration="magcache"),
    Peer("diffusers-taylorseer", "cache_interval", 5, (2, 3, 4, 5), _taylorseer),
    Peer("cache-dit-dbcache", "threshold", 0.08, (0.04, 0.08, 0.12, 0.2), _dbcache, library="cache-dit"),
]}


def available_peers() -> list[str]:
    """Peers whose library is importable here (cache-dit is an optional extra)."""
    try:
        has_cache_dit = _cache_dit() is not None
    except PeerUnavailable:
        has_cache_dit = False
    return [name for name, p in PEERS.items() if p.library != "cache-dit" or has_cache_dit]


def generate_with_peer(pipe, peer: Peer, value: float, prompts, seeds, steps: int, guidance: float,
                       calibration: dict | None = None):
    """One batched generation under a peer cache: (frames, per-sample computed fraction, transformer wall time).
    The fraction is the batch's (a peer's decisions are not reported per sample)."""
    transformer = pipe.transformer
    blocks = adapter_for(transformer).blocks(transformer)
    counts = {"blocks": 0, "calls": 0, "wall": 0.0, "start": 0.0}

    def ran(*_):
        counts["blocks"] += 1

    def before(*_):
        counts["calls"] += 1
        counts["start"] = time.perf_counter()

    def after(*_):
        counts["wall"] += time.perf_counter() - counts["start"]

    handles = [next(b.children()).register_forward_hook(ran) for b in blocks]
    handles += [transformer.register_forward_pre_hook(before), transformer.register_forward_hook(after)]
    peer.enable(pipe, value, steps, calibration)
    try:
        frames = generate_batch(pipe, prompts, seeds, steps, guidance)
    finally:
        peer.disable(pipe)
        for h in handles:
            h.remove()
    fraction = counts["blocks"] / (counts["calls"] * len(blocks))
    return frames, [fraction] * len(prompts), counts["wall"]


def run_peer(pipe, peer: Peer, value: float, prompts, seeds, reference, steps: int, guidance: float,
             calibration: dict | None = None) -> tuple[list[PairResult], float]:
    frames, fractions, wall = generate_with_peer(pipe, peer, value, prompts, seeds, steps, guidance, calibration)
    return score(frames, reference, prompts, seeds, fractions, peer.name, value), wall
