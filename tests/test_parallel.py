"""Phases over several processes (Lightning Fabric, 2 CPU processes on gloo): the same files as one process, and a
re-run after a lost process builds only what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachepilot.parallel import Processes, Shard

CLI = str(Path(sys.executable).parent / "cachepilot")


def test_a_shard_takes_every_world_th_item_and_one_process_takes_all():
    items = list(range(7))
    shards = [Shard(rank, 3).take(items) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]] and sorted(sum(shards, [])) == items
    assert Shard().take(items) == items
    assert Processes().launch(lambda shard, x: (shard.rank, shard.world, x), 5) == (0, 1, 5)  # no Fabric for one


def _build(root: Path, *flags: str) -> str:
    done = subprocess.run([CLI, "references", "build", "--pairs", "4", "--steps", "4", "--batch-size", "2",
                           "--root", str(root), *flags], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _entries(root: Path) -> dict[str, str]:
    return {digest: entry["sha256"] for digest, entry in json.loads((root / "index.json").read_text()).items()}


@pytest.mark.slow
def test_references_built_by_two_processes_are_the_bytes_of_one_and_a_lost_batch_is_rebuilt_alone(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _build(one)
    assert "4 references ready" in _build(two, "--devices", "2", "--strategy", "ddp")
    assert len(_entries(one)) == 4 and _entries(one) == _entries(two)
    # a process lost mid-run: one entry never reached either store; the others stay as they are
    lost = sorted(_entries(two))[0]
    for root in (one, two):
        index = json.loads((root / "index.json").read_text())
        (root / index.pop(lost)["file"]).unlink()
        (root / "index.json").write_text(json.dumps(index))
    kept = {digest: (two / entry["file"]).stat().st_mtime_ns for digest, entry in index.items()}
    assert "(1 built" in _build(two, "--devices", "2", "--strategy", "ddp")
    assert "(1 built" in _build(one)
    assert _entries(two) == _entries(one)  # the lost entry, rebuilt alone, the same bytes as one process rebuilds
    assert {d: (two / e["file"]).stat().st_mtime_ns for d, e in json.loads((two / "index.json").read_text()).items()
            if d != lost} == kept


def _searched(shard: Shard, reference, config) -> dict:
    """One budget's per-pair search and shared search on 4 train pairs at 8 steps, on this process's share of each
    round's rollouts."""
    from cachepilot.envs.spec import RunSpec
    from cachepilot.evaluation.search import forecast_reuses, search, search_shared
    from cachepilot.policies.schedule import full_steps_schedule, uniform_full_steps

    spec = RunSpec("toy-wan", prompts="train", pairs=4, steps=8, guidance=5.0, budgets=(0.4,))
    uniform = full_steps_schedule(8, uniform_full_steps(8, 0.4))
    starts = {"uniform": uniform, "uniform-f1": forecast_reuses(uniform, 1)}
    quiet = lambda *a: None  # noqa: E731
    per_pair = search(spec, 0.4, config, {k: [v] * 4 for k, v in starts.items()}, reference, quiet, shard)
    shared = search_shared(spec, 0.4, config, starts, reference, quiet, shard=shard)
    keep = ("schedules", "schedule", "psnr", "start", "start_psnr", "accepted", "history")
    return {name: {k: v for k, v in r.as_dict().items() if k in keep} for name, r in
            (("search", per_pair), ("shared", shared))}


@pytest.mark.slow
def test_the_search_over_two_processes_finds_what_one_finds():
    """Each process replays its share of every round's rollouts, in batches cut the same way for any number of
    processes; the gathered scores make every process take the same moves, so the schedules, their PSNR and the
    history are one process's, to the bit."""
    from cachepilot.envs.spec import RunSpec
    from cachepilot.evaluation.harness import timed_reference
    from cachepilot.evaluation.search import SearchConfig

    spec = RunSpec("toy-wan", prompts="train", pairs=4, steps=8, guidance=5.0, budgets=(0.4,))
    pairs = spec.pair_list()
    reference, _ = timed_reference(spec.pipeline(), [p for p, _ in pairs], [s for _, s in pairs], 8, 5.0)
    config = SearchConfig(rounds=2, proposals=3, batch=2)  # a frozen dataclass: it reaches the spawned processes
    one = Processes().launch(_searched, reference, config)
    two = Processes(devices=2, strategy="ddp_spawn").launch(_searched, reference, config)
    assert one == two
    assert one["search"]["history"] and one["search"]["psnr"] != one["search"]["start_psnr"]["uniform"]


@pytest.mark.slow
def test_calibration_by_two_processes_is_the_file_of_one(tmp_path):
    """Each process generates its share of the prompts, one per generation as one process does; the record pools
    them in prompt order, so the written file is the same bytes as one process's with as many threads (two processes
    on 2 cores take one each; a statistic's reduction order follows the thread count, in its last bits)."""
    files = []
    for name, flags in (("one", ()), ("two", ("--devices", "2", "--strategy", "ddp"))):
        out = tmp_path / f"{name}.json"
        done = subprocess.run([CLI, "calibrate", "--prompts", "3", "--steps", "6", "--out", str(out), *flags],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("wrote") == 1  # the first process says it, once
        files.append(out.read_bytes())
    assert files[0] == files[1] and json.loads(files[0])["prompts"] == 3


def _distilled(shard: Shard, root: str) -> dict | None:
    """A tiny distillation (two settings, a searched budget, one DAgger round) over this process's share of its
    rollouts, in `root`; the first process returns its policy's weights. One thread, as each of two processes on
    2 cores takes: the observations' signals are reductions whose order follows the thread count, in their last bits."""
    import torch

    from cachepilot.envs.spec import RunSpec
    from cachepilot.train.distill import DistillConfig, Distiller

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = RunSpec(pairs=2, val_pairs=1, steps=6, budgets=(0.35, 0.5), references=f"{root}/refs",
                   settings=((6, 5.0), (8, 5.0)))
    config = DistillConfig(dagger_rounds=1, epochs=2, gain_pairs=1, gain_every=3, max_gap=3, num_envs=1,
                           eval_budgets=(0.5,), student_val_every=2, searched_budgets=(0.35,), search_pairs=2,
                           search_rounds=1, search_proposals=2, search_batch=2, pairs_per_setting=1,
                           setting_search_rounds=1)
    try:
        learned = Distiller(spec, config, f"{root}/distill.run", lambda *a: None, shard).learn()
    finally:
        torch.set_num_threads(threads)  # the test's own process runs the one-process case
    return None if learned is None else {k: v.numpy() for k, v in learned.net.state_dict().items()}


def _run_files(run: Path) -> dict[str, object]:
    """What a distillation's run folder holds that the processes computed: tables, searched schedules, rounds."""
    import numpy as np

    files = {}
    for path in sorted(run.rglob("*")):
        if path.suffix == ".npz":
            with np.load(path) as data:
                files[str(path.relative_to(run))] = {k: data[k].tobytes() for k in data.files}
        elif path.name == "searched_schedules.json":
            budgets = json.loads(path.read_text())["budgets"]
            files[str(path.relative_to(run))] = {b: {k: r[k] for k in ("schedule", "psnr", "start", "history")}
                                                 for b, r in budgets.items()}
    return files


@pytest.mark.slow
def test_distillation_over_two_processes_teaches_what_one_teaches(tmp_path):
    """Segment tables, searched and setting schedules, the oracle's labels (round 0) and the DAgger rollouts of its
    student (round 1) computed by two processes are one process's, to the bit, and so is the policy (the Trainer on
    one device: the first process trains, the other takes its weights)."""
    import numpy as np

    one = Processes().launch(_distilled, str(tmp_path / "one"))
    two = Processes(devices=2, strategy="ddp_spawn").launch(_distilled, str(tmp_path / "two"))
    files = _run_files(tmp_path / "one" / "distill.run")
    assert any(name.startswith("round1") for name in files) and "oracle_tables.npz" in files
    assert any("setting-8-5" in name for name in files)
    assert _run_files(tmp_path / "two" / "distill.run") == files
    assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)
    # a process lost mid-run: one pair's segment table and a setting's last round never reached the run folder
    run = tmp_path / "two" / "distill.run"
    with np.load(run / "oracle_tables.npz") as data:
        np.savez(run / "oracle_tables.npz", **{k: data[k] for k in data.files if not k.endswith("_1")})
    lost = next(run.glob("setting-8-5/round1-*.npz"))
    lost.unlink()
    kept = {p: p.stat().st_mtime_ns for p in run.rglob("round*.npz")}
    again = Processes(devices=2, strategy="ddp_spawn").launch(_distilled, str(tmp_path / "two"))
    assert _run_files(run) == files and all(np.array_equal(one[k], again[k]) for k in one)
    assert lost.is_file() and {p: p.stat().st_mtime_ns for p in kept} == kept  # only what was lost, redone


def _ppo(shard: Shard, root: str, timesteps: int) -> dict | None:
    """A tiny PPO run on 2 environments in groups of one, one group per process, in `root` (resuming what it holds);
    the first process returns its actor's weights. One thread, as in `_distilled`."""
    import torch

    from cachepilot.envs.spec import RunSpec
    from cachepilot.train.rl import PPOConfig, PPOTrainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = RunSpec(pairs=2, val_pairs=1, steps=6, budgets=(0.3, 0.5), references=f"{root}/refs")
    config = PPOConfig(total_timesteps=timesteps, num_envs=2, env_group=1, batch_size=6, eval_every=1,
                       eval_budgets=(0.5,))
    try:
        learned = PPOTrainer(spec, config, f"{root}/ppo.run", lambda *a: None, shard).learn()
    finally:
        torch.set_num_threads(threads)
    return None if learned is None else {k: v.numpy() for k, v in learned.net.state_dict().items()}


@pytest.mark.slow
def test_ppo_over_two_processes_trains_what_one_trains_and_resumes(tmp_path):
    """Each process steps its group of environments and every process gathers all of them, so both make the update
    one process makes: the same weights. A run stopped after its second update and resumed on two processes ends
    where an uninterrupted one does."""
    import numpy as np

    one = Processes().launch(_ppo, str(tmp_path / "one"), 36)
    two = Processes(devices=2, strategy="ddp_spawn").launch(_ppo, str(tmp_path / "two"), 24)
    resumed = Processes(devices=2, strategy="ddp_spawn").launch(_ppo, str(tmp_path / "two"), 36)
    assert one.keys() == resumed.keys() and all(np.array_equal(one[k], resumed[k]) for k in one)
    assert not all(np.array_equal(two[k], resumed[k]) for k in two)  # the resumed run trained on
