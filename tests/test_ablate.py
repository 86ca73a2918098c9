"""`cachepilot ablate`: the quick run end to end on toy-wan, its reuse of stored runs, and the report's pieces."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest

from cachepilot.cli import main
from cachepilot.infer.ablation import UNIFORM
from cachepilot.infer.ablation.report import Point, gif_columns, pareto_table, points, side_by_side
from cachepilot.evaluation.peers import available_peers
from cachepilot.policies.registry import BASELINES


@pytest.fixture(scope="module")
def quick(tmp_path_factory, module_toy_copy):
    out = tmp_path_factory.mktemp("ablation")
    assert main(["ablate", "--quick", "--model-path", str(module_toy_copy), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_quick_ablation_writes_every_output(quick):
    data = json.loads((quick / "results.json").read_text())
    methods = {row["method"] for row in data["summary"]}
    expected = {"none", "oracle", "oracle-dp", *UNIFORM, "learned-distill", "learned-ppo", *available_peers(), *BASELINES}
    assert methods == expected
    assert len(data["pairs"]) == 2 * len(data["summary"])  # 2 pairs per run
    by_method = {row["method"]: row for row in data["summary"]}
    assert by_method["none"]["computed_fraction"] == 1 and by_method["none"]["psnr"] is None  # the reference
    for name in ("learned-distill", "learned-ppo", "oracle", "oracle-dp", *UNIFORM):
        assert by_method[name]["knob"] == 0.35 and by_method[name]["computed_fraction"] <= 0.35 + 1e-9
        assert 15 < by_method[name]["psnr"] < 60
    header = (quick / "results.csv").read_text().splitlines()[0].split(",")
    for column in ("method", "knob", "prompt", "seed", "computed_fraction", "flops_speedup", "wall_speedup", "psnr",
                   "ssim", "lpips"):
        assert column in header
    assert "| learned-distill | budget=0.35 |" in (quick / "table.md").read_text()
    assert (quick / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gif = iio.imread(quick / "side_by_side.gif")
    assert gif.shape[0] == 8 and gif.shape[2] > gif.shape[1]  # 8 frames, one wide row of columns


@pytest.mark.slow
def test_a_stored_results_csv_reads_back_as_the_runs_it_reports(quick):
    from cachepilot.infer.ablation.report import points, read_results

    runs = read_results(quick / "results.csv")
    summary = {row["key"]: row for row in json.loads((quick / "results.json").read_text())["summary"]}
    assert {run.entry.key for run in runs} == set(summary)
    for point in points(runs, reference_wall=1.0):
        stored = summary[point.key]
        assert point.computed_fraction == pytest.approx(stored["computed_fraction"])
        assert (stored["psnr"] is None and math.isinf(point.psnr)) or point.psnr == pytest.approx(stored["psnr"])
        assert point.wall_speedup == pytest.approx(stored["wall_speedup"]) and point.label == stored["label"]


@pytest.mark.slow
def test_two_processes_score_every_run_as_one_does(quick, module_toy_copy, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "two"
    methods = ",".join(["teacache", "uniform", "learned", "oracle",  # the oracles run after the rest is stored
                        *(p for p in available_peers() if p.startswith("cache-dit"))])  # a peer that sees the group
    done = subprocess.run([str(Path(sys.executable).parent / "cachepilot"), "ablate", "--quick", "--methods", methods,
                           "--model-path", str(module_toy_copy), "--out", str(out), "--devices", "2", "--strategy",
                           "ddp"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # the first process reports, once

    def scores(folder):
        rows = json.loads((folder / "results.json").read_text())["pairs"]
        return {(r["method"], r["knobs"], r["seed"]): (r["computed_fraction"], r["psnr"], r["ssim"]) for r in rows}
    two, one = scores(out), scores(quick)
    assert len(two) >= 16 and two == {key: one[key] for key in two}
    # a process lost mid-run: one run never reached the store; a rerun on two processes makes that one alone
    lost = next(out.glob("runs/*/teacache*.json"))
    lost.unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.json") if "oracle-search" not in p.name}
    again = subprocess.run(done.args, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(kept) + 1} runs, {len(kept)} already stored" in again.stdout
    assert lost.is_file() and {p: p.stat().st_mtime_ns for p in kept} == kept and scores(out) == two


@pytest.mark.slow
def test_rerun_reuses_stored_runs(quick, module_toy_copy, capsys):
    before = json.loads((quick / "results.json").read_text())["summary"]
    assert main(["ablate", "--quick", "--model-path", str(module_toy_copy), "--out", str(quick)]) == 0
    out = capsys.readouterr().out
    assert "already stored" in out
    runs = len(before) - 1  # the reference is not a run
    assert f"{runs} runs, {runs} already stored" in out
    assert json.loads((quick / "results.json").read_text())["summary"] == before


@pytest.mark.slow
def test_a_replaced_policy_file_is_run_again(quick, module_toy_copy, capsys):
    """A stored run belongs to the policy weights it was made with: retraining a policy must not keep
    reporting the old one's scores."""
    import shutil

    model = module_toy_copy
    shutil.rmtree(model / "policy-ppo")
    shutil.copytree(model / "policy-distill", model / "policy-ppo")
    before = {row["method"]: row for row in json.loads((quick / "results.json").read_text())["summary"]}
    runs = len(before) - 1
    assert main(["ablate", "--quick", "--model-path", str(model), "--out", str(quick)]) == 0
    # the policy's run, and the searched oracle only if it started from that policy (the best learned one)
    ppo_was_best = before["learned-ppo"]["psnr"] > before["learned-distill"]["psnr"]
    assert f"{runs} runs, {runs - 1 - ppo_was_best} already stored" in capsys.readouterr().out
    summary = {row["method"]: row for row in json.loads((quick / "results.json").read_text())["summary"]}
    assert summary["learned-ppo"]["psnr"] == summary["learned-distill"]["psnr"]


def test_unknown_method_is_a_clear_error_before_any_compute(tmp_path, capsys):
    assert main(["ablate", "--quick", "--methods", "static,fastcache", "--out", str(tmp_path)]) == 2
    assert "unknown method(s) fastcache" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.npz"))  # not even the reference was generated


def test_schedules_skip_budgets_a_short_generation_cannot_keep(tmp_path, capsys):
    """At 4 steps the first step alone is a quarter of the compute, and the uniform schedule's first and last step
    half of it: each leaves out the budgets it would overspend, and the search still starts where one FULL fits."""
    assert main(["ablate", "--pairs", "1", "--steps", "4", "--methods", "uniform,oracle", "--oracle-budgets",
                 "0.15,0.25,0.5", "--search-rounds", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "uniform schedules skip budgets under 0.5" in out and "oracles skip budgets under 0.25" in out
    rows = [r for r in json.loads((tmp_path / "results.json").read_text())["summary"] if r["method"] != "none"]
    assert {(r["method"], r["knob"]) for r in rows} == {
        ("uniform", 0.5), ("oracle-dp", 0.25), ("oracle-dp", 0.5), ("oracle", 0.25), ("oracle", 0.5)}
    assert all(r["computed_fraction"] <= r["knob"] + 1e-9 for r in rows)


def _point(method, speedup, quality, kind="baseline"):
    return Point(method, kind, "k", speedup, 1 / speedup, speedup, speedup, quality, 0.9, None,
                 key=f"{method}@{speedup:g}", label=f"k={speedup:g}")


def test_pareto_fronts_per_method_and_across_methods():
    found = [_point("a", 2, 30), _point("a", 3, 25), _point("a", 2.5, 24),  # a@2.5 is dominated by a@3
             _point("b", 2, 31), _point("b", 4, 20),
             _point("oracle", 3, 40, kind="oracle")]  # a limit: it dominates nobody
    from cachepilot.infer.ablation.report import _mark_fronts

    _mark_fronts(found)
    own = {(p.method, p.knob): p.own_front for p in found}
    glob = {(p.method, p.knob): p.global_front for p in found}
    assert own == {("a", 2): True, ("a", 3): True, ("a", 2.5): False, ("b", 2): True, ("b", 4): True,
                   ("oracle", 3): True}
    assert glob == {("a", 2): False, ("a", 3): True, ("a", 2.5): False, ("b", 2): True, ("b", 4): True,
                    ("oracle", 3): False}
    table = pareto_table(found)
    assert "| a | k=2.5 |" not in table and "| oracle | k=3 |" in table and "limit" in table


def test_gif_columns_pick_each_methods_point_nearest_the_budget():
    found = [_point("a", 2, 30), _point("a", 3, 25), _point("b", 4, 20)]
    assert [(p.method, p.knob) for p in gif_columns(found, 0.35)] == [("a", 3), ("b", 4)]
    frames = side_by_side([np.zeros((2, 8, 16, 16, 3)), np.ones((2, 8, 16, 16, 3))], [("a", "x"), ("b", "y")], scale=2)
    assert frames.shape == (8, 26 + 2 * (32 + 2), 2 * (32 + 2), 3)
    assert frames.min() >= 0 and frames.max() <= 1


def test_points_from_runs_speedups():
    from cachepilot.infer.ablation import Entry, Run

    runs = [Run(Entry("none", 0, "reference", "-"), [1.0, 1.0], [math.inf] * 2, [1, 1], None, 10.0),
            Run(Entry("static", 2, "baseline", "interval"), [0.5, 0.5], [30.0, 32.0], [0.9, 0.95], None, 5.0)]
    found = {p.method: p for p in points(runs, reference_wall=10.0)}
    assert found["static"].flops_speedup == 2 and found["static"].wall_speedup == 2 and found["static"].psnr == 31
    assert math.isinf(found["none"].psnr)


def _run(method: str, knob: float, fraction: float, psnr: list[float]):
    from cachepilot.infer.ablation import Entry, Run

    return Run(Entry(method, knob, "baseline", "k"), [fraction] * len(psnr), psnr, [1.0] * len(psnr), None, 1.0)


def test_the_two_views_of_a_method_at_a_budget():
    from cachepilot.infer.ablation.compare import at_or_below, interpolated

    runs = [_run("a", 1, 0.2, [20.0, 22.0]), _run("a", 2, 0.4, [30.0, 34.0]), _run("a", 3, 0.3, [19.0, 19.0])]
    assert at_or_below(runs, 0.35).entry.knob == 1  # 0.3 is within but scores lower; 0.4 is over
    assert at_or_below(runs, 0.1) is None
    np.testing.assert_allclose(interpolated(runs, 0.3), [25.0, 28.0])  # halfway along the front; 0.3 is dominated
    assert interpolated(runs, 0.5) is None


def test_speed_at_equal_quality_reads_each_front_at_the_level():
    from cachepilot.infer.ablation.compare import compute_to_reach, speed_at_equal_quality, speed_table

    assert compute_to_reach([(0.2, 20.0), (0.4, 30.0), (0.3, 10.0)], 25.0) == pytest.approx(0.3)
    assert compute_to_reach([(0.2, 20.0), (0.4, 30.0)], 15.0) == 0.2  # the front's first point already reaches it
    assert compute_to_reach([(0.2, 20.0), (0.4, 30.0)], 31.0) is None
    grouped = {"learned-x": [_run("learned-x", 0.25, 0.25, [30.0])], "uniform-f1": [_run("uniform-f1", 1, 0.5, [30.0])],
               "oracle": [_run("oracle", 0.1, 0.1, [40.0])]}  # the oracle is a limit, not on either front
    assert speed_at_equal_quality(grouped, [30.0]) == [(30.0, 0.5, 0.25)]
    assert "| 30 | 0.500 | 0.250 | 2.00x |" in speed_table(grouped, [30.0])
    assert "| 35 | not reached | not reached | - |" in speed_table(grouped, [35.0])
    assert speed_table({"uniform-f1": grouped["uniform-f1"]}) == ""  # no learned policy: nothing to compare
