"""Writing generated videos to GIF or MP4 (chosen by the file extension), atomically."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.io import atomic_output
from cachepilot.models.limits import available_memory

FORMATS = (".gif", ".mp4")


def check_writable(path: str | Path) -> Path:
    """Fail early, before any compute, if the video cannot be written there."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InvalidInputError(f"output must end in {' or '.join(FORMATS)}: {path}")
    return checks.writable_file(path)


MAX_SIDE = 65_535  # the largest frame side a GIF can hold


def check_output_size(frames: int, height: int, width: int, scale: int) -> None:
    """Refuse, before anything is generated or allocated, an upscale whose frames no video file or memory holds."""
    scale = checks.count("scale", scale)
    side = max(height, width) * scale
    if side > MAX_SIDE:
        raise InvalidInputError(f"scale {scale} makes frames {side} pixels wide; a video file takes at most {MAX_SIDE} "
                                f"(use a scale of at most {max(1, MAX_SIDE // max(height, width))})")
    needed, free = frames * height * width * 3 * scale * scale, available_memory(torch.device("cpu"))
    if free is not None and needed > free // 2:
        raise InvalidInputError(f"scale {scale} makes a {needed / 2**30:.1f} GiB video; this machine has "
                                f"{free / 2**30:.1f} GiB free")


def to_uint8(frames: np.ndarray, scale: int = 1) -> np.ndarray:
    """(frames, H, W, 3) floats in [0, 1] -> uint8, upscaled by pixel repetition (toy videos are 16 px)."""
    frames = (np.clip(np.asarray(frames, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return frames


def save_video(frames: np.ndarray, path: str | Path, fps: int = 8, scale: int = 8) -> Path:
    fps, scale = checks.count("fps", fps), checks.count("scale", scale)
    path = check_writable(path)
    check_output_size(*np.shape(frames)[:3], scale)
    data = to_uint8(frames, scale)
    with atomic_output(path) as tmp:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, data, extension=".gif", duration=1000 / fps, loop=0)
        else:
            iio.imwrite(tmp, data, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    return path
