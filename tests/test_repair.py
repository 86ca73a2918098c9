"""State that repairs itself: damaged files are reported in one line, set aside and computed again; runs killed at
a random point (SIGKILL) finish, when rerun, with the result of an uninterrupted run; shared files stay readable."""

import csv
import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cachepilot.envs.references import ReferenceStore
from cachepilot.infer.ablation import AblationConfig, ablate
from cachepilot.io import atomic_directory, atomic_write_text
from cachepilot.models.toy_wan.scenes import load_split

EXE = Path(sys.executable).with_name("cachepilot")
PROMPT = "a red square moving left quickly on a plain background"


def _kill_at_a_random_point(argv, begun, seed: int, cwd: Path) -> None:
    """Start the command, wait until `begun()` says its work is under way, wait a random moment more, SIGKILL it.
    The commands below run for several seconds after that, so the kill lands in the middle of their work."""
    proc = subprocess.Popen([str(EXE), *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not begun() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _run(argv, cwd: Path) -> None:
    proc = subprocess.run([str(EXE), *argv], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---- the reference store ------------------------------------------------------------------------------
@pytest.fixture
def store(toy_pipe, tmp_path):
    return ReferenceStore(toy_pipe, "toy-wan", steps=3, guidance=5.0, root=tmp_path / "refs")


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],
    lambda text: json.dumps(list(json.loads(text).values())),
    lambda text: json.dumps({k: {f: v for f, v in e.items() if f != "sha256"} for k, e in json.loads(text).items()}),
])
def test_a_damaged_index_is_rebuilt_from_its_entries_without_recomputing(damage, store, monkeypatch):
    refs = store.get_many([(PROMPT, 0), (PROMPT, 1)], progress=False)
    intact = json.loads(store.index_path.read_text())
    store.index_path.write_text(damage(store.index_path.read_text()))
    monkeypatch.setattr(store, "_build", lambda *a: pytest.fail("recomputed an entry whose file was intact"))
    with pytest.warns(UserWarning, match="was damaged; rebuilt it from the 2 intact entries"):
        again = store.get_many([(PROMPT, 0), (PROMPT, 1)], progress=False)
    assert all((a.output == r.output).all() for a, r in zip(again, refs))
    assert json.loads(store.index_path.read_text()) == intact


@pytest.mark.slow
def test_a_reference_build_killed_midway_finishes_as_an_uninterrupted_one(toy_pipe, tmp_path):
    pairs = [(p, i) for i, p in enumerate(load_split("train")[:4])]
    ReferenceStore(toy_pipe, "toy-wan", steps=3, guidance=5.0, root=tmp_path / "whole").get_many(pairs, batch_size=1,
                                                                                                 progress=False)
    root = tmp_path / "killed"
    argv = ["references", "build", "--pairs", "4", "--steps", "3", "--batch-size", "1", "--root", str(root)]
    _kill_at_a_random_point(argv, lambda: (root / "index.json").exists(), seed=1, cwd=tmp_path)
    assert len(json.loads((root / "index.json").read_text())) < 4  # it was stopped midway
    _run(argv, cwd=tmp_path)
    whole, rerun = (json.loads((tmp_path / r / "index.json").read_text()) for r in ("whole", "killed"))
    assert {k: e["sha256"] for k, e in rerun.items()} == {k: e["sha256"] for k, e in whole.items()}


# ---- the ablation ---------------------------------------------------------------------------------
def _scores(out: Path) -> list[tuple]:
    with open(out / "results.csv") as f:
        return sorted((r["method"], r["knob"], r["seed"], r["psnr"], r["ssim"], r["computed_fraction"])
                      for r in csv.DictReader(f))


def test_a_damaged_ablation_run_is_set_aside_and_computed_again(tmp_path):
    config = AblationConfig.quick(methods="static,teacache", pairs=1, steps=3)
    ablate(config, tmp_path, log=lambda m: None, progress=False)
    before = _scores(tmp_path)
    run_file = next(tmp_path.glob("runs/*/static@2.json"))
    run_file.write_text(run_file.read_text()[:20])
    said = []
    ablate(config, tmp_path, log=said.append, progress=False)
    (line,) = [m for m in said if " is damaged " in m]
    assert line.startswith("static@2.json is damaged (JSONDecodeError: ") and "\n" not in line
    assert line.endswith("set aside as static@2.json.damaged, static@2.frames.npz.damaged, computing it again")
    assert run_file.with_name("static@2.json.damaged").is_file() and run_file.is_file()
    assert _scores(tmp_path) == before


@pytest.mark.slow
def test_an_ablation_killed_midway_finishes_as_an_uninterrupted_one(tmp_path):
    methods = "static,first-block,dbcache"  # 14 runs
    ablate(AblationConfig(methods=methods, pairs=2, steps=6), tmp_path / "whole", log=lambda m: None, progress=False)
    out = tmp_path / "killed"
    argv = ["ablate", "--methods", methods, "--pairs", "2", "--steps", "6", "--out", str(out)]
    _kill_at_a_random_point(argv, lambda: any(out.glob("runs/*/*@*.json")), seed=2, cwd=tmp_path)
    assert not (out / "results.csv").exists()  # it was stopped midway
    _run(argv, cwd=tmp_path)
    assert _scores(out) == _scores(tmp_path / "whole")


# ---- PPO ----------------------------------------------------------------------------------------------
PPO = ["--algo", "ppo", "--steps", "3", "--train-steps", "3", "--train-guidance", "5", "--pairs", "2", "--val-pairs", "1", "--num-envs", "2", "--timesteps", "30",
       "--budgets", "0.4,0.6"]


def _weights(policy: Path) -> str:
    return hashlib.sha256((policy / "policy.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_ppo_killed_midway_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    refs = str(tmp_path / "refs")
    _run(["train", *PPO, "--out", str(tmp_path / "whole"), "--references", refs], cwd=tmp_path)
    out = tmp_path / "killed"
    argv = ["train", *PPO, "--out", str(out), "--references", refs]
    _kill_at_a_random_point(argv, lambda: (tmp_path / "killed.run" / "ppo_resume.json").exists(), seed=3, cwd=tmp_path)
    assert not out.exists()  # it was stopped midway
    _run(argv, cwd=tmp_path)
    assert _weights(out) == _weights(tmp_path / "whole")


def test_a_damaged_ppo_checkpoint_is_set_aside_and_training_starts_over(tmp_path, capsys):
    from cachepilot.cli import main

    run_dir = tmp_path / "policy.run"
    run_dir.mkdir()
    (run_dir / "ppo_resume.json").write_bytes(b"\x00 half a checkpoint")
    assert main(["train", *PPO, "--timesteps", "6", "--out", str(tmp_path / "policy"),
                 "--references", str(tmp_path / "refs")]) == 0
    assert "ppo_resume.json is damaged" in capsys.readouterr().out
    assert (run_dir / "ppo_resume.json.damaged").read_bytes() == b"\x00 half a checkpoint"


# ---- permissions ----------------------------------------------------------------------------------
def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.json", "{}")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "inside.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755


def test_a_file_a_run_resumes_from_is_read_or_set_aside(tmp_path):
    """The one rule behind every resume: a readable file is used, a damaged one is set aside with one line."""
    import numpy as np

    from cachepilot.errors import CachepilotError
    from cachepilot.evaluation.oracle import stored_gain
    from cachepilot.io import atomic_write_npz, read_or_set_aside

    said = []
    assert read_or_set_aside(tmp_path / "missing.npz", np.load, said.append) is None and said == []
    path = tmp_path / "oracle_gain.npz"
    atomic_write_npz(path, gain=np.ones(3), model_hash=np.array("abc"), steps=np.array(2), guidance=np.array(5.0))
    assert stored_gain(path, "abc", 2, 5.0, said.append).tolist() == [1, 1, 1]
    path.write_bytes(path.read_bytes()[:50])
    assert stored_gain(path, "abc", 2, 5.0, said.append) is None
    assert len(said) == 1 and said[0].startswith("oracle_gain.npz is damaged (") and "\n" not in said[0]
    assert (tmp_path / "oracle_gain.npz.damaged").is_file() and not path.exists()

    def refuse(p):
        raise CachepilotError("whole, but made for something else")

    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CachepilotError, match="made for something else"):
        read_or_set_aside(tmp_path / "other.json", refuse, said.append)
    assert (tmp_path / "other.json").is_file()  # not damaged: left where it is


def test_a_ppo_rerun_with_other_settings_is_refused_and_fresh_starts_over(tmp_path, capsys):
    from cachepilot.cli import main

    refs = str(tmp_path / "refs")
    argv = ["train", *PPO, "--timesteps", "6", "--out", str(tmp_path / "policy"), "--references", refs]
    assert main(argv) == 0
    card = (tmp_path / "policy" / "policy.json").read_text()
    capsys.readouterr()
    for changed, message in ((["--budgets", "0.5,0.6"], "made with --budgets 0.4,0.6, not 0.5,0.6"),
                             (["--seed", "1"], "made with --seed 0, not 1"),
                             (["--guidance", "3"], "made with --guidance 5, not 3"),
                             (["--pairs", "1"], "made with other --pairs / --prompts-file"),
                             (["--timesteps", "3"], "already trained for 6 steps, more than --timesteps 3")):
        assert main([*argv, *changed]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "pass --fresh to start over" in err and "\n" not in err, changed
    assert (tmp_path / "policy" / "policy.json").read_text() == card  # the refused reruns exported nothing
    assert main([*argv, "--budgets", "0.5,0.6", "--fresh"]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert json.loads((tmp_path / "policy" / "policy.json").read_text())["budget_range"] == [0.5, 0.6]


def test_a_stored_ablation_run_that_is_not_finite_is_set_aside_and_computed_again(tmp_path):
    config = AblationConfig.quick(methods="static", pairs=1, steps=3)
    ablate(config, tmp_path, log=lambda m: None, progress=False)
    before = _scores(tmp_path)
    run_file = next(tmp_path.glob("runs/*/static@2.json"))
    run_file.write_text(_with_nan_psnr(run_file.read_text()))
    said = []
    ablate(config, tmp_path, log=said.append, progress=False)
    assert any(m.startswith("static@2.json is damaged (ValueError: its psnr holds a value that is not a finite number)")
               for m in said), said
    assert _scores(tmp_path) == before


def _with_nan_psnr(text: str) -> str:
    data = json.loads(text)
    data["psnr"][0] = float("nan")
    return json.dumps(data)


@pytest.mark.slow
def test_the_main_job_prints_nothing_a_user_cannot_act_on(tmp_path):
    """Lightning's advert for its cloud logger and a deprecation inside Lightning stay out of the output."""
    proc = subprocess.run([str(EXE), "train", "--algo", "distill", "--steps", "4", "--pairs", "2", "--val-pairs", "1",
                           "--epochs", "1", "--rounds", "0", "--searched-budgets", "none", "--budgets", "0.3,0.6",
                           "--out", str(tmp_path / "policy"), "--references", str(tmp_path / "refs")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "policy saved to" in output
    assert "litlogger" not in output and "LeafSpec" not in output and "deprecated" not in output.lower()
