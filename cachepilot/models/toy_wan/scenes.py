"""Synthetic moving-shape scenes: the prompt grammar, the renderer and the fixed prompt splits.

A scene is one or two coloured shapes moving in one of four directions (or standing still) at one of
two speeds over a plain or gradient background. Scenes differ in how much motion they contain, which
is what makes some videos need more denoising compute than others.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch

from cachepilot.errors import InvalidInputError

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.9, 0.1),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.9, 0.1),
}
SHAPES = ("circle", "square")
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) in pixels per unit speed; y grows downwards
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
SPEEDS = {"slowly": 0.75, "quickly": 1.5}  # pixels per frame
BACKGROUNDS = ("plain", "gradient")

# Video geometry of toy-wan: 3 channels x 8 frames x 16 x 16 pixels, values in [-1, 1].
NUM_FRAMES, HEIGHT, WIDTH = 8, 16, 16
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ShapeSpec:
    colour: str
    shape: str
    direction: str  # one of DIRECTIONS; "still" means static
    speed: str | None  # one of SPEEDS, None when still

    def phrase(self) -> str:
        motion = "standing still" if self.direction == "still" else f"moving {self.direction} {self.speed}"
        return f"a {self.colour} {self.shape} {motion}"

    @property
    def velocity(self) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        v = SPEEDS[self.speed] if self.speed else 0.0
        return dx * v, dy * v


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeSpec, ...]
    background: str

    @property
    def prompt(self) -> str:
        return " and ".join(o.phrase() for o in self.objects) + f" on a {self.background} background"


def all_shape_specs() -> list[ShapeSpec]:
    specs = []
    for colour, shape in itertools.product(COLOURS, SHAPES):
        specs.append(ShapeSpec(colour, shape, "still", None))
        for direction, speed in itertools.product([d for d in DIRECTIONS if d != "still"], SPEEDS):
            specs.append(ShapeSpec(colour, shape, direction, speed))
    return specs


def all_scenes() -> list[Scene]:
    """Every scene the grammar allows: one object, or two objects of different colours."""
    specs = all_shape_specs()
    scenes = [Scene((s,), bg) for s in specs for bg in BACKGROUNDS]
    for a, b in itertools.product(specs, specs):
        if a.colour != b.colour:
            scenes.extend(Scene((a, b), bg) for bg in BACKGROUNDS)
    return scenes


def parse_prompt(prompt: str) -> Scene:
    """Inverse of `Scene.prompt`; raises ValueError on text outside the grammar."""
    words = prompt.lower().strip().rstrip(".").split()
    if len(words) < 4 or words[-4:-2] != ["on", "a"] or words[-1] != "background" or words[-2] not in BACKGROUNDS:
        raise ValueError(f"not a toy-wan scene prompt: {prompt!r}")
    objects, phrase = [], []
    for w in words[:-4] + ["and"]:
        if w != "and":
            phrase.append(w)
            continue
        if len(phrase) == 5 and phrase[3:] == ["standing", "still"]:
            direction, speed = "still", None
        elif len(phrase) == 6 and phrase[3] == "moving":
            direction, speed = phrase[4], phrase[5]
        else:
            raise ValueError(f"cannot parse object phrase {' '.join(phrase)!r}")
        if phrase[0] != "a" or phrase[1] not in COLOURS or phrase[2] not in SHAPES:
            raise ValueError(f"cannot parse object phrase {' '.join(phrase)!r}")
        if direction not in DIRECTIONS or (speed is not None and speed not in SPEEDS):
            raise ValueError(f"cannot parse object phrase {' '.join(phrase)!r}")
        objects.append(ShapeSpec(phrase[1], phrase[2], direction, speed))
        phrase = []
    return Scene(tuple(objects), words[-2])


def make_splits(seed: int = 0, held_out_single: int = 32, held_out_double: int = 32) -> dict[str, list[str]]:
    """Deterministic split of all prompts: val and test each hold 32 one-object and 32 two-object scenes."""
    rng = random.Random(seed)
    scenes = all_scenes()
    single = [s.prompt for s in scenes if len(s.objects) == 1]
    double = [s.prompt for s in scenes if len(s.objects) == 2]
    rng.shuffle(single)
    rng.shuffle(double)
    val = single[:held_out_single] + double[:held_out_double]
    test = single[held_out_single : 2 * held_out_single] + double[held_out_double : 2 * held_out_double]
    train = single[2 * held_out_single :] + double[2 * held_out_double :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


@lru_cache(maxsize=None)
def load_split(split: str) -> tuple[str, ...]:
    """The fixed prompt list of a split, as shipped in `splits/<split>.txt`."""
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    text = resources.files(__package__).joinpath("splits", f"{split}.txt").read_text()
    return tuple(line for line in text.splitlines() if line.strip())


def sample_scene(rng: random.Random, prompts: tuple[str, ...] | list[str], two_objects: float = 0.5) -> Scene:
    """A one- or two-object scene, two-object with probability `two_objects` (however many prompts each kind has)."""
    if not 0.0 <= two_objects <= 1.0:
        raise ValueError(f"two_objects is a probability, got {two_objects}")
    single = [p for p in prompts if " and " not in p]
    double = [p for p in prompts if " and " in p]
    pool = single if (rng.random() >= two_objects and single) or not double else double
    return parse_prompt(rng.choice(pool))


def _coverage(xs: torch.Tensor, ys: torch.Tensor, cx: float, cy: float, shape: str, radius: float) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of a shape centred at (cx, cy) for pixel centres (xs, ys)."""
    if shape == "circle":
        dist = torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
    else:
        dist = torch.maximum((xs - cx).abs(), (ys - cy).abs())
    return (radius - dist + 0.5).clamp(0.0, 1.0)


def _place(objects, rng: random.Random, frames: int, height: int, width: int, tries: int = 50):
    """Random start (x0, y0) and radius per object, keeping tracks inside the frame and objects mostly apart."""
    best, best_gap = None, -float("inf")
    for _ in range(tries):
        placed = []
        for obj in objects:
            radius = rng.uniform(2.5, 3.5)
            vx, vy = obj.velocity
            span_x, span_y = vx * (frames - 1), vy * (frames - 1)
            lo_x, hi_x = radius + max(0.0, -span_x), width - radius - max(0.0, span_x)
            lo_y, hi_y = radius + max(0.0, -span_y), height - radius - max(0.0, span_y)
            placed.append((rng.uniform(lo_x, max(lo_x, hi_x)), rng.uniform(lo_y, max(lo_y, hi_y)), radius))
        if len(objects) == 1:
            return placed
        (xa, ya, ra), (xb, yb, rb) = placed
        (vxa, vya), (vxb, vyb) = objects[0].velocity, objects[1].velocity
        gap = min(
            ((xa + vxa * f - xb - vxb * f) ** 2 + (ya + vya * f - yb - vyb * f) ** 2) ** 0.5 - (ra + rb)
            for f in range(frames)
        )
        if gap >= -1.0:  # at most a pixel of overlap at the closest frame
            return placed
        if gap > best_gap:
            best, best_gap = placed, gap
    return best


def render(scene: Scene, rng: random.Random, frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """Render a scene to a video tensor (3, frames, height, width) in [-1, 1] with random placement."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    if scene.background == "plain":
        level = rng.uniform(0.0, 0.15)
        background = torch.full((height, width), level)
    else:
        angle = rng.uniform(0, 2 * torch.pi)
        proj = (xs - width / 2) * torch.cos(torch.tensor(angle)) + (ys - height / 2) * torch.sin(torch.tensor(angle))
        background = 0.1 + 0.35 * (proj / max(height, width) + 0.5).clamp(0, 1)
    video = background.expand(frames, 3, height, width).clone()
    for obj, (x0, y0, radius) in zip(scene.objects, _place(scene.objects, rng, frames, height, width)):
        vx, vy = obj.velocity
        colour = torch.tensor(COLOURS[obj.colour]).view(3, 1, 1)
        for f in range(frames):
            cov = _coverage(xs, ys, x0 + vx * f, y0 + vy * f, obj.shape, radius)
            video[f] = video[f] * (1 - cov) + colour * cov
    return (video.permute(1, 0, 2, 3) * 2 - 1).contiguous()
