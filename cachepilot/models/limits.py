"""What one generation may ask of a pipeline, checked before anything is allocated: a step count its scheduler
takes, a video size its VAE and patch embedding divide and its rotary embedding covers, and activations that fit
in the memory of the device it runs on. Each refusal is one `InvalidInputError` naming the value and the limit."""

from __future__ import annotations

import inspect
import os

import torch

from cachepilot import checks
from cachepilot.errors import InvalidInputError

ACTIVATION_COPIES = 8  # live tensors of a block's width per token at its peak (attention in/out, FFN, residual), a floor


def _patch(transformer) -> tuple[int, int]:
    """(temporal, spatial) patch size of the transformer."""
    patch = getattr(transformer.config, "patch_size", 1) or 1
    if isinstance(patch, (list, tuple)):
        return int(patch[0]), int(patch[-1])
    return int(getattr(transformer.config, "patch_size_t", None) or 1), int(patch)


def _vae_factors(pipe) -> tuple[int, int]:
    """(temporal, spatial) compression of the pipeline's VAE; (1, 1) where the latent is the video (toy-wan)."""
    spatial = getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_spatial_compression_ratio", None)
    temporal = getattr(pipe, "vae_scale_factor_temporal", None) or getattr(pipe, "vae_temporal_compression_ratio", None)
    if getattr(pipe, "vae", None) is None:
        spatial, temporal = 1, 1
    return int(temporal or 1), int(spatial or 1)


def video_size(pipe, options: dict) -> dict[str, int | None]:
    """Height, width and frames of a generation: the options given, else the pipeline's `__call__` defaults, else
    (CogVideoX) the transformer's sample size."""
    params = inspect.signature(type(pipe).__call__).parameters
    config = pipe.transformer.config
    temporal, spatial = _vae_factors(pipe)
    fallback = {"height": getattr(config, "sample_height", None), "width": getattr(config, "sample_width", None),
                "num_frames": getattr(config, "sample_frames", None)}
    size = {}
    for name in ("height", "width", "num_frames"):
        value = options.get(name)
        if value is None and name in params and params[name].default is not inspect.Parameter.empty:
            value = params[name].default
        if value is None and fallback[name] is not None:
            value = fallback[name] * spatial if name != "num_frames" else (fallback[name] - 1) * temporal + 1
        size[name] = value
    return size


def max_steps(pipe) -> int:
    """The most denoising steps the pipeline's scheduler spreads over its training timesteps."""
    return int(getattr(pipe.scheduler.config, "num_train_timesteps", None) or 1000)


def available_memory(device: torch.device) -> int | None:
    """Bytes free on `device` now (None where it cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_generation(pipe, batch: int, steps: int | None, options: dict) -> None:
    """Refuse, before any allocation, a generation of `batch` videos in `steps` steps (None: not known yet) with the
    video `options` that the pipeline cannot take or its device cannot hold."""
    if steps is not None and checks.count("steps", steps) > max_steps(pipe):
        raise InvalidInputError(f"steps must be <= {max_steps(pipe)} for this model (its scheduler's training "
                                f"timesteps), got {steps}")
    transformer = pipe.transformer
    size = video_size(pipe, options)
    temporal, spatial = _vae_factors(pipe)
    patch_t, patch = _patch(transformer)
    multiple = spatial * patch
    for name in ("height", "width"):
        value = size[name]
        if value is not None and (checks.count(name, value) % multiple):
            raise InvalidInputError(f"{name} {value} does not suit this model: video sizes must be multiples of "
                                    f"{multiple} (its VAE compresses by {spatial}, its patches are {patch} wide)")
    if size["num_frames"] is not None:
        checks.count("num_frames", size["num_frames"])
    if None in size.values():
        return
    latent_frames = (size["num_frames"] - 1) // temporal + 1
    grid = {"frames": -(-latent_frames // patch_t), "height": size["height"] // multiple,
            "width": size["width"] // multiple}
    rope = getattr(transformer.config, "rope_max_seq_len", None)
    if rope:
        for axis, positions in grid.items():
            if positions > rope:
                raise InvalidInputError(f"the video's {axis} spans {positions} patches; this model's rotary embedding "
                                        f"covers at most {rope}")
    tokens = grid["frames"] * grid["height"] * grid["width"]
    width = int(getattr(transformer.config, "num_attention_heads", 1)) * int(getattr(transformer.config,
                                                                                     "attention_head_dim", 1))
    parameter = next(transformer.parameters())
    needed = 2 * batch * tokens * width * parameter.element_size() * ACTIVATION_COPIES  # 2: both CFG branches
    free = available_memory(parameter.device)
    if free is not None and needed > free:
        raise InvalidInputError(f"a generation of {batch} video(s) of {size['num_frames']} x {size['height']} x "
                                f"{size['width']} needs at least {needed / 2**30:.1f} GiB of activations; "
                                f"{parameter.device} has {free / 2**30:.1f} GiB free")
