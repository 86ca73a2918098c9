"""Does toy-wan read the direction words, and which object each belongs to? Denoising loss, true prompt vs wrong.

    python benchmarks/toy_wan_direction.py [--model-path DIR] [--videos 16]

Table 1, direction: for each true direction (a red circle moving left / right / up / down quickly) it
renders videos, noises them at a few noise levels and measures the flow-matching loss of the model's
prediction when the prompt names the true direction and when it names each other one. A model that uses
the words has a lower loss with the true one; a model that ignores them has the same loss either way. This
is how toy-wan without position channels was found to ignore the direction words (toy-wan model card).

Table 2, binding: two objects moving different ways, the true prompt vs the same prompt with the two
directions swapped. Equal losses mean the model knows which directions occur but not which object takes
which, which is how two-object scenes were found to fail (toy-wan model card).
"""

from __future__ import annotations

import argparse
import random

import torch

from cachepilot.models.registry import load_pipeline, weights_path
from cachepilot.models.toy_wan import scenes
from cachepilot.provenance import machine_summary
from cachepilot.train.toy_model import flow_matching_loss

DIRECTIONS = ("left", "right", "up", "down")  # "standing still" differs in other words too; left out


def prompt_for(direction: str) -> str:
    return f"a red circle moving {direction} quickly on a plain background"


@torch.no_grad()
def loss_matrix(pipe, sigma: float, videos: int, seed: int = 0) -> torch.Tensor:
    """[true direction, prompted direction] -> mean flow-matching loss (the trainer's) at noise level `sigma`."""
    transformer, encoder = pipe.transformer.eval(), pipe.text_encoder.eval()
    rng = random.Random(seed)
    sigmas = torch.full((videos,), sigma)
    losses = torch.zeros(len(DIRECTIONS), len(DIRECTIONS))
    for i, true in enumerate(DIRECTIONS):
        scene = scenes.parse_prompt(prompt_for(true))
        clean = torch.stack([scenes.render(scene, rng) for _ in range(videos)])
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + i))
        for j, prompted in enumerate(DIRECTIONS):
            losses[i, j] = flow_matching_loss(transformer, encoder, clean, [prompt_for(prompted)] * videos, sigmas, noise)
    return losses


@torch.no_grad()
def binding_losses(pipe, sigma: float, videos: int, seed: int = 0) -> tuple[float, float]:
    """(loss with the true prompt, loss with the objects' directions swapped) on two-object scenes."""
    transformer, encoder = pipe.transformer.eval(), pipe.text_encoder.eval()
    rng = random.Random(seed)
    true, swapped = [], []
    for _ in range(videos):
        first, second = rng.sample(sorted(scenes.COLOURS), 2)
        d1, d2 = rng.sample(DIRECTIONS, 2)
        phrase = lambda a, b: f"a {first} circle moving {a} quickly and a {second} square moving {b} quickly on a plain background"
        true.append(phrase(d1, d2))
        swapped.append(phrase(d2, d1))
    clean = torch.stack([scenes.render(scenes.parse_prompt(p), rng) for p in true])
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.full((videos,), sigma)
    return tuple(flow_matching_loss(transformer, encoder, clean, prompts, sigmas, noise).item() for prompts in (true, swapped))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None, help="an exported toy-wan folder (default: the shipped one)")
    parser.add_argument("--videos", type=int, default=16, help="rendered videos per direction")
    parser.add_argument("--sigmas", default="0.9,0.7,0.5")
    args = parser.parse_args()
    pipe = load_pipeline("toy-wan", args.model_path)
    print(f"toy-wan at {args.model_path or weights_path('toy-wan')}, {args.videos} videos per direction; {machine_summary()}")
    print("| noise level | loss, true direction | loss, other directions | other - true |")
    print("|---|---|---|---|")
    for sigma in (float(s) for s in args.sigmas.split(",")):
        m = loss_matrix(pipe, sigma, args.videos)
        true = m.diag().mean().item()
        other = ((m.sum() - m.diag().sum()) / (m.numel() - len(DIRECTIONS))).item()
        print(f"| {sigma:.1f} | {true:.4f} | {other:.4f} | {other - true:+.4f} |")
    two_object_videos = len(DIRECTIONS) * args.videos  # as many videos as the direction table
    print(f"\nTwo objects moving different ways, {two_object_videos} videos: the true prompt vs the directions swapped")
    print("| noise level | loss, true prompt | loss, directions swapped | swapped - true |")
    print("|---|---|---|---|")
    for sigma in (float(s) for s in args.sigmas.split(",")):
        true, swapped = binding_losses(pipe, sigma, two_object_videos)
        print(f"| {sigma:.1f} | {true:.4f} | {swapped:.4f} | {swapped - true:+.4f} |")


if __name__ == "__main__":
    main()
