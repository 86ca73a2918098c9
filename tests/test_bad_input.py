"""Bad input ends in one line that names the value and what is allowed, before any compute; nothing runs with a
silently changed meaning. The same rules hold on the command line, in the Python API and in the environments."""

import contextlib
import io
import json
import shutil
import warnings

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
SHIPPED_POLICY = embedded_path("toy-wan") / "policy-distill"  # trained over 10-100 steps, guidance 2-8
SINGLE_SETTING_POLICY = embedded_path("toy-wan") / "policy-ppo"  # trained at 50 steps, guidance 5 alone


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
    (["--steps", "120", "--cache", "learned"], "trained for 10-100-step generations and this one has 120 steps"),
    (["--steps", "20", "--cache", "learned", "--policy", str(SINGLE_SETTING_POLICY)],
     "trained for 50-step generations and this one has 20 steps"),
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
    apply_cache(toy_pipe, load_policy(SINGLE_SETTING_POLICY), budget=0.35)
    try:
        with pytest.raises(InvalidInputError, match="trained for 50-step generations and this one has 20 steps"):
            toy_pipe(PROMPT, num_inference_steps=20, generator=torch.Generator().manual_seed(0))
    finally:
        remove_cache(toy_pipe)


def test_ppo_refuses_to_warm_start_from_a_policy_of_another_step_count(capsys, tmp_path):
    err = _one_line_error(["train", "--algo", "ppo", "--init-from", str(SINGLE_SETTING_POLICY), "--steps", "10",
                           "--out", str(tmp_path / "policy"), "--references", str(tmp_path / "refs")], capsys)
    assert "trained for 50-step generations and this one has 10 steps" in err


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
    ({"budgets": ()}, "budget must be a fraction of full compute or a list of them, got ()"),
    ({"budgets": 1.5}, "budget must be > 0 and <= 1"),
])
def test_environments_refuse_bad_settings(kwargs, message, toy_pipe, tmp_path):
    from cachepilot.envs import CacheEnv, RunSpec

    with pytest.raises(InvalidInputError) as err:
        CacheEnv(RunSpec(pipe=toy_pipe, references=tmp_path, **({"pairs": 2, "steps": 2} | kwargs)))
    assert message in str(err.value)


@pytest.mark.parametrize("budget", [5, -1, float("nan")])
def test_reset_refuses_a_budget_outside_zero_to_one(budget, toy_pipe, tmp_path):
    from cachepilot.envs import CacheEnv, RunSpec

    env = CacheEnv(RunSpec(pipe=toy_pipe, pairs=2, steps=2, references=tmp_path))
    with pytest.raises(InvalidInputError, match="budget must be (> 0 and <= 1|a finite number)"):
        env.reset(seed=0, options={"budget": budget})


def test_step_refuses_an_action_that_is_not_a_whole_index(toy_pipe, tmp_path):
    from cachepilot.envs import CacheEnv, RunSpec

    env = CacheEnv(RunSpec(pipe=toy_pipe, pairs=1, steps=2, references=tmp_path))
    env.reset(seed=0)
    with pytest.raises(InvalidInputError, match="action must be a whole number, got 1.7"):
        env.step(1.7)
    with pytest.raises(InvalidInputError, match=r"action must be >= 0 and <= 12, got 13"):
        env.step(13)
    env.close()


# ---- the command line: inputs named on it that cannot be used ---------------------------------------
GENERATE = ["generate", "--prompt", PROMPT]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), ("", "holds no prompts"), ("\n  \n", "holds no prompts"), ("folder", "is a folder"),
    (b"\xff\xfe\x00", "cannot be read as UTF-8 text"),
])
def test_a_prompts_file_that_cannot_be_used_is_one_line(content, message, capsys, tmp_path):
    path = tmp_path / "prompts.txt"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    for argv in (["train", "--out", str(tmp_path / "p")], ["ablate", "--out", str(tmp_path / "a")],
                 ["calibrate", "--out", str(tmp_path / "c.json")], ["references", "build", "--root", str(tmp_path / "r")]):
        err = _one_line_error([*argv, "--prompts-file", str(path)], capsys)
        assert f"--prompts-file {path}" in err and message in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "a").exists()


@pytest.mark.parametrize("device, message", [
    ("bogus", "device 'bogus' is not a torch device"), ("cuda:7x", "is not a torch device"),
    ("cuda", "this machine has no cuda device"), ("mps", "this machine has no mps device"),
])
def test_a_device_this_machine_does_not_have_is_one_line(device, message, capsys, tmp_path):
    if torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has CUDA")
    err = _one_line_error([*GENERATE, "--out", str(tmp_path / "x.gif"), "--device", device], capsys)
    assert message in err
    from cachepilot.models.registry import ModelSource

    with pytest.raises(InvalidInputError, match=message):
        ModelSource("toy-wan", device=device)


@pytest.mark.parametrize("extra, message", [
    (["--height", "7", "--width", "9"], "height 7 does not suit this model: video sizes must be multiples of 2"),
    (["--width", "15"], "width 15 does not suit this model"),
    (["--height", "512"], "the video's height spans 256 patches; this model's rotary embedding covers at most 64"),
    (["--num-frames", "100000"], "the video's frames spans 100000 patches"),
    (["--steps", str(10**12)], "steps must be <= 1000 for this model"),
    (["--scale", str(10**6)], "a video file takes at most 65535"),
    (["--scale", "4000"], "GiB video; this machine has"),
])
def test_sizes_and_counts_the_model_cannot_take_are_refused_before_any_allocation(extra, message, capsys, tmp_path,
                                                                                   monkeypatch):
    from cachepilot.models import stepping
    from cachepilot.models.toy_wan import ToyWanPipeline

    monkeypatch.setattr(stepping.Stepper, "prepare", lambda *a, **k: pytest.fail("a generation was prepared"))
    monkeypatch.setattr(ToyWanPipeline, "prepare_latents", lambda *a, **k: pytest.fail("latents were allocated"))
    err = _one_line_error([*GENERATE, "--out", str(tmp_path / "x.gif"), *extra], capsys)
    assert message in err


def test_counts_are_bounded_in_the_python_api_too(toy_pipe):
    from cachepilot.infer.generate import generate_video
    from cachepilot.models.stepping import generate_batch

    with pytest.raises(InvalidInputError, match="steps must be <= 1000"):
        generate_video(toy_pipe, PROMPT, steps=10**9)
    with pytest.raises(InvalidInputError, match="steps must be <= 1000"):
        generate_batch(toy_pipe, [PROMPT], [0], 10**9, 5.0)
    with pytest.raises(InvalidInputError, match="height 7 does not suit"):
        generate_video(toy_pipe, PROMPT, steps=2, height=7)


@pytest.mark.parametrize("argv", [
    ["references", "build", "--root", "{file}"], ["ablate", "--out", "{file}"], ["train", "--out", "{file}/policy"],
    ["train", "--run-dir", "{file}"], ["train", "--references", "{file}"], ["train-model", "toy-wan", "--out", "{file}"],
    ["calibrate", "--out", "{folder}"],
])
def test_a_folder_argument_naming_a_file_is_one_line(argv, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    argv = [a.format(file=tmp_path / "file", folder=tmp_path) for a in argv]
    err = _one_line_error(argv, capsys)
    assert "is a file" in err or "is a folder" in err


def test_a_model_folder_whose_index_names_nothing_is_one_line(capsys, tmp_path, toy_copy):
    folder = shutil.copytree(toy_copy, tmp_path / "wan")
    (folder / "checksums.json").unlink()
    (folder / "model_index.json").write_text("{}")
    err = _one_line_error([*GENERATE, "--out", str(tmp_path / "x.gif"), "--model", "wan2.1-t2v-1.3b", "--model-path",
                           str(folder)], capsys)
    assert "names no pipeline class or no components" in err


def test_check_model_refuses_an_unwritable_json_before_the_check(capsys, monkeypatch):
    from cachepilot.models.toy_wan import checker

    monkeypatch.setattr(checker, "evaluate", lambda *a, **k: pytest.fail("the check ran first"))
    err = _one_line_error(["check-model", "toy-wan", "--pairs", "1", "--steps", "2", "--json", "/proc/verdicts.json"],
                          capsys)
    assert "cannot write to /proc/verdicts.json" in err


@pytest.mark.slow
def test_check_model_never_writes_a_shipped_card_nor_a_weaker_record(capsys, monkeypatch, toy_copy):
    from cachepilot.models.card import read_card
    from cachepilot.models.toy_wan import checker

    shipped_card = (embedded_path("toy-wan") / "card.json").read_text()
    monkeypatch.setattr(checker, "evaluate", lambda *a, **k: pytest.fail("the check ran first"))
    for argv in (["check-model", "toy-wan", "--update-card"],
                 ["check-model", "toy-wan", "--model-path", str(embedded_path("toy-wan")), "--update-card", "--force"]):
        assert "ships with cachepilot and its card is not written" in _one_line_error(argv, capsys)
    assert (embedded_path("toy-wan") / "card.json").read_text() == shipped_card
    weaker = ["check-model", "toy-wan", "--model-path", str(toy_copy), "--pairs", "1", "--steps", "4", "--update-card"]
    err = _one_line_error(weaker, capsys)
    assert "records a check on more (videos 1 < 64, steps 4 < 50); pass --force" in err
    assert read_card(toy_copy)["quality"]["videos"] == 64
    monkeypatch.undo()
    assert main([*weaker, "--force"]) == 0
    assert read_card(toy_copy)["quality"]["videos"] == 1 and read_card(toy_copy)["quality"]["steps"] == 4


@pytest.mark.parametrize("algo, flag", [
    ("distill", ["--init-from", str(SHIPPED_POLICY)]), ("distill", ["--timesteps", "100"]), ("distill", ["--fresh"]),
    ("ppo", ["--epochs", "3"]), ("ppo", ["--rounds", "1"]), ("ppo", ["--relabel", "reached"]),
    ("ppo", ["--searched-budgets", "none"]), ("ppo", ["--val-every", "2"]), ("ppo", ["--patience", "0"]),
    ("distill", ["--env-group", "2"]),
])
def test_train_refuses_the_flags_of_the_other_algorithm(algo, flag, capsys, tmp_path):
    err = _one_line_error(["train", "--algo", algo, *flag, "--out", str(tmp_path / "p")], capsys)
    assert f"{flag[0]} applies to --algo {'ppo' if algo == 'distill' else 'distill'}, not {algo}" in err
    assert not list(tmp_path.iterdir())


def test_training_refuses_budgets_its_step_count_cannot_keep(capsys, tmp_path):
    err = _one_line_error(["train", "--steps", "4", "--budgets", "0.15,0.5", "--out", str(tmp_path / "p")], capsys)
    assert "budgets 0.15 cannot be kept in 4-step generations: their first step computes in full, 0.25" in err
    assert not list(tmp_path.iterdir())  # no run folder left behind


def test_a_refused_run_leaves_no_folders_behind(capsys, tmp_path):
    _one_line_error(["train", "--algo", "ppo", "--init-from", str(SINGLE_SETTING_POLICY), "--steps", "10", "--out",
                     str(tmp_path / "policy"), "--references", str(tmp_path / "refs")], capsys)
    assert not (tmp_path / "policy.run").exists() and not (tmp_path / "policy").exists()
    _one_line_error(["ablate", "--methods", "static,nonsense", "--pairs", "1", "--steps", "2", "--out",
                     str(tmp_path / "ablation")], capsys)
    assert not (tmp_path / "ablation").exists()


# ---- policies at settings they were not trained for ----------------------------------------------------
def _policy_for(tmp_path, **card_changes):
    from dataclasses import replace

    from cachepilot.policies.policy_file import save_policy

    bundle = load_policy(SHIPPED_POLICY)
    ranges = {"steps_range": None} if "steps" in card_changes else {}  # the new setting alone, unless given
    ranges |= {"guidance_range": None} if "guidance" in card_changes else {}
    return load_policy(save_policy(tmp_path / "policy", bundle.net, replace(bundle.card, **(ranges | card_changes))))


def test_a_budget_under_what_the_step_count_allows_is_refused(tmp_path, toy_pipe):
    bundle = _policy_for(tmp_path, steps=4)
    with pytest.raises(InvalidInputError, match="budget 0.15 cannot be kept in a 4-step generation: its first step "
                                                "computes in full, 0.25 of the compute"):
        bundle.policy(0.15)
    with pytest.raises(InvalidInputError, match="cannot be kept in a 4-step generation"):
        apply_cache(toy_pipe, bundle, budget=0.2)
    bundle.policy(0.25)


def test_a_policy_refuses_a_guidance_it_was_not_trained_at(toy_pipe, capsys, tmp_path):
    err = _one_line_error([*GENERATE, "--out", str(tmp_path / "x.gif"), "--cache", "learned", "--guidance", "9"], capsys)
    assert "this policy was trained at guidance 2-8 and this generation runs at 9" in err
    apply_cache(toy_pipe, load_policy(SINGLE_SETTING_POLICY), budget=0.35)
    try:
        with pytest.raises(InvalidInputError, match="trained at guidance 5 and this generation runs at 7"):
            toy_pipe(PROMPT, num_inference_steps=50, guidance_scale=7.0, generator=torch.Generator().manual_seed(0))
    finally:
        remove_cache(toy_pipe)


def test_a_bare_transformer_must_say_its_guidance(toy_pipe):
    apply_cache(toy_pipe.transformer, load_policy(SHIPPED_POLICY), budget=0.35, num_inference_steps=50)
    try:
        with pytest.raises(InvalidInputError, match="pass guidance_scale to apply_cache"):
            toy_pipe(PROMPT, num_inference_steps=50, generator=torch.Generator().manual_seed(0))
    finally:
        remove_cache(toy_pipe.transformer)


@pytest.mark.parametrize("edit, message", [
    (lambda card: card["observation"]["features"][0].__setitem__("scale", 0), "scale must be > 0, got 0"),
    (lambda card: card["observation"]["features"][0].__setitem__("center", "x"), "center must be a finite number"),
    (lambda card: card.__setitem__("actions", card["actions"][1:] + card["actions"][:1]),
     "the action set must start with FULL"),
    (lambda card: card["actions"].append(card["actions"][1]), "names an action twice"),
    (lambda card: card["actions"].__setitem__(3, "BLOCK_99"), "BLOCK_99 do not fit a model of 6 blocks"),
    (lambda card: card.__setitem__("training", []), "training must be a JSON object"),
])
def test_a_resigned_card_is_checked_for_what_it_says(edit, message, tmp_path):
    from cachepilot.integrity import seal

    folder = shutil.copytree(SHIPPED_POLICY, tmp_path / "policy")
    card = json.loads((folder / "policy.json").read_text())
    card.pop("checksum")
    edit(card)
    (folder / "policy.json").write_text(json.dumps(seal(card)))
    with pytest.raises(PolicyFileError, match=message):
        load_policy(folder)


def test_ablate_refuses_a_named_policy_it_cannot_use(capsys, tmp_path):
    folder = shutil.copytree(SHIPPED_POLICY, tmp_path / "policy-broken")
    (folder / "policy.safetensors").write_bytes(b"damaged")
    err = _one_line_error(["ablate", "--methods", "learned", "--policies", str(folder), "--pairs", "1", "--steps", "50",
                           "--out", str(tmp_path / "ablation")], capsys)
    assert f"policy {folder} cannot be ablated" in err and "does not match the checksum" in err
    err = _one_line_error(["ablate", "--methods", "learned", "--pairs", "1", "--steps", "120", "--out",
                           str(tmp_path / "ablation")], capsys)
    assert "learned cannot run on this model: no policy beside the weights fits" in err


# ---- the Python API ---------------------------------------------------------------------------------
def test_the_api_names_the_argument_in_its_own_error_types(toy_pipe, tmp_path):
    from cachepilot.envs import BatchedCacheEnv, CacheEnv, EpisodeConfig, RunSpec
    from cachepilot.policies.schedule import FixedSchedule
    from cachepilot.runtime import Action

    with pytest.raises(InvalidInputError, match="num_envs must be >= 1, got 0"):
        BatchedCacheEnv(RunSpec(pipe=toy_pipe, references=tmp_path), num_envs=0)
    with pytest.raises(InvalidInputError, match="budget must be a fraction of full compute or a list of them, got '0.3'"):
        RunSpec(pipe=toy_pipe, pairs=1, steps=2, budgets="0.3", references=tmp_path)
    with pytest.raises(InvalidInputError, match="budget must be a number, got '0.35'"):
        apply_cache(toy_pipe, load_policy(SHIPPED_POLICY), budget="0.35")
    with pytest.raises(InvalidInputError, match="unknown split 'bogus'; choose one of train, val, test"):
        CacheEnv(RunSpec(pipe=toy_pipe, prompts="bogus", pairs=1, steps=2, references=tmp_path))
    with pytest.raises(InvalidInputError, match="block_ks: BLOCK_99 out of range for a model with 6 blocks"):
        CacheEnv(RunSpec(pipe=toy_pipe, pairs=1, steps=2, references=tmp_path), EpisodeConfig(block_ks=(99,)))
    with pytest.raises(InvalidInputError, match="BLOCK_99 out of range for WanTransformer3DModel with 6 blocks"):
        apply_cache(toy_pipe, FixedSchedule([Action.parse("FULL"), Action.parse("BLOCK_99")]))
    with pytest.raises(InvalidInputError, match="an action is named by a string"):
        Action.parse(3)


def test_apply_cache_takes_a_policy_folder_given_as_a_string(toy_pipe):
    runtime = apply_cache(toy_pipe, str(SHIPPED_POLICY), budget=0.35)
    remove_cache(toy_pipe)
    assert runtime.policy.name == "learned"
    with pytest.raises(CachepilotError, match="unknown cache method 'no-such-method': neither a baseline .* nor a policy folder"):
        apply_cache(toy_pipe, "no-such-method")


# ---- what users notice ------------------------------------------------------------------------------
def test_videos_get_the_permissions_of_every_other_file(tmp_path):
    import os
    import stat

    import numpy as np

    from cachepilot.video import save_video

    old = os.umask(0o022)
    try:
        for name in ("clip.gif", "clip.mp4"):
            save_video(np.zeros((2, 4, 4, 3)), tmp_path / name, scale=2)
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)


def test_a_policy_runs_inside_its_trained_ranges_and_outside_them_only_when_asked(toy_pipe, tmp_path):
    from cachepilot.policies.trained_range import ExtrapolationWarning
    from cachepilot.runtime import Signals

    bundle = _policy_for(tmp_path, steps_range=(10, 60), guidance_range=(3.0, 6.0))
    bundle.check_pipeline(toy_pipe, 20, 4.0)
    bundle.policy(0.35).check_generation(Signals(0, 20, "cond", 0, guidance=4.0))
    with pytest.raises(PolicyFileError, match="trained for 10-60-step generations and this one has 70 steps"):
        bundle.check_pipeline(toy_pipe, 70)
    with pytest.raises(InvalidInputError, match="trained at guidance 3-6 and this generation runs at 7; run it inside "
                                                "what it was trained for, .* or pass extrapolate=True"):
        bundle.policy(0.35).check_generation(Signals(0, 20, "cond", 0, guidance=7.0))
    bundle.check_pipeline(toy_pipe, 70, extrapolate=True)
    with pytest.warns(ExtrapolationWarning, match="70 steps: extrapolating, as asked"):
        bundle.policy(0.35, extrapolate=True).check_generation(Signals(0, 70, "cond", 0, guidance=4.0))
    with pytest.raises(InvalidInputError, match="steps range \\[60, 10\\] is empty"):
        _policy_for(tmp_path / "bad", steps_range=(60, 10))


def test_a_card_written_before_ranges_keeps_its_one_setting_as_its_range():
    from cachepilot.policies.policy_file import PolicyCard

    data = json.loads((SHIPPED_POLICY / "policy.json").read_text())
    for key in ("steps_range", "guidance_range"):
        data.pop(key, None)
    card = PolicyCard.from_dict(data)
    assert card.steps_range == (50, 50) and card.guidance_range == (5.0, 5.0)


def test_the_shipped_policy_runs_across_its_trained_settings(tmp_path):
    card = load_policy(SHIPPED_POLICY).card
    assert card.steps_range == (10, 100) and card.guidance_range == (2.0, 8.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the ranges: no extrapolation warning
        assert main([*GENERATE, "--out", str(tmp_path / "x.gif"), "--cache", "learned", "--steps", "20",
                     "--guidance", "6"]) == 0


def test_generate_extrapolates_only_when_asked(tmp_path, capsys):
    argv = [*GENERATE, "--out", str(tmp_path / "x.gif"), "--cache", "learned", "--steps", "120"]
    assert "trained for 10-100-step generations and this one has 120 steps" in _one_line_error(argv, capsys)
    with pytest.warns(UserWarning, match="extrapolating, as asked"):
        assert main([*argv, "--extrapolate"]) == 0
    assert (tmp_path / "x.gif").is_file()
