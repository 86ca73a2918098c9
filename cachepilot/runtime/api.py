"""Attach the runtime to a diffusers transformer, take it off, read what it did.

`attach_runtime` takes a Policy object and nothing else: it is the layer under `cachepilot.apply_cache`, which
also takes policy files and baselines by name and is what users call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.hooks import HookRegistry

from cachepilot.errors import CachepilotError
from cachepilot.models.adapters import adapter_for

from .engine import CacheRuntime
from .hooks import BLOCK_HOOK, EMBEDDER_HOOK, TRANSFORMER_HOOK, BlockHook, TimeEmbedderHook, TransformerHook
from .ledger import CacheSummary
from .policy import Policy


class CacheStackingError(CachepilotError):
    pass


def _transformer(pipe_or_transformer) -> tuple[torch.nn.Module, object | None]:
    if isinstance(pipe_or_transformer, torch.nn.Module):
        return pipe_or_transformer, None
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise CachepilotError(f"{type(pipe_or_transformer).__name__} has no `transformer` to cache")
    return transformer, pipe_or_transformer


def experts_of(pipe) -> tuple[torch.nn.Module, ...]:
    """A pipeline's transformers besides `transformer` (Wan2.2's low-noise expert `transformer_2`)."""
    second = getattr(pipe, "transformer_2", None) if pipe is not None else None
    return (second,) if isinstance(second, torch.nn.Module) else ()


def _runtime(transformer) -> CacheRuntime | None:
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook(TRANSFORMER_HOOK) if registry is not None else None
    return hook.runtime if hook is not None else None


def attach_runtime(pipe_or_transformer, policy: Policy, num_inference_steps: int | None = None,
                   batched_cfg: bool | None = None, guidance_scale: float | None = None) -> CacheRuntime:
    """Hook `policy` into a diffusers pipeline's transformer (or a transformer). Returns the runtime.

    Refuses to stack on another active cache (cachepilot's own, or one enabled with diffusers'
    `enable_cache`). `batched_cfg` says whether one call carries [uncond; cond] for batched-CFG
    models when applying to a bare transformer (for a pipeline it is read from the pipeline). `num_inference_steps` and
    `guidance_scale` tell the generation's settings where the pipeline does not (a bare transformer).
    A pipeline with two experts (Wan2.2) gets one runtime on both: one policy and budget, caches and
    signals per expert.
    """
    transformer, pipe = _transformer(pipe_or_transformer)
    adapter = adapter_for(transformer)
    experts = experts_of(pipe)
    for model in (transformer, *experts):
        if _runtime(model) is not None:
            raise CacheStackingError("a cachepilot cache is already applied to this transformer; call remove_cache first")
        if getattr(model, "is_cache_enabled", False):
            raise CacheStackingError("a diffusers cache is enabled on this transformer (enable_cache); "
                                     "call transformer.disable_cache() before applying cachepilot")
    runtime = CacheRuntime(transformer, adapter, policy, num_inference_steps, batched_cfg, pipe, experts, guidance_scale)
    for expert, model in enumerate(runtime.experts):
        HookRegistry.check_if_exists_or_initialize(model).register_hook(TransformerHook(runtime, expert), TRANSFORMER_HOOK)
        if adapter.time_embedder is not None:
            embedder = getattr(model, adapter.time_embedder)
            HookRegistry.check_if_exists_or_initialize(embedder).register_hook(TimeEmbedderHook(runtime), EMBEDDER_HOOK)
        for index, block in enumerate(adapter.blocks(model)):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(BlockHook(runtime, index), BLOCK_HOOK)
    return runtime


@contextlib.contextmanager
def cached(pipe_or_transformer, policy: Policy, **settings) -> Iterator[CacheRuntime]:
    """`attach_runtime` for the length of a `with` block (`settings`: its keywords); the cache comes off however
    the block ends."""
    runtime = attach_runtime(pipe_or_transformer, policy, **settings)
    try:
        yield runtime
    finally:
        remove_cache(pipe_or_transformer)


def remove_cache(pipe_or_transformer) -> None:
    """Remove cachepilot's hooks; the transformer computes exactly what it computed before."""
    transformer, _ = _transformer(pipe_or_transformer)
    runtime = _runtime(transformer)
    if runtime is None:
        return
    for model in runtime.experts:
        model._diffusers_hook.remove_hook(TRANSFORMER_HOOK, recurse=False)
        if runtime.adapter.time_embedder is not None:
            getattr(model, runtime.adapter.time_embedder)._diffusers_hook.remove_hook(EMBEDDER_HOOK, recurse=False)
        for block in runtime.adapter.blocks(model):
            block._diffusers_hook.remove_hook(BLOCK_HOOK, recurse=False)


def reset_cache(pipe_or_transformer) -> None:
    """Start a new generation explicitly (needed only where the pipeline passes no step index)."""
    runtime = _runtime(_transformer(pipe_or_transformer)[0])
    if runtime is not None:
        runtime.reset()


def cache_summary(pipe_or_transformer) -> CacheSummary:
    """What the cache did in the latest generation: actions per step and branch, compute, time."""
    runtime = _runtime(_transformer(pipe_or_transformer)[0])
    if runtime is None:
        raise CachepilotError("no cachepilot cache is applied to this transformer")
    return runtime.summary
