"""Bad input ends in one line that names the value and what is allowed, before any compute; nothing runs with a
silently changed meaning. The same rules hold on the command line, in the Python API and in the environments."""

import contextlib
import io
import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cachepilot import apply_cache, load_policy, remove_cache
from cachepilot.cli import build_parser, main
from cachepilot.errors import CachepilotError, InvalidInputError
from cachepilot.models.registry import embedded_path, load_pipeline, verify_checksums
from cachepilot.policies.policy_file import PolicyFileError

PROMPT = "a red circle moving left quickly on a plain background"
SHIPPED_POLICY = embedded_path("toy-wan") / "policy-distill"


def _one_line_error(argv, capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses at parse time
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("cachepilot: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra, message", [
    (["--guidance", "nan"], "argument --guidance: guidance must be a finite number, got nan"),
    (["--guidance", "-1"], "guidance must be >= 0"),
    (["--steps", "0"], "argument --steps: value must be >= 1, got 0"),
    (["--steps", "1.5"], "value must be a whole number, got 1.5"),
    (["--seed", str(2**64)], "argument --seed: seed must be >= 0 and <= 9223372036854775807"),
    (["--seed", "-1"], "seed must be >= 0"),
    (["--fps", "0"], "argument --fps: value must be >= 1"),
    (["--scale", "0"], "argument --scale: value must be >= 1"),
    (["--cache", "static", "--knob", "1.5"], "static interval must be a whole number, got 1.5"),
    (["--cache", "static", "--knob", "-1"], "static interval must be >= 1, got -1"),
    (["--cache", "teacache", "--knob", "nan"], "argument --knob: value must be a finite number"),
    (["--cache", "teacache", "--knob", "-0.1"], "TeaCache threshold must be >= 0"),
    (["--cache", "static", "--budget", "0.2"], "--budget applies to --cache learned; static takes --knob"),
    (["--cache", "learned", "--budget", "5"], "argument --budget: budget must be > 0 and <= 1, got 5"),
    (["--cache", "learned", "--knob", "3"], "--knob applies to the baselines"),
    (["--steps", "20", "--cache", "learned"], "trained for 50-step generations, not 20"),
    (["--prompt", "  "], "the prompt is empty"),
    (["--prompt", " ".join(["a red circle"] * 10)], "the prompt has 30 words; toy-wan reads at most 24"),
])
def test_generate_refuses_bad_values_in_one_line(extra, message, capsys, tmp_path):
    argv = ["generate", "--prompt", PROMPT, "--out", str(tmp_path / "clip.gif"), *extra]
    assert message in _one_line_error(argv, capsys)
    assert not (tmp_path / "clip.gif").exists()


def test_an_unwritable_output_is_refused_before_any_compute(capsys):
    """Permission bits say yes to root; writing under /proc fails, and is tried before the model is loaded."""
    err = _one_line_error(["generate", "--prompt", PROMPT, "--out", "/proc/clip.gif"], capsys)
    assert "cannot write to /proc/clip.gif" in err


NUMERIC = {"--steps": "count", "--guidance": "guidance", "--seed": "seed", "--fps": "count", "--scale": "count",
           "--budget": "budget"}


@settings(max_examples=150, deadline=None)
@given(flag=st.sampled_from(sorted(NUMERIC)),
       text=st.one_of(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                      st.integers(min_value=-2**70, max_value=2**70).map(str)))
def test_numeric_arguments_parse_to_a_valid_value_or_one_line(flag, text):
    parser, stderr = build_parser(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(["generate", "--prompt", PROMPT, "--out", "x.gif", flag, text])
    except SystemExit as exit_:
        err = stderr.getvalue().strip()
        assert exit_.code == 2 and err.startswith("cachepilot: error:") and "\n" not in err
        return
    value = getattr(args, flag[2:])
    kind = NUMERIC[flag]
    if kind == "count":
        assert isinstance(value, int) and value >= 1
    elif kind == "seed":
        assert isinstance(value, int) and 0 <= value < 2**63
    elif kind == "budget":
        assert 0 < value <= 1
    else:
        assert value == value and 0 <= value < float("inf")


def test_a_policy_is_checked_against_the_steps_it_runs_with_when_not_told(toy_pipe):
    """apply_cache as the README writes it (no num_inference_steps), then a 20-step generation of a 50-step policy:
    refused at its first decision, from the pipeline's own step count."""
    apply_cache(toy_pipe, load_policy(SHIPPED_POLICY), budget=0.35)
    try:
        with pytest.raises(InvalidInputError, match="trained for 50-step generations and this one has 20 steps"):
            toy_pipe(PROMPT, num_inference_steps=20, generator=torch.Generator().manual_seed(0))
    finally:
        remove_cache(toy_pipe)


def test_ppo_refuses_to_warm_start_from_a_policy_of_another_step_count(capsys, tmp_path):
    err = _one_line_error(["train", "--algo", "ppo", "--init-from", str(SHIPPED_POLICY), "--steps", "10",
                           "--out", str(tmp_path / "policy"), "--references", str(tmp_path / "refs")], capsys)
    assert "trained for 50-step generations, not 10" in err


# ---- integrity ----------------------------------------------------------------------------------
def _load_error(folder) -> str:
    with pytest.raises(CachepilotError) as err:
        load_pipeline("toy-wan", folder)
    return str(err.value)


def test_a_shipped_model_folder_is_verified_as_a_whole(toy_copy):
    config = toy_copy / "transformer" / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps(data | {"num_layers": 4}))
    assert "transformer/config.json is corrupted or altered" in _load_error(toy_copy)
    shutil.copy(embedded_path("toy-wan") / "transformer" / "config.json", config)
    load_pipeline("toy-wan", toy_copy)
    (toy_copy / "transformer" / "extra.bin").write_bytes(b"x")
    assert "holds files its checksums.json does not list: transformer/extra.bin" in _load_error(toy_copy)
    (toy_copy / "transformer" / "extra.bin").unlink()
    (toy_copy / "checksums.json").write_text("[1, 2]")
    assert "checksums.json is malformed" in _load_error(toy_copy)
    (toy_copy / "checksums.json").unlink()
    assert "has no checksums.json, so it cannot be verified" in _load_error(toy_copy)


def test_a_users_own_folder_loads_without_a_manifest(toy_copy):
    (toy_copy / "checksums.json").unlink()
    verify_checksums(toy_copy, required=False)  # a real model download: nothing to verify against, loads as it is
    with pytest.raises(CachepilotError, match="cannot be verified"):
        verify_checksums(toy_copy, required=True)


@pytest.mark.parametrize("edit", [
    lambda card: card["actions"].__setitem__(-1, "BLOCK_5"),
    lambda card: card["observation"]["features"][0].__setitem__("center", 0.7),
    lambda card: card.__setitem__("budget_range", [0, 5]),
    lambda card: card.pop("checksum"),
])
def test_an_edited_policy_card_is_refused(edit, tmp_path):
    folder = shutil.copytree(SHIPPED_POLICY, tmp_path / "policy")
    card = json.loads((folder / "policy.json").read_text())
    edit(card)
    (folder / "policy.json").write_text(json.dumps(card))
    with pytest.raises(PolicyFileError, match="checksum"):
        load_policy(folder)


def test_policy_weights_that_are_not_safetensors_are_refused(tmp_path):
    """A folder whose card is consistent with its weights file, but the weights are not safetensors."""
    import hashlib

    from cachepilot.integrity import seal

    folder = shutil.copytree(SHIPPED_POLICY, tmp_path / "policy")
    blob = b"not a safetensors file at all"
    (folder / "policy.safetensors").write_bytes(blob)
    card = json.loads((folder / "policy.json").read_text())
    card["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    (folder / "policy.json").write_text(json.dumps(seal(card)))
    with pytest.raises(PolicyFileError, match="does not fit the network its card describes"):
        load_policy(folder)


@settings(max_examples=60, deadline=None)
@given(card=st.binary(max_size=400), weights=st.binary(max_size=200))
def test_the_policy_reader_turns_any_bytes_into_a_clean_error(card, weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "policy.json").write_bytes(card)
    (folder / "policy.safetensors").write_bytes(weights)
    with pytest.raises(PolicyFileError):
        load_policy(folder)


def test_an_edited_calibration_is_refused(tmp_path):
    from cachepilot.policies.calibration import load_calibration

    path = tmp_path / "calibration.json"
    record = json.loads((embedded_path("toy-wan") / "calibration.json").read_text())
    record["teacache"]["coefficients"][0] += 1
    path.write_text(json.dumps(record))
    with pytest.raises(CachepilotError, match="does not match its checksum"):
        load_calibration(path)


# ---- environments ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"guidance": float("nan")}, "guidance must be a finite number"),
    ({"prompts": "test", "pairs": 1000}, "pairs must be >= 1 and <= 64, got 1000"),
    ({"budget": (0.6, 0.2)}, "budget range [0.6, 0.2] is empty"),
    ({"budget": 1.5}, "budget range start must be > 0 and <= 1"),
])
def test_environments_refuse_bad_settings(kwargs, message, toy_pipe, tmp_path):
    from cachepilot.envs import CacheEnv

    with pytest.raises(InvalidInputError) as err:
        CacheEnv(pipe=toy_pipe, references=tmp_path, **({"pairs": 2, "steps": 2} | kwargs))
    assert message in str(err.value)


@pytest.mark.parametrize("budget", [5, -1, float("nan")])
def test_reset_refuses_a_budget_outside_zero_to_one(budget, toy_pipe, tmp_path):
    from cachepilot.envs import CacheEnv

    env = CacheEnv(pipe=toy_pipe, pairs=2, steps=2, references=tmp_path)
    with pytest.raises(InvalidInputError, match="budget must be (> 0 and <= 1|a finite number)"):
        env.reset(seed=0, options={"budget": budget})


def test_step_refuses_an_action_that_is_not_a_whole_index(toy_pipe, tmp_path):
    from cachepilot.envs import CacheEnv

    env = CacheEnv(pipe=toy_pipe, pairs=1, steps=2, references=tmp_path)
    env.reset(seed=0)
    with pytest.raises(InvalidInputError, match="action must be a whole number, got 1.7"):
        env.step(1.7)
    with pytest.raises(InvalidInputError, match=r"action must be >= 0 and <= 12, got 13"):
        env.step(13)
    env.close()
