"""Fuzzing the command line's numeric and path arguments and the policy card's fields: whatever the input, it is
taken, or refused in one line before any compute, never with a traceback."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachepilot.cli import main
from cachepilot.errors import CachepilotError
from cachepilot.models.registry import embedded_path
from cachepilot.runtime import remove_cache

PROMPT = "a red circle moving left quickly on a plain background"
SHIPPED_POLICY = embedded_path("toy-wan") / "policy-distill"


class ComputeStarted(Exception):
    """Raised where a command would start its compute: the input was taken."""


@pytest.fixture(scope="module")
def no_compute(toy_pipe):
    """Every command's compute replaced by ComputeStarted; model loads give the session's pipeline (its options set
    and checked as a real load sets them)."""
    from cachepilot.envs.references import ReferenceStore
    from cachepilot.infer import ablation, generate, plugin
    from cachepilot.models import registry, stepping
    from cachepilot.models.toy_wan import checker
    from cachepilot.train import calibrate, distill, rl, toy_model

    def load(self):
        stepping.set_generation_options(toy_pipe, **dict(self.options))
        return toy_pipe

    def started(*args, **kwargs):
        raise ComputeStarted

    def apply_then_stop(pipe, *args, **kwargs):  # what apply_cache checks, then no generation
        plugin_apply(pipe, *args, **kwargs)
        remove_cache(pipe)
        raise ComputeStarted

    plugin_apply = plugin.apply_cache

    patches = [(registry.ModelSource, "load", load), (plugin, "apply_cache", apply_then_stop), (registry, "load_pipeline", lambda *a, **k: toy_pipe),
               (generate, "generate_video", started), (distill.Distiller, "learn", started),
               (rl.PPOTrainer, "learn", started), (ablation, "ablate", started), (ablation, "ablate_settings", started), (calibrate, "calibrate", started), (ReferenceStore, "get_many", started), (ReferenceStore, "missing", started),
               (checker, "evaluate", started), (toy_model, "train_toy_wan", started),
               (toy_model, "export_toy_wan", started)]
    mp = pytest.MonkeyPatch()
    for owner, name, value in patches:
        mp.setattr(owner, name, value)
    options = stepping.generation_options(toy_pipe)
    yield
    mp.undo()
    stepping.set_generation_options(toy_pipe, **options)


def _taken_or_one_line(argv: list[str]) -> None:
    """Run the command: it reaches its compute, or ends with one line on stderr and status 2."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except ComputeStarted:
            return
        except SystemExit as exit_:
            code = exit_.code
    text = err.getvalue().strip()
    assert code == 2, (argv, text)
    assert text.startswith("cachepilot: error:") and "\n" not in text and "Traceback" not in text, (argv, text)


NUMBERS = st.one_of(st.integers(min_value=-2**70, max_value=2**70).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["0", "1", "7", "9", "1e3", "1e300", "-0", "0x10", "2.5", " 3", "", "nan", "1,2"]),
                    st.text(max_size=8))
COMMANDS = {  # command -> its numeric flags
    ("generate", "--prompt", PROMPT, "--out", "{tmp}/x.gif"): ["--steps", "--guidance", "--seed", "--fps", "--scale",
                                                               "--budget", "--knob", "--height", "--width",
                                                               "--num-frames"],
    ("train", "--out", "{tmp}/p"): ["--steps", "--guidance", "--pairs", "--val-pairs", "--budgets", "--rounds",
                                    "--epochs", "--val-every", "--num-envs", "--seed", "--searched-budgets",
                                    "--height", "--width", "--num-frames", "--train-steps", "--train-guidance"],
    ("train", "--algo", "ppo", "--out", "{tmp}/p"): ["--timesteps", "--budgets", "--num-envs", "--seed"],
    ("ablate", "--out", "{tmp}/a"): ["--pairs", "--steps", "--guidance", "--budgets", "--oracle-budgets",
                                     "--search-rounds", "--height", "--width", "--num-frames"],
    ("calibrate", "--out", "{tmp}/c.json"): ["--prompts", "--steps", "--guidance", "--height", "--width"],
    ("references", "build", "--root", "{tmp}/r"): ["--pairs", "--steps", "--guidance", "--batch-size", "--height",
                                                   "--width", "--num-frames"],
    ("check-model", "toy-wan"): ["--pairs", "--steps", "--guidance"],
    ("train-model", "toy-wan", "--run-dir", "{tmp}/run"): ["--max-steps", "--batch-size", "--lr", "--seed",
                                                           "--two-objects"],
}
CASES = [(command, flag) for command, flags in COMMANDS.items() for flag in flags]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CASES), value=NUMBERS)
def test_numeric_arguments_are_taken_or_refused_in_one_line(case, value, no_compute, tmp_path):
    command, flag = case
    _taken_or_one_line([part.replace("{tmp}", str(tmp_path)) for part in command] + [flag, value])


PATHS = st.one_of(st.sampled_from(["{tmp}/file", "{tmp}/file/below", "{tmp}", "{tmp}/new/deep/x", "/proc/x",
                                   "/proc/x/y", "", ".", "/", "{tmp}/empty.txt", "{tmp}/bad.json", "{tmp}/policy",
                                   "{tmp}/x.gif", "/dev/null", "{tmp}/a\nb"]),
                  st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=12).map(lambda t: "{tmp}/" + t))
GENERATE = ["generate", "--prompt", PROMPT, "--out", "{tmp}/v.gif"]
PATH_CASES = [  # each argv ends with the flag the fuzzed path is given to
    ["generate", "--prompt", PROMPT, "--out"], [*GENERATE, "--model-path"], [*GENERATE, "--cache", "learned", "--policy"],
    [*GENERATE, "--cache", "teacache", "--calibration"], ["train", "--out"], ["train", "--out", "{tmp}/p", "--run-dir"],
    ["train", "--out", "{tmp}/p", "--references"], ["train", "--out", "{tmp}/p", "--prompts-file"],
    ["train", "--algo", "ppo", "--out", "{tmp}/p", "--init-from"], ["ablate", "--out"],
    ["ablate", "--out", "{tmp}/a", "--policies"], ["ablate", "--out", "{tmp}/a", "--prompts-file"], ["calibrate", "--out"],
    ["references", "build", "--root"], ["check-model", "toy-wan", "--json"], ["check-model", "toy-wan", "--model-path"],
    ["train-model", "toy-wan", "--out"], ["train-model", "toy-wan", "--run-dir"],
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.sampled_from(PATH_CASES), path=PATHS)
def test_path_arguments_are_taken_or_refused_in_one_line(argv, path, no_compute, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paths")
    (tmp / "file").write_text("x")
    (tmp / "empty.txt").write_text("")
    (tmp / "bad.json").write_text("{")
    (tmp / "policy").mkdir()
    _taken_or_one_line([a.replace("{tmp}", str(tmp)) for a in argv] + [path.replace("{tmp}", str(tmp))])


# ---- the policy card ------------------------------------------------------------------------------------
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                   st.text(max_size=10), st.lists(st.integers(-3, 300), max_size=4),
                   st.lists(st.text(max_size=8), max_size=4), st.dictionaries(st.text(max_size=5), st.integers(),
                                                                              max_size=2))
FIELDS = [("schema",), ("kind",), ("model",), ("model_config_hash",), ("actions",), ("actions", 0), ("actions", 3),
          ("num_blocks",), ("budget_range",), ("budget_range", 0), ("budget_range", 1), ("steps",), ("guidance",),
          ("network",), ("network", "hidden"), ("network", "hidden", 0), ("training",), ("results",),
          ("observation",), ("observation", "version"), ("observation", "features"),
          *[("observation", "features", i, key) for i in (0, 10) for key in ("name", "center", "scale", "log",
                                                                               "missing")]]


@pytest.fixture(scope="module")
def decision():
    """The signals of a generation's first two decisions at the shipped policy's settings."""
    from cachepilot.runtime import Signals

    return [Signals(step, 50, "cond", 0, sigma=1.0 - step / 50, timestep=999.0 - step, steps_since_full=step or None,
                    compute_spent=1.0 if step else 0.0, guidance=5.0) for step in (0, 1)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_card_field_loads_a_policy_that_runs_or_is_refused_on_load(field, value, decision, tmp_path_factory):
    """A card re-signed after an edit: either `load_policy` refuses it in one line, or the policy it loads decides
    without an error at any budget of its range (a refusal of the generation's settings is a clean error too)."""
    import numpy as np

    from cachepilot.integrity import seal
    from cachepilot.policies.policy_file import load_policy

    folder = Path(shutil.copytree(SHIPPED_POLICY, tmp_path_factory.mktemp("card") / "policy"))
    card = json.loads((folder / "policy.json").read_text())
    card.pop("checksum")
    target = card
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    try:
        (folder / "policy.json").write_text(json.dumps(seal(card)))
    except ValueError:  # not representable in JSON
        return
    try:
        bundle = load_policy(folder)
    except CachepilotError as err:
        assert "\n" not in str(err)
        return
    lo, hi = bundle.card.budget_range
    for budget in (lo, hi):
        try:
            policy = bundle.policy(budget)
            for signals in decision:
                masks = [np.ones(len(policy.actions), dtype=bool)]
                assert 0 <= policy.choose([signals], masks)[0] < len(policy.actions)
        except CachepilotError as err:
            assert "\n" not in str(err)
