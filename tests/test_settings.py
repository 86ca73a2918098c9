"""One policy over many settings: the settings a run covers, schedules carried between step counts, the ablation
over lists of step counts and guidance scales."""

import json

import numpy as np
import pytest

from cachepilot.cli import main
from cachepilot.envs import RunSpec, Setting, setting_cross
from cachepilot.errors import InvalidInputError
from cachepilot.policies.schedule import FixedSchedule, resample_schedule
from cachepilot.runtime import FULL, STEP


def test_a_cross_of_settings_goes_through_the_primary_one():
    cells = setting_cross((10, 50, 100), (3, 7), Setting(50, 5))
    assert cells == tuple(sorted({Setting(10, 5), Setting(50, 5), Setting(100, 5), Setting(50, 3), Setting(50, 7)}))
    spec = RunSpec(pipe=object(), settings=[(10, 5.0), (100, 5.0)])
    assert Setting(50, 5.0) in spec.setting_list() and spec.steps_range == (10, 100) and spec.guidance_range == (5, 5)
    assert RunSpec(pipe=object(), settings=[(50, 5.0)]).settings == ()  # the primary alone: one setting
    assert spec.at(Setting(10, 5.0)).setting_list() == (Setting(10, 5.0),)
    with pytest.raises(InvalidInputError, match="steps must be"):
        RunSpec(pipe=object(), settings=[(0, 5.0)])
    with pytest.raises(InvalidInputError, match="guidance"):
        Setting(20, float("nan"))


def test_a_resampled_schedule_keeps_its_shape_and_its_count():
    source = [a.forecasting(1) if a.reuses and i > 8 else a
              for i, a in enumerate(FixedSchedule.uniform(50, 0.2).actions)]
    assert resample_schedule(source, 50, sum(a == FULL for a in source)) == source  # the same setting: unchanged
    for steps, fulls in ((10, 2), (20, 3), (100, 15)):
        out = resample_schedule(source, steps, fulls)
        at = [i for i, a in enumerate(out) if a == FULL]
        assert len(out) == steps and len(at) == fulls and at[0] == 0 and at[-1] == steps - 1
        assert np.all(np.diff(at) >= 1)
        # the reuses keep the kind of the source's reuses at the same fraction of the generation, with a forecast
        # lowered where fewer FULL steps came before than it extrapolates from
        assert out[1] == STEP and out[-2].kind == source[-2].kind
        assert all(a.forecast < sum(b == FULL for b in out[:i]) for i, a in enumerate(out) if a.reuses)
    with pytest.raises(ValueError, match="FULL"):
        resample_schedule([STEP] * 5, 10, 2)


def test_ablate_over_lists_of_steps_and_guidance_reports_each_setting(tmp_path, capsys):
    out = tmp_path / "ablation"
    code = main(["ablate", "--quick", "--pairs", "1", "--steps", "6,8", "--guidance", "3,5", "--methods",
                 "static,taylorseer,uniform-f1", "--out", str(out)])
    assert code == 0
    for steps in (6, 8):
        for guidance in (3, 5):
            results = json.loads((out / f"steps{steps}-guidance{guidance}" / "results.json").read_text())
            assert {r["method"] for r in results["summary"]} >= {"static", "taylorseer", "uniform-f1"}
            assert results["setting"]["steps"] == steps and results["setting"]["guidance"] == guidance
    assert (out / "settings.md").read_text().startswith("toy-wan, 1 test pairs")
    assert "settings.md" in capsys.readouterr().out


def test_ablate_refuses_a_bad_item_of_a_list(capsys):
    with pytest.raises(SystemExit):
        main(["ablate", "--steps", "10,zero"])
    assert "argument --steps: expected a number, got 'zero'" in capsys.readouterr().err
