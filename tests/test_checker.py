"""The checker is itself checked on ground-truth renders, where the right answer is known."""

import random

import numpy as np
import pytest

from cachepilot.models.toy_wan import checker, scenes


def _frames(scene, seed):
    return ((scenes.render(scene, random.Random(seed)) + 1) / 2).permute(1, 2, 3, 0).numpy()


def test_checker_agrees_with_ground_truth_renders():
    rng = random.Random(0)
    verdicts = []
    for i in range(200):
        scene = scenes.sample_scene(rng, scenes.load_split("train"))
        verdicts.append(checker.judge(_frames(scene, i), scene))
    summary = checker.summarise(verdicts)
    assert summary["colour_accuracy"] >= 0.99
    assert summary["motion_accuracy"] >= 0.99


@pytest.mark.parametrize("prompt", ["a blue circle moving up slowly on a plain background",
                                    "a yellow square standing still on a gradient background",
                                    "a green circle moving left quickly and a red square moving down slowly on a plain background"])
def test_checker_accepts_the_right_video_and_rejects_wrong_ones(prompt):
    scene = scenes.parse_prompt(prompt)
    video = _frames(scene, 1)
    assert checker.judge(video, scene).colour_ok and checker.judge(video, scene).motion_ok
    # Swapping red and blue channels changes the colours the checker must see.
    swapped = video[..., ::-1]
    assert not checker.judge(swapped, scene).colour_ok
    # Reversing time reverses every motion (a still object stays still).
    reverse = checker.judge(video[::-1], scene)
    assert reverse.motion_ok == all(o.direction == "still" for o in scene.objects)


def test_empty_video_finds_no_colour():
    verdict = checker.judge(np.full((8, 16, 16, 3), 0.2, dtype=np.float32), "a red circle standing still on a plain background")
    assert verdict.colours_found == () and verdict.directions_found == ("lost",)
    assert not verdict.colour_ok and not verdict.motion_ok


def test_bar_verdict_follows_the_quality_bar_and_only_at_its_settings():
    settings = {"split": "test", "videos": 64, "steps": 50, "guidance": 5.0}
    assert checker.bar_verdict(settings | {"colour_accuracy": 0.9, "motion_accuracy": 0.8}).endswith(": met")
    assert checker.bar_verdict(settings | {"colour_accuracy": 1.0, "motion_accuracy": 0.79}).endswith("NOT met (motion)")
    assert "not judged" in checker.bar_verdict(settings | {"videos": 8, "colour_accuracy": 1.0, "motion_accuracy": 1.0})


def test_summary_counts_motion_by_number_of_objects():
    one = scenes.parse_prompt("a blue circle moving up slowly on a plain background")
    two = scenes.parse_prompt("a green circle moving left quickly and a red square moving down slowly on a plain background")
    verdicts = [checker.judge(_frames(one, 0), one), checker.judge(_frames(two, 0), two), checker.judge(_frames(two, 0)[::-1], two)]
    summary = checker.summarise(verdicts)
    assert summary["motion_accuracy_one_object"] == "1/1" and summary["motion_accuracy_two_object"] == "1/2"
