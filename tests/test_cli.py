import pytest
"""`cachepilot` end to end on toy-wan, and its one-line errors for bad input."""

import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio

from cachepilot.cli import main

PROMPT = "a blue square moving down slowly on a gradient background"


def test_models_lists_toy_wan_with_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "toy-wan" in out and "present" in out and "wan2.1-t2v-1.3b" in out


@pytest.mark.slow
def test_readme_generate_with_the_shipped_policy_runs_from_any_directory(tmp_path):
    """The README's command, by the installed executable, in a folder that is not the repository: the shipped
    policy is found beside the model's weights, not in the working directory."""
    exe = Path(sys.executable).with_name("cachepilot")
    proc = subprocess.run([str(exe), "generate", "--model", "toy-wan", "--prompt", PROMPT, "--steps", "50",
                           "--guidance", "5", "--seed", "0", "--cache", "learned", "--budget", "0.35", "--out", "clip.gif"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cache summary (learned): computed 34.0% of full compute" in proc.stdout
    frames = iio.imread(tmp_path / "clip.gif", index=None)
    assert frames.shape[0] == 8 and frames.shape[1:3] == (128, 128)


def test_commands_write_under_runs_and_never_replace_a_shipped_artefact(tmp_path, monkeypatch, capsys):
    from cachepilot.models.registry import embedded_path

    shipped = embedded_path("toy-wan")
    for argv in (["train", "--out", str(shipped / "policy-distill")], ["calibrate", "--out", str(shipped / "calibration.json")],
                 ["train-model", "toy-wan", "--export-only", "--out", str(shipped)]):
        err = _error(argv, capsys)
        assert "is a shipped artefact" in err and "--force" in err, argv
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--prompts", "2", "--steps", "6"]) == 0
    assert "wrote runs/toy-wan/calibration.json" in capsys.readouterr().out
    assert (tmp_path / "runs" / "toy-wan" / "calibration.json").is_file()


def test_generate_mp4_and_scale(tmp_path):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", PROMPT, "--steps", "3", "--out", str(out), "--scale", "4"]) == 0
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 8 and frames.shape[1:3] == (64, 64)


def _error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("cachepilot: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_unknown_model(capsys, tmp_path):
    err = _error(["generate", "--model", "wan9", "--prompt", PROMPT, "--out", str(tmp_path / "a.gif")], capsys)
    assert "unknown model 'wan9'" in err and "toy-wan" in err


def test_unknown_words_are_named(capsys, tmp_path):
    err = _error(["generate", "--prompt", "a purple circle moving sideways", "--out", str(tmp_path / "a.gif")], capsys)
    assert "'purple', 'sideways'" in err


def test_unwritable_output(capsys, tmp_path):
    err = _error(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "missing" / "a.gif")], capsys)
    assert "does not exist" in err
    err = _error(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "a.png")], capsys)
    assert ".gif or .mp4" in err
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        err = _error(["generate", "--prompt", PROMPT, "--out", str(locked / "a.gif")], capsys)
        assert "permission denied" in err


def test_missing_weights_folder(capsys, tmp_path):
    err = _error(["generate", "--model", "wan2.1-t2v-1.3b", "--prompt", "x", "--out", str(tmp_path / "a.gif")], capsys)
    assert "--model-path" in err
    err = _error(["generate", "--model", "toy-wan", "--model-path", str(tmp_path / "nowhere"), "--prompt", PROMPT,
                  "--out", str(tmp_path / "a.gif")], capsys)
    assert "not found" in err


def test_truncated_weights_are_caught_by_checksum(capsys, toy_copy, tmp_path):
    weights = toy_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000])
    err = _error(["generate", "--model-path", str(toy_copy), "--prompt", PROMPT, "--out", str(tmp_path / "a.gif")], capsys)
    assert "corrupted" in err and "diffusion_pytorch_model.safetensors" in err
    assert not (tmp_path / "a.gif").exists()


def test_a_toy_wan_folder_without_its_manifest_is_refused(capsys, toy_copy, tmp_path):
    (toy_copy / "checksums.json").unlink()
    err = _error(["generate", "--model-path", str(toy_copy), "--prompt", PROMPT, "--out", str(tmp_path / "a.gif")], capsys)
    assert "has no checksums.json, so it cannot be verified" in err


def test_missing_model_index(capsys, toy_copy, tmp_path):
    (toy_copy / "model_index.json").unlink()
    err = _error(["generate", "--model-path", str(toy_copy), "--prompt", PROMPT, "--out", str(tmp_path / "a.gif")], capsys)
    assert "model_index.json" in err


def test_existing_output_is_kept_when_generation_fails(capsys, tmp_path):
    out = tmp_path / "keep.gif"
    out.write_bytes(b"old")
    _error(["generate", "--prompt", "a purple thing", "--out", str(out)], capsys)
    assert out.read_bytes() == b"old"


def test_generate_with_a_cache_method_prints_its_summary(capsys, tmp_path):
    assert main(["generate", "--prompt", PROMPT, "--steps", "6", "--cache", "static", "--knob", "3",
                 "--out", str(tmp_path / "c.gif")]) == 0
    out = capsys.readouterr().out
    assert "cache summary (static): computed" in out and "F s s F s s" in out


def test_unknown_cache_method_and_missing_calibration(capsys, tmp_path):
    err = _error(["generate", "--prompt", PROMPT, "--cache", "fastcache", "--out", str(tmp_path / "c.gif")], capsys)
    assert "unknown cache method 'fastcache'" in err
