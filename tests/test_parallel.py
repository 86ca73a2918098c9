"""Phases over several processes (Lightning Fabric, 2 CPU processes on gloo): the same files as one process, and a
re-run after a lost process builds only what is missing."""

from __future__ import annotations

import json
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
