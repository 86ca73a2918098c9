"""The calibration a model's baselines read: TeaCache's polynomial, MagCache's ratios, change-rate percentiles.

`cachepilot calibrate` measures one and writes `calibration.json`; put it beside the model's weights and every
command and `apply_cache` find it there. For models whose authors published their constants (TeaCache's fitted
coefficients, MagCache's Wan2.1 ratios), `published_calibration` gives those instead, and commands that know
the model's name use them when no calibration.json exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from cachepilot.errors import CachepilotError
from cachepilot.integrity import IntegrityError, seal, unseal
from cachepilot.io import atomic_write_text
from cachepilot.models.registry import embedded_path, get_spec, pipeline_folder

from .teacache import COEFFICIENTS

CALIBRATION_FILE = "calibration.json"
# Official MagCache calibrations shipped in checkpoints/calibration/ (per-step ratios, branches interleaved).
PUBLISHED_MAGCACHE = {"wan2.1-t2v-1.3b": "magcache_wan2.1-t2v-1.3b.json"}


def write_calibration(record: dict, path: str | Path) -> Path:
    """Write a calibration with its checksum (`cachepilot.integrity`), atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(seal(record), indent=2) + "\n")
    return path


def load_calibration(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CachepilotError(f"no calibration at {path}; run `cachepilot calibrate --model <name>` first")
    try:
        record = unseal(json.loads(path.read_text()), f"calibration file {path}")
        record["teacache"]["coefficients"], record["magcache"]["mag_ratios"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IntegrityError) as err:
        reason = err if isinstance(err, IntegrityError) else f"calibration file {path} is corrupted or incomplete ({err})"
        raise CachepilotError(f"{reason}; recalibrate with `cachepilot calibrate`") from None
    return record


def published_calibration(model: str) -> dict | None:
    """The published constants for a known model, as a calibration record with the sections that exist for it
    ("teacache", "magcache"); None when nothing was published for it."""
    get_spec(model)
    record: dict = {"model": model, "source": "published"}
    if model in COEFFICIENTS:
        record["teacache"] = {"coefficients": list(COEFFICIENTS[model]), "source": "TeaCache (ali-vilab/TeaCache)"}
    if model in PUBLISHED_MAGCACHE:
        path = embedded_path("calibration") / PUBLISHED_MAGCACHE[model]
        data = unseal(json.loads(path.read_text()), str(path))
        ratios = data["mag_ratios"]  # one value per call: cond, uncond, cond, uncond, ...
        record["magcache"] = {"mag_ratios": {"cond": ratios[0::2], "uncond": ratios[1::2]}, "steps": data["steps"],
                              "source": data["source"]}
    return record if {"teacache", "magcache"} & record.keys() else None


def find_calibration(pipe, model: str | None = None) -> dict | None:
    """calibration.json beside the pipeline's weights; else, for a known `model`, its published constants."""
    folder = pipeline_folder(pipe)
    if folder is not None and (folder / CALIBRATION_FILE).is_file():
        return load_calibration(folder / CALIBRATION_FILE)
    return published_calibration(model) if model is not None else None
