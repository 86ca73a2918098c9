"""`cachepilot plan`: a call's cost from a published config, the phases of a recipe, and the plan against the calls a
tiny distillation really makes."""

from __future__ import annotations

import pytest

from cachepilot.cli import main
from cachepilot.envs.spec import Setting
from cachepilot.models.published import PUBLISHED, CallCost
from cachepilot.train.distill import DistillConfig
from cachepilot.train.plan import Recipe, distill_phases

STEPS = 6
TINY = DistillConfig(dagger_rounds=1, epochs=3, gain_pairs=1, gain_every=3, max_gap=3, num_envs=2, eval_budgets=(0.5,),
                     student_val_every=2, searched_budgets=(0.5,), search_rounds=1, search_proposals=2,
                     pairs_per_setting=1)


def test_a_wan_call_at_480p_counts_its_tokens_and_block_flops():
    wan = PUBLISHED["wan2.1-t2v-1.3b"]
    call = CallCost.at_video(wan.transformer_class, wan.config, (81, 480, 832), wan.text_tokens)
    assert call.tokens == 21 * 30 * 52 and call.blocks == 30
    s, l, d, f = call.tokens, 512, 1536, 8960  # self-attention, cross-attention and FFN multiply-adds, x2
    per_block = 2 * (4 * s * d * d + 2 * s * s * d + 2 * s * d * d + 2 * l * d * d + 2 * s * l * d + 2 * s * d * f)
    assert call.flops == pytest.approx(30 * per_block)
    big = PUBLISHED["wan2.1-t2v-14b"]
    assert CallCost.at_video(big.transformer_class, big.config, (81, 480, 832), 512).flops > 5 * call.flops


def test_the_phases_follow_the_recipe():
    primary = Setting(STEPS, 5.0)
    one = {p.name: p for p in distill_phases(Recipe(2, 1, primary, (primary,), (0.3, 0.5), TINY))}
    two = {p.name: p for p in distill_phases(Recipe(2, 1, primary, (primary, Setting(8, 5.0)), (0.3, 0.5), TINY))}
    assert one["other settings' schedules"].calls == 0 and two["other settings' schedules"].calls > 0
    # DAgger: 2 rounds x (2 pairs x 2 budgets at 6 steps, + 1 pair x 2 budgets at 8 steps), both CFG branches
    assert two["DAgger rollouts"].generations == 2 * (4 + 2)
    assert two["DAgger rollouts"].calls == 2 * (4 * 6 + 2 * 8) * 2
    assert two["DAgger rollouts"].computed_calls == pytest.approx(2 * 2 * (2 * 6 * (0.3 + 0.5) + 8 * (0.3 + 0.5)))
    # the segment tables' forks reuse everything: calls, but no block compute beyond the reference pass
    assert two["segment tables"].computed_calls == 2 * STEPS * 2 < two["segment tables"].calls


@pytest.mark.slow
def test_the_plan_bounds_the_calls_a_tiny_distillation_makes(tmp_path):
    from cachepilot.envs import RunSpec
    from cachepilot.models.registry import load_pipeline
    from cachepilot.train.distill import Distiller

    pipe = load_pipeline("toy-wan")
    transformer, counted = pipe.transformer, {"calls": 0, "block rows": 0}

    def counter(key):
        def hook(module, args):
            counted[key] += args[0].shape[0]
        return hook
    transformer.patch_embedding.register_forward_pre_hook(counter("calls"))  # every call, reused or not
    for block in transformer.blocks:  # a block's attention runs only where the block computes
        block.attn1.register_forward_pre_hook(counter("block rows"))
    settings = ((STEPS, 5.0), (STEPS + 2, 5.0))
    spec = RunSpec(pairs=2, val_pairs=1, steps=STEPS, budgets=(0.3, 0.5), references=tmp_path / "refs", pipe=pipe,
                   settings=settings)
    Distiller(spec, TINY, tmp_path / "run", log=lambda *a: None).learn()
    phases = distill_phases(Recipe(2, 1, Setting(STEPS, 5.0), tuple(Setting(*s) for s in settings), (0.3, 0.5), TINY))
    planned, computed = sum(p.calls for p in phases), sum(p.computed_calls for p in phases)
    assert 0.95 * planned <= counted["calls"] <= planned  # an upper bound: a start that does not fit is not run
    assert counted["block rows"] / len(transformer.blocks) <= computed  # students may spend under their budget


def test_plan_command_on_toy_wan_and_on_a_published_model_without_weights(capsys):
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "toy-wan: 6 blocks, video 8 x 16 x 16 -> 512 tokens" in out and "| **total** |" in out
    assert main(["plan", "--model", "wan2.1-t2v-1.3b", "--frames", "81", "--height", "480", "--width", "832",
                 "--seconds-per-call", "2.5", "--devices", "8"]) == 0
    out = capsys.readouterr().out
    assert "32,760 tokens" in out and "2.5 s per call (measured)" in out and "hours, 8 devices" in out


@pytest.mark.parametrize("argv, message", [
    (["plan", "--model", "nope"], "unknown model 'nope'"),
    (["plan", "--frames", "16"], "toy-wan generates 8 x 16 x 16 videos only"),
    (["plan", "--model", "wan2.1-t2v-1.3b", "--model-path", "/nonexistent"], "cannot read the transformer config"),
    (["plan", "--utilisation", "1.5"], "1.5"),
])
def test_plan_refuses_bad_input_in_one_line(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # the argument parser's refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
