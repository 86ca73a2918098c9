"""Every command on local model folders of every family, as a user with real weights runs them: tiny random
pipelines saved with `save_pretrained` and loaded back from disk (local files only), offline tokenizers included."""

import json

import pytest

from cachepilot.cli import main
from tiny_pipelines import CALL_OPTIONS, PROMPTS, write_folder

MODELS = {"wan": "wan2.1-t2v-1.3b", "wan2.2": "wan2.2-t2v-a14b", "hunyuanvideo": "hunyuanvideo",
          "cogvideox": "cogvideox-5b", "ltx-video": "ltx-video"}
STEPS = "8"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root, {kind: write_folder(kind, root / kind) for kind in MODELS}


def _model_args(kind, folder):
    size = CALL_OPTIONS[kind]
    return ["--model", MODELS[kind], "--model-path", str(folder), "--device", "cpu", "--dtype", "float32",
            "--height", str(size["height"]), "--width", str(size["width"]), "--num-frames", str(size["num_frames"])]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_command_runs_on_a_local_folder(folders, kind, tmp_path, monkeypatch, capsys):
    root, paths = folders
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CACHEPILOT_REFERENCES", str(tmp_path / "references"))
    model = _model_args(kind, paths[kind])
    prompts = ["--prompts-file", str(root / "prompts.txt")]
    assert main(["calibrate", *model, *prompts, "--prompts", "4", "--steps", STEPS]) == 0
    assert main(["references", "build", *model, *prompts, "--pairs", "4", "--steps", STEPS]) == 0
    train = [*model, *prompts, "--pairs", "2", "--val-pairs", "2", "--steps", STEPS, "--num-envs", "2",
             "--budgets", "0.4,0.6", "--train-steps", f"{STEPS},{int(STEPS) + 1}", "--train-guidance", "5"]
    assert main(["train", *train, "--epochs", "2", "--rounds", "0"]) == 0
    policy = tmp_path / "runs" / MODELS[kind] / "policy-distill"
    card = json.loads((policy / "policy.json").read_text())
    assert card["model"] == MODELS[kind] and card["steps_range"] == [int(STEPS), int(STEPS) + 1]
    assert main(["train", *train, "--algo", "ppo", "--timesteps", "16"]) == 0
    assert main(["generate", *model, "--prompt", PROMPTS[0], "--steps", STEPS, "--cache", "learned", "--policy",
                 str(policy), "--budget", "0.5", "--out", str(tmp_path / "video.gif")]) == 0
    assert (tmp_path / "video.gif").stat().st_size > 0
    assert main(["ablate", *model, *prompts, "--quick", "--steps", STEPS, "--budgets", "0.5", "--oracle-budgets", "0.5",
                 "--policies", str(policy), "--out", str(tmp_path / "ablation")]) == 0
    table = (tmp_path / "ablation" / "table.md").read_text()
    assert "| oracle |" in table and "| learned-distill |" in table


@pytest.mark.slow
def test_a_policy_for_one_family_is_refused_by_another(folders, tmp_path, monkeypatch, capsys):
    root, paths = folders
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CACHEPILOT_REFERENCES", str(tmp_path / "references"))
    prompts = ["--prompts-file", str(root / "prompts.txt")]
    for kind in ("wan", "cogvideox"):  # two per-model policies
        assert main(["train", *_model_args(kind, paths[kind]), *prompts, "--pairs", "2", "--val-pairs", "2",
                     "--steps", STEPS, "--num-envs", "2", "--epochs", "1", "--rounds", "0", "--train-steps", STEPS,
                     "--train-guidance", "5"]) == 0
    wan_policy = tmp_path / "runs" / MODELS["wan"] / "policy-distill"
    code = main(["generate", *_model_args("cogvideox", paths["cogvideox"]), "--prompt", PROMPTS[0], "--steps", STEPS,
                 "--cache", "learned", "--policy", str(wan_policy), "--out", str(tmp_path / "v.gif")])
    assert code != 0
    assert "trained for 'wan2.1-t2v-1.3b'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_bfloat16_through_the_stepper_and_the_runtime(folders, kind, tmp_path, monkeypatch):
    root, paths = folders
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CACHEPILOT_REFERENCES", str(tmp_path / "references"))
    model = [a if a != "float32" else "bfloat16" for a in _model_args(kind, paths[kind])]
    prompts = ["--prompts-file", str(root / "prompts.txt")]
    assert main(["references", "build", *model, *prompts, "--pairs", "2", "--steps", STEPS]) == 0
    assert main(["generate", *model, "--prompt", PROMPTS[0], "--steps", STEPS, "--cache", "static",
                 "--out", str(tmp_path / "video.gif")]) == 0
