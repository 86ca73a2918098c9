"""An automatic judge of toy-wan videos: are the prompted colours there, and do they move as prompted?

It reads only the generated frames: saturated pixels are assigned to the palette colour of nearest chroma, each
colour's blob is tracked by its centroid, and a least-squares velocity over the frames gives the
direction (or "still" below `STILL_SPEED` pixels per frame; the slow speed is 0.75).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .scenes import COLOURS, Scene, load_split, parse_prompt

SATURATION_MIN = 0.3  # backgrounds are grey (saturation 0); objects are saturated
MIN_AREA = 4.0  # mean pixels per frame for a colour to count as present (an object covers ~20-40)
STILL_SPEED = 0.3  # pixels per frame
# The quality toy-wan must reach to serve as a testbed: on 64 test-split pairs at 50 steps, guidance 5.
QUALITY_BAR = {"colour_accuracy": 0.90, "motion_accuracy": 0.80}
BAR_SETTINGS = {"split": "test", "videos": 64, "steps": 50, "guidance": 5.0}


def _chroma(rgb: np.ndarray) -> np.ndarray:
    """Colour with its grey part removed and scaled to peak 1: unchanged by blending with a grey background."""
    c = rgb - rgb.min(-1, keepdims=True)
    return c / np.maximum(c.max(-1, keepdims=True), 1e-6)


_PALETTE = _chroma(np.array(list(COLOURS.values()), dtype=np.float32))
_NAMES = list(COLOURS)


@dataclass
class VideoVerdict:
    prompt: str
    colours_expected: tuple[str, ...]
    colours_found: tuple[str, ...]
    directions_expected: tuple[str, ...]
    directions_found: tuple[str, ...]

    @property
    def colour_ok(self) -> bool:
        return set(self.colours_expected) == set(self.colours_found)

    @property
    def motion_ok(self) -> bool:
        return self.directions_expected == self.directions_found


def colour_masks(video: np.ndarray) -> dict[str, np.ndarray]:
    """Per palette colour, a boolean mask (frames, H, W) of the pixels assigned to it."""
    video = np.asarray(video, dtype=np.float32)
    saturation = video.max(-1) - video.min(-1)
    dist = ((_chroma(video)[..., None, :] - _PALETTE) ** 2).sum(-1)
    nearest = dist.argmin(-1)
    return {name: (saturation > SATURATION_MIN) & (nearest == i) for i, name in enumerate(_NAMES)}


def direction_of(mask: np.ndarray) -> str:
    """Direction of a blob from the least-squares slope of its centroid track."""
    frames, cx, cy = [], [], []
    for f, m in enumerate(mask):
        ys, xs = np.nonzero(m)
        if len(xs) >= 2:
            frames.append(f)
            cx.append(xs.mean())
            cy.append(ys.mean())
    if len(frames) < 3:
        return "lost"
    t = np.asarray(frames, dtype=np.float64)
    vx, vy = np.polyfit(t, cx, 1)[0], np.polyfit(t, cy, 1)[0]
    if max(abs(vx), abs(vy)) < STILL_SPEED:
        return "still"
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def judge(video: np.ndarray, prompt: str | Scene) -> VideoVerdict:
    """Judge one video (frames, H, W, 3) in [0, 1] against its prompt."""
    scene = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    masks = colour_masks(video)
    found = tuple(name for name, m in masks.items() if m.sum() / len(m) >= MIN_AREA)
    return VideoVerdict(
        prompt=scene.prompt,
        colours_expected=tuple(o.colour for o in scene.objects),
        colours_found=found,
        directions_expected=tuple(o.direction for o in scene.objects),
        directions_found=tuple(direction_of(masks[o.colour]) for o in scene.objects),
    )


def summarise(verdicts: list[VideoVerdict]) -> dict:
    """Accuracies overall and, for motion, by number of objects (two-object scenes are the hard part)."""
    n = len(verdicts)
    summary = {
        "videos": n,
        "colour_accuracy": sum(v.colour_ok for v in verdicts) / n,
        "motion_accuracy": sum(v.motion_ok for v in verdicts) / n,
    }
    for count, name in ((1, "one_object"), (2, "two_object")):
        group = [v for v in verdicts if len(v.colours_expected) == count]
        if group:
            summary[f"motion_accuracy_{name}"] = f"{sum(v.motion_ok for v in group)}/{len(group)}"
    return summary


def bar_verdict(summary: dict) -> str:
    """Whether a summary meets the quality bar; a run with other settings is not a measurement of it."""
    bar = ", ".join(f"{k.split('_')[0]} >= {v:.0%}" for k, v in QUALITY_BAR.items())
    if any(summary.get(k) != v for k, v in BAR_SETTINGS.items()):
        settings = ", ".join(f"{k} {v}" for k, v in BAR_SETTINGS.items())
        return f"{bar}: not judged (the bar is measured at {settings})"
    missed = [k.split("_")[0] for k, v in QUALITY_BAR.items() if summary[k] < v]
    return f"{bar}: " + ("met" if not missed else f"NOT met ({', '.join(missed)})")


def evaluate(pipe, split: str = "test", pairs: int = 64, steps: int = 50, guidance: float = 5.0,
             batch_size: int = 16, seed: int = 0, progress: bool = True) -> tuple[dict, list[VideoVerdict]]:
    """Generate `pairs` (prompt, seed) pairs of a split (prompt i with seed `seed + i`) and judge them."""
    prompts = list(load_split(split))
    prompts = [prompts[i % len(prompts)] for i in range(pairs)]
    verdicts: list[VideoVerdict] = []
    pipe.set_progress_bar_config(disable=True)
    for start in tqdm(range(0, pairs, batch_size), desc=f"checking {split}", disable=not progress):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        frames = pipe(prompt=chunk, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="np").frames
        verdicts.extend(judge(video, prompt) for video, prompt in zip(frames, chunk))
    summary = summarise(verdicts) | {"split": split, "steps": steps, "guidance": guidance, "seed": seed}
    return summary, verdicts
