"""Other projects' caches as peer methods (diffusers' own; cache-dit's DBCache when installed), run by the same
evaluation code as ours, each over its own knobs.

Compute is measured, not assumed: each part of each block (self-attention, cross-attention, FFN; the adapter
says where each starts) counts its analytic FLOPs when its first Linear really runs (a cache that skips or
forecasts a part never calls it), over what every part of every block of every call would cost; the
transformer's calls are timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

from cachepilot.models.adapters import adapter_for, num_blocks
from cachepilot.models.stepping import generation_options
from cachepilot.runtime import experts_of
from cachepilot.policies.dbcache import default_front_blocks
from cachepilot.policies.registry import Method

from .harness import PairResult, ScoredPairs, score


class PeerUnavailable(RuntimeError):
    pass


class Diffusers:
    """diffusers' own caches: `transformer.enable_cache(config)`."""

    name = "diffusers"

    @staticmethod
    def available() -> bool:
        return True

    @staticmethod
    def enable(pipe, config) -> None:
        pipe.transformer.enable_cache(config)

    @staticmethod
    def disable(pipe) -> None:
        pipe.transformer.disable_cache()


class CacheDit:
    """cache-dit (an optional extra): `cache_dit.enable_cache(adapter, **kwargs)` on the pipeline."""

    name = "cache-dit"

    @staticmethod
    def available() -> bool:
        try:
            return _cache_dit() is not None
        except PeerUnavailable:
            return False

    @staticmethod
    def enable(pipe, config) -> None:
        _cache_dit().enable_cache(_cache_dit_adapter(pipe), **config)
        _own_process_only(True)

    @staticmethod
    def disable(pipe) -> None:
        _own_process_only(False)
        _cache_dit().disable_cache(pipe)


_CACHE_DIT_PARALLEL: dict = {}  # cache-dit's own test of parallelism, while ours replaces it


def _own_process_only(on: bool) -> None:
    """cache-dit reads any process group of more than one process as context parallelism, and averages its block
    difference over the processes (a collective every step). cachepilot's processes each generate pairs of their
    own, so while a cache-dit peer runs its blocks count only the transformer's own parallelism."""
    from cache_dit.caching.cache_blocks.pattern_base import CachedBlocks_Pattern_Base as blocks  # an optional extra

    if on and not _CACHE_DIT_PARALLEL:
        _CACHE_DIT_PARALLEL["test"] = blocks._is_parallelized
        blocks._is_parallelized = lambda self: bool(getattr(self.transformer, "_is_parallelized", False))
    elif not on and _CACHE_DIT_PARALLEL:
        blocks._is_parallelized = _CACHE_DIT_PARALLEL.pop("test")


@dataclass(frozen=True)
class Peer(Method):
    # (settings, steps, calibration, num_blocks) -> the library's cache config (diffusers) or enable_cache kwargs
    config: Callable[[dict, int, dict | None, int], object] = field(default=None, compare=False)
    library: type = Diffusers

    def enable(self, pipe, settings: dict, steps: int, calibration: dict | None) -> None:
        self.library.enable(pipe, self.config(settings, steps, calibration, num_blocks(pipe.transformer)))

    def disable(self, pipe) -> None:
        self.library.disable(pipe)


def _magcache(s, steps, calibration, blocks):
    if calibration is None:
        raise ValueError("diffusers-magcache needs the model's calibration (MagCache ratios)")
    # diffusers keeps one ratio array for every cache context; give it the cond branch's
    return MagCacheConfig(threshold=s["threshold"], max_skip_steps=int(s["max_skip_steps"]), num_inference_steps=steps,
                          mag_ratios=calibration["magcache"]["mag_ratios"]["cond"])


def _fbcache(s, steps, calibration, blocks):
    return FirstBlockCacheConfig(threshold=s["threshold"])


def _taylorseer(s, steps, calibration, blocks):
    """Lite mode: the blocks are skipped and `proj_out`'s output is forecast (its default identifiers hook nothing
    on Wan)."""
    return TaylorSeerCacheConfig(cache_interval=int(s["cache_interval"]), max_order=int(s["max_order"]),
                                 use_lite_mode=True, taylor_factors_dtype=torch.float32)


WAN_PARTS = r"blocks\.\d+\.(attn1|attn2|ffn)"  # what the official TaylorSeer forecasts on Wan: each block's parts


def _taylorseer_parts(s, steps, calibration, blocks):
    """Custom identifiers: each block's self-attention, cross-attention and FFN outputs are forecast."""
    return TaylorSeerCacheConfig(cache_interval=int(s["cache_interval"]), max_order=int(s["max_order"]),
                                 cache_identifiers=[WAN_PARTS], taylor_factors_dtype=torch.float32)


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


def _dbcache(s, steps, calibration, blocks):
    # the same Fn / Bn as our dbcache baseline (cache-dit's F8B0, Fn capped at half the blocks)
    cache_dit = _cache_dit()
    config = cache_dit.DBCacheConfig(Fn_compute_blocks=default_front_blocks(blocks), Bn_compute_blocks=0,
                                     residual_diff_threshold=s["threshold"], max_warmup_steps=8,
                                     num_inference_steps=steps)
    order = int(s.get("taylorseer_order", 0))
    calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=order) if order else None
    return {"cache_config": config, "calibrator_config": calibrator}


def _grid(intervals, orders, interval="cache_interval", order="max_order"):
    return tuple({interval: i, order: o} for o in orders for i in intervals)


PEERS: dict[str, Peer] = {p.name: p for p in [
    Peer("diffusers-fbcache", "threshold", {"threshold": 0.05}, tuple({"threshold": t} for t in (0.05, 0.03, 0.1, 0.2)),
         config=_fbcache),
    Peer("diffusers-magcache", "threshold", {"threshold": 0.06, "max_skip_steps": 3},  # diffusers' defaults
         tuple({"threshold": t} for t in (0.06, 0.12, 0.24)) + tuple(
             {"threshold": t, "max_skip_steps": k} for k in (2, 6) for t in (0.12, 0.24)), calibration="magcache",
         config=_magcache),
    Peer("diffusers-taylorseer", "cache_interval", {"cache_interval": 5, "max_order": 1},
         _grid((5, 2, 3, 4, 6, 8, 12), (1, 2)), config=_taylorseer),
    Peer("diffusers-taylorseer-parts", "cache_interval", {"cache_interval": 5, "max_order": 1},
         _grid((5, 2, 3, 4, 6, 8), (1, 2)), config=_taylorseer_parts),
    Peer("cache-dit-dbcache", "threshold", {"threshold": 0.08, "taylorseer_order": 0},
         tuple({"threshold": t} for t in (0.08, 0.04, 0.12, 0.2)), config=_dbcache, library=CacheDit),
    Peer("cache-dit-dbcache-taylorseer", "threshold", {"threshold": 0.08, "taylorseer_order": 1},
         tuple({"threshold": t} for t in (0.08, 0.12, 0.2, 0.3, 0.5)) + ({"threshold": 0.2, "taylorseer_order": 2},),
         config=_dbcache, library=CacheDit),
]}


def available_peers() -> list[str]:
    """Peers whose library is importable here (cache-dit is an optional extra)."""
    return [name for name, p in PEERS.items() if p.library.available()]


def unsupported_reason(name: str, pipe) -> str | None:
    """Why peer `name` cannot be measured on `pipe` (None: it can): its compute is measured part by part, cache-dit is
    wired for Wan's blocks here, and the peers cache `pipe.transformer` only (a second expert would run uncached)."""
    adapter = adapter_for(pipe.transformer)
    if experts_of(pipe):
        return "the peers cache one transformer; this pipeline has two experts"
    if not adapter.part_modules:
        return f"peers are measured part by part; {adapter.family} blocks have no parts described"
    if PEERS[name].library is CacheDit and adapter.family != "wan":
        return f"the cache-dit peer is wired for Wan-style transformers here, not {adapter.family}"
    return None


class ComputeMeter:
    """The FLOPs a cache really ran in a transformer's blocks, over what computing every block of every call costs,
    from the adapter's model of a block's parts (module docstring)."""

    def __init__(self, transformer):
        adapter = adapter_for(transformer)
        if not adapter.part_modules:
            raise PeerUnavailable(f"peers are measured part by part; {adapter.family} blocks have no parts described")
        self.adapter, self.blocks = adapter, adapter.blocks(transformer)
        self.ffn = adapter.ffn_dim(self.blocks[0])
        self.ran: list[tuple[str, int, int]] = []  # (part, batch, tokens) per part call
        self.calls: list[tuple[int, int]] = []  # (batch, text tokens) per transformer call
        self.dim = 0
        self.handles = [transformer.register_forward_pre_hook(self._call, with_kwargs=True)]
        for block in self.blocks:
            for part, name in adapter.part_modules:
                self.handles.append(block.get_submodule(name).register_forward_pre_hook(self._part(part)))

    def _call(self, module, args, kwargs):
        hidden, text = self.adapter.hidden(args, kwargs), self.adapter.encoder(args, kwargs)
        self.calls.append((hidden.shape[0], text.shape[1] if text is not None else 0))

    def _part(self, part: str):
        def seen(module, args):
            x = args[0]
            self.ran.append((part, x.shape[0], x.shape[1]))
            self.dim = x.shape[-1]
        return seen

    def fraction(self) -> float:
        if not self.ran:
            return 0.0
        tokens = self.ran[0][2]  # the video tokens a block sees, the same for every call of a generation
        text = self.calls[0][1]
        parts = self.adapter.parts_flops(tokens, text, self.dim, self.ffn)
        ran = sum(parts[part] * batch for part, batch, _ in self.ran)
        full = sum(batch for batch, _ in self.calls) * len(self.blocks) * sum(parts.values())
        return ran / full

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def generate_with_peer(pipe, peer: Peer, settings: dict, prompts, seeds, steps: int, guidance: float,
                       calibration: dict | None = None):
    """One batched generation under a peer cache: (frames, per-sample computed fraction, transformer wall time).
    The fraction is the batch's (a peer's decisions are not reported per sample)."""
    transformer = pipe.transformer
    meter = ComputeMeter(transformer)
    clock = {"wall": 0.0, "start": 0.0}

    def before(*_):
        clock["start"] = time.perf_counter()

    def after(*_):
        clock["wall"] += time.perf_counter() - clock["start"]

    handles = [transformer.register_forward_pre_hook(before), transformer.register_forward_hook(after)]
    peer.enable(pipe, peer.settings(**settings), steps, calibration)
    try:
        # through the pipeline's own __call__: cache-dit keeps its per-generation state by wrapping it
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        frames = np.asarray(pipe(prompt=list(prompts), num_inference_steps=steps, guidance_scale=guidance,
                                 generator=generators, output_type="np", **generation_options(pipe)).frames)
    finally:
        peer.disable(pipe)
        meter.remove()
        for h in handles:
            h.remove()
    return frames, [meter.fraction()] * len(prompts), clock["wall"]


def run_peer(pipe, peer: Peer, settings: dict, pairs: ScoredPairs,
             calibration: dict | None = None) -> tuple[list[PairResult], float]:
    frames, fractions, wall = generate_with_peer(pipe, peer, settings, pairs.prompts, pairs.seeds, pairs.steps,
                                                 pairs.guidance, calibration)
    knob = peer.settings(**settings)[peer.knob]
    return score(frames, pairs.reference, pairs.prompts, pairs.seeds, fractions, peer.name, knob), wall
