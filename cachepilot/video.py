"""Writing generated videos to GIF or MP4 (chosen by the file extension), atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from cachepilot import checks
from cachepilot.errors import InvalidInputError

FORMATS = (".gif", ".mp4")


def check_writable(path: str | Path) -> Path:
    """Fail early, before any compute, if the video cannot be written there."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InvalidInputError(f"output must end in {' or '.join(FORMATS)}: {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInputError(f"output folder does not exist: {parent}")
    if path.is_dir():
        raise InvalidInputError(f"cannot write to {path}: it is a folder")
    try:  # try it: permission bits say nothing for root, and /proc or a read-only mount refuse anyway
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.stem}.", suffix=path.suffix):
                pass
    except OSError as err:
        raise InvalidInputError(f"cannot write to {path}: {(err.strerror or str(err)).lower()}") from None
    return path


def to_uint8(frames: np.ndarray, scale: int = 1) -> np.ndarray:
    """(frames, H, W, 3) floats in [0, 1] -> uint8, upscaled by pixel repetition (toy videos are 16 px)."""
    frames = (np.clip(np.asarray(frames, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return frames


def save_video(frames: np.ndarray, path: str | Path, fps: int = 8, scale: int = 8) -> Path:
    fps, scale = checks.count("fps", fps), checks.count("scale", scale)
    path = check_writable(path)
    data = to_uint8(frames, scale)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, data, extension=".gif", duration=1000 / fps, loop=0)
        else:
            iio.imwrite(tmp, data, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
