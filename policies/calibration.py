"""The calibration file a model's baselines read (TeaCache polynomial, MagCache ratios, ...).

`cachepilot calibrate` (train/calibrate.py) writes it beside the model's weights; the baselines and the
plugin read it. It lives here, with its consumers, so inference never depends on the training code.
"""

from __future__ import annotations

import json
from pathlib import Path

from cachepilot.errors import CachepilotError

CALIBRATION_FILE = "calibration.json"


def write_calibration(record: dict, path: str | Path) -> Path:
    from cachepilot.io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def load_calibration(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CachepilotError(f"no calibration at {path}; run `cachepilot calibrate --model <name>` first")
    try:
        record = json.loads(path.read_text())
        record["teacache"]["coefficients"], record["magcache"]["mag_ratios"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CachepilotError(f"calibration file {path} is corrupted or incomplete ({err}); recalibrate") from err
    return record
