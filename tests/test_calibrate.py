"""`cachepilot calibrate` on toy-wan: a well-formed calibration that the baselines accept."""

import json

import pytest

from cachepilot.cli import main
from cachepilot.errors import CachepilotError
from cachepilot.policies.magcache import MagCache, MagCacheConfig
from cachepilot.policies.teacache import TeaCache
from cachepilot.policies.calibration import load_calibration


@pytest.mark.slow
def test_calibrate_toy_wan_end_to_end(tmp_path, capsys):
    out = tmp_path / "calibration.json"
    assert main(["calibrate", "--model", "toy-wan", "--prompts", "2", "--steps", "6", "--out", str(out)]) == 0
    assert "TeaCache fit" in capsys.readouterr().out
    record = load_calibration(out)
    assert len(record["teacache"]["coefficients"]) == 5 and record["teacache"]["points"] == 2 * 2 * 5
    ratios = record["magcache"]["mag_ratios"]
    assert set(ratios) == {"cond", "uncond"} and len(ratios["cond"]) == 6 and ratios["cond"][0] == 1.0
    assert all(r > 0 for r in ratios["uncond"]) and len(record["magcache"]["spread"]["cond"]) == 6
    TeaCache.from_calibration(record, threshold=0.1)
    MagCache(MagCacheConfig.from_calibration(record))


def test_corrupted_calibration_is_a_clear_error(tmp_path):
    from cachepilot.integrity import seal

    bad = tmp_path / "calibration.json"
    bad.write_text(json.dumps({"teacache": {}}))
    with pytest.raises(CachepilotError, match="carries no checksum"):
        load_calibration(bad)
    bad.write_text(json.dumps(seal({"teacache": {}})))  # whole, but without what the baselines read
    with pytest.raises(CachepilotError, match="corrupted or incomplete"):
        load_calibration(bad)
    with pytest.raises(CachepilotError, match="run `cachepilot calibrate"):
        load_calibration(tmp_path / "missing.json")
