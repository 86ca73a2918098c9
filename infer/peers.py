"""diffusers' own caches as peer methods, run by the same evaluation code as ours.

Compute is measured, not assumed: a forward hook on a submodule of every block counts the blocks that
really ran (a cache that skips a block never calls its submodules), and the transformer's calls are timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from cachepilot.models.adapters import adapter_for

from .evaluate import PairResult, generate_batch, score


@dataclass(frozen=True)
class Peer:
    name: str
    knob: str
    default: float
    sweep: tuple[float, ...]
    config: Callable[[float, int, dict | None], object]  # (knob, steps, calibration) -> diffusers cache config


def _magcache(value, steps, calibration):
    from diffusers import MagCacheConfig

    if calibration is None:
        raise ValueError("diffusers-magcache needs the model's calibration (MagCache ratios)")
    # diffusers keeps one ratio array for every cache context; give it the cond branch's
    return MagCacheConfig(threshold=value, num_inference_steps=steps, mag_ratios=calibration["magcache"]["mag_ratios"]["cond"])


def _fbcache(value, steps, calibration):
    from diffusers import FirstBlockCacheConfig

    return FirstBlockCacheConfig(threshold=value)


def _taylorseer(value, steps, calibration):
    from diffusers import TaylorSeerCacheConfig

    return TaylorSeerCacheConfig(cache_interval=int(value), use_lite_mode=True, taylor_factors_dtype=torch.float32)


PEERS: dict[str, Peer] = {p.name: p for p in [
    Peer("diffusers-fbcache", "threshold", 0.05, (0.03, 0.05, 0.1, 0.2), _fbcache),
    Peer("diffusers-magcache", "threshold", 0.06, (0.06, 0.12, 0.24), _magcache),
    Peer("diffusers-taylorseer", "cache_interval", 5, (2, 3, 5), _taylorseer),
]}


def run_peer(pipe, peer: Peer, value: float, prompts, seeds, reference, steps: int, guidance: float,
             calibration: dict | None = None) -> tuple[list[PairResult], float]:
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
    transformer.enable_cache(peer.config(value, steps, calibration))
    try:
        frames = generate_batch(pipe, prompts, seeds, steps, guidance)
    finally:
        transformer.disable_cache()
        for h in handles:
            h.remove()
    fraction = counts["blocks"] / (counts["calls"] * len(blocks))
    return score(frames, reference, prompts, seeds, [fraction] * len(prompts), peer.name, value), counts["wall"]
