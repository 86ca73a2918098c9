import random

import pytest
import torch

from cachepilot.models.toy_wan import scenes


def test_grammar_round_trip_for_every_scene():
    all_scenes = scenes.all_scenes()
    assert len(all_scenes) == 2 * 72 + 2 * 72 * 54
    for scene in all_scenes[::37]:
        assert scenes.parse_prompt(scene.prompt) == scene


@pytest.mark.parametrize("bad", ["a red circle", "a purple circle standing still on a plain background",
                                 "a red circle moving left on a plain background", "hello"])
def test_parse_rejects_text_outside_the_grammar(bad):
    with pytest.raises(ValueError):
        scenes.parse_prompt(bad)


def test_shipped_splits_are_the_deterministic_disjoint_splits():
    expected = scenes.make_splits()
    shipped = {s: list(scenes.load_split(s)) for s in scenes.SPLITS}
    assert shipped == expected
    train, val, test = (set(shipped[s]) for s in scenes.SPLITS)
    assert not (train & val or train & test or val & test)
    assert len(test) == 64 and len(val) == 64
    assert sum(" and " not in p for p in test) == 32


def test_data_variety_covers_the_required_factors():
    specs = scenes.all_shape_specs()
    assert len({s.colour for s in specs}) >= 4 and len({s.shape for s in specs}) >= 2
    assert {s.direction for s in specs} == {"left", "right", "up", "down", "still"}
    assert len(scenes.SPEEDS) == 2 and set(scenes.BACKGROUNDS) == {"plain", "gradient"}


def test_render_is_deterministic_in_range_and_moves():
    scene = scenes.parse_prompt("a red square moving right quickly on a gradient background")
    a, b = scenes.render(scene, random.Random(3)), scenes.render(scene, random.Random(3))
    assert a.shape == (3, scenes.NUM_FRAMES, scenes.HEIGHT, scenes.WIDTH)
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    red = (a[0] - a[1]).clamp(min=0)  # red minus green: the object only
    xs = torch.arange(scenes.WIDTH).float()
    centroid_x = [(red[f].sum(0) * xs).sum() / red[f].sum() for f in range(scenes.NUM_FRAMES)]
    assert centroid_x[-1] - centroid_x[0] == pytest.approx(1.5 * (scenes.NUM_FRAMES - 1), abs=1.0)


def test_sample_scene_draws_two_object_scenes_at_the_asked_rate():
    rng, prompts = random.Random(0), scenes.load_split("train")
    for share in (0.0, 0.5, 0.75, 1.0):
        drawn = [len(scenes.sample_scene(rng, prompts, share).objects) == 2 for _ in range(2000)]
        assert abs(sum(drawn) / len(drawn) - share) < 0.04, share
    with pytest.raises(ValueError, match="probability"):
        scenes.sample_scene(rng, prompts, 1.5)
