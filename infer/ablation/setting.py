"""An ablation's setting: the pipeline, the pairs, their uncached reference and the runs stored for them."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cachepilot.envs.references import model_hash
from cachepilot.errors import CachepilotError
from cachepilot.evaluation.harness import timed_reference
from cachepilot.evaluation.oracle import GAIN_FILE
from cachepilot.evaluation.peers import PEERS
from cachepilot.evaluation.search import SearchResult
from cachepilot.io import atomic_write_npz, atomic_write_text, read_or_set_aside
from cachepilot.metrics import LPIPSUnavailable, lpips_distance, psnr, ssim
from cachepilot.models.registry import ModelSource, get_spec, weights_path
from cachepilot.models.toy_wan.scenes import load_split
from cachepilot.policies.calibration import find_calibration
from cachepilot.policies.registry import BASELINES

from .config import AblationConfig, Entry, Kind, Run


class Setting:
    """The pipeline, the pairs, their uncached reference and where runs of this exact setting are stored."""

    def __init__(self, config: AblationConfig, root: Path, log=print):
        self.config, self.log = config, log
        self.source = ModelSource(config.model, config.model_path, config.device, config.dtype, config.options)
        self.pipe = self.source.load()
        self.pipe.set_progress_bar_config(disable=True)
        self.weights = weights_path(config.model, config.model_path)
        self.calibration = find_calibration(self.pipe, config.model)
        self.model_hash = model_hash(self.pipe)
        prompts = list(config.prompts) if config.prompts else _split_prompts(config.model, config.split)
        if len(prompts) < config.pairs:
            raise CachepilotError(f"{config.pairs} pairs asked, but only {len(prompts)} prompts are available")
        self.prompts, self.seeds = prompts[: config.pairs], list(range(config.pairs))
        name = config.split if not config.prompts else f"prompts{_digest(json.dumps(prompts).encode())[:8]}"
        called = ("-" + _digest(json.dumps([config.options, config.device], default=str).encode())[:8]
                  if config.options or config.device else "")  # another video size or device: other runs
        self.dir = root / "runs" / (f"{config.model}-{self.model_hash[:12]}-{name}-pairs{config.pairs}"
                                    f"-steps{config.steps}-guidance{config.guidance:g}{called}")  # made at its first file
        self.lpips_note: str | None = None
        self.policy_digests: dict[str, str] = {}  # learned method -> digest of its weights (learned_policies)

    def best_within(self, entries: list[Entry], budget: float) -> Run | None:
        """Of these entries' stored runs, the one with the best mean PSNR among those within `budget`."""
        runs = [self.stored(e) for e in entries]
        runs = [r for r in runs if r is not None and np.mean(r.computed_fraction) <= budget + 1e-9]
        return max(runs, key=lambda r: np.mean(r.psnr), default=None)

    def best_learned(self, budget: float) -> Run | None:
        """The best learned policy's stored run at `budget`: the learned start of the searched oracle there."""
        return self.best_within([Entry(name, budget, Kind.LEARNED, "budget") for name in self.policy_digests], budget)

    def search_inputs(self, budget: float) -> str:
        """Digest of what the searched oracle at `budget` depends on: its settings, the gain profile and the learned
        policy it starts from (another policy's change does not call for a new search)."""
        gain = self.weights / GAIN_FILE if self.weights else None
        learned = self.best_learned(budget)
        return _digest(json.dumps({"search": asdict(self.config.oracle_search), "budget": budget,
                                   "learned": self.policy_digests[learned.entry.method] if learned else "",
                                   "gain": _digest(gain.read_bytes()) if gain and gain.is_file() else ""},
                                  sort_keys=True).encode())

    def inputs(self, entry: Entry) -> str:
        """Digest of the files beside the weights that `entry`'s run depends on ("" for none)."""
        if entry.kind is Kind.LEARNED:
            return self.policy_digests[entry.method]
        spec = BASELINES.get(entry.method) or PEERS.get(entry.method)
        if spec is not None and spec.calibration:
            return _digest(json.dumps(self.calibration, sort_keys=True).encode())
        if entry.kind is Kind.DP and self.weights and (self.weights / GAIN_FILE).is_file():
            return _digest((self.weights / GAIN_FILE).read_bytes())
        if entry.kind is Kind.ORACLE:
            return self.search_inputs(entry.knob)
        return ""

    def load_reference(self) -> None:
        """The uncached frames and transformer wall time of all pairs (stored, or generated now)."""
        config, log = self.config, self.log
        path = self.dir / "reference.npz"
        stored = self.read(path, lambda p: dict(np.load(p)))  # every array read: a damaged one raises here
        if stored is not None:
            self.reference, self.reference_wall = stored["frames"], float(stored["wall"])
        else:
            log(f"reference: {config.pairs} pairs without cache")
            timed_reference(self.pipe, self.prompts, self.seeds, 3, config.guidance)  # warm-up at the batch size
            self.reference, self.reference_wall = timed_reference(self.pipe, self.prompts, self.seeds, config.steps,
                                                                  config.guidance)
            atomic_write_npz(path, frames=self.reference, wall=np.array(self.reference_wall))

    def _paths(self, entry: Entry) -> tuple[Path, Path]:
        return self.dir / f"{entry.key}.json", self.dir / f"{entry.key}.frames.npz"

    def read(self, path: Path, reader, also: tuple[Path, ...] = ()):
        """A stored file of this setting, or None (missing, or damaged and set aside: see `read_or_set_aside`)."""
        return read_or_set_aside(path, reader, self.log, also)

    def search_path(self, budget: float) -> Path:
        """Where the searched oracle at `budget` is stored."""
        return self.dir / f"oracle-search@{budget:g}.json"

    def stored_search(self, budget: float) -> tuple[str, SearchResult] | None:
        """The searched oracle stored at `budget`, with the digest of the inputs it was searched for, or None."""

        def read(p: Path) -> tuple[str, SearchResult]:
            data = json.loads(p.read_text())
            return data["inputs"], SearchResult.from_dict(data["result"])

        return self.read(self.search_path(budget), read)

    def stored(self, entry: Entry) -> Run | None:
        path, frames_path = self._paths(entry)

        def run_of(p: Path) -> tuple[Run, str]:
            data = json.loads(p.read_text())
            for key in ("computed_fraction", "psnr", "ssim", *(("lpips",) if data["lpips"] is not None else ())):
                if len(data[key]) != self.config.pairs:
                    raise ValueError(f"it scores {len(data[key])} pairs by {key}, not {self.config.pairs}")
                if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in data[key]):
                    raise ValueError(f"its {key} holds a value that is not a finite number")
            if not math.isfinite(float(data["wall"])):
                raise ValueError("its wall time is not a finite number")
            if np.load(frames_path)["frames"].shape[0] != min(self.config.gif_pairs, self.config.pairs):
                raise ValueError(f"{frames_path.name} holds frames of other pairs")
            return Run(entry, list(data["computed_fraction"]), list(data["psnr"]), list(data["ssim"]), data["lpips"],
                       float(data["wall"])), data.get("inputs", "")

        stored = self.read(path, run_of, also=(frames_path,))
        if stored is None or stored[1] != self.inputs(entry):
            return None  # missing, damaged, or made with another policy, calibration or profile (stale)
        return stored[0]

    def frames(self, entry: Entry) -> np.ndarray:
        """Frames of the first `gif_pairs` pairs of a stored run (the reference for method "none")."""
        if entry.method == "none":
            return self.reference[: self.config.gif_pairs]
        return np.load(self._paths(entry)[1])["frames"]

    def score(self, entry: Entry, frames: np.ndarray, fractions, wall: float) -> Run:
        lpips = self._lpips(frames)
        run = Run(entry, [float(f) for f in fractions], [_finite(psnr(f, r)) for f, r in zip(frames, self.reference)],
                  [ssim(f, r) for f, r in zip(frames, self.reference)], lpips, float(wall))
        path, frames_path = self._paths(entry)
        atomic_write_npz(frames_path, frames=np.asarray(frames[: self.config.gif_pairs], dtype=np.float32))
        atomic_write_text(path, json.dumps(asdict(run) | {"inputs": self.inputs(entry)}, allow_nan=False))
        return run

    def _lpips(self, frames) -> list[float] | None:
        if self.lpips_note is not None:
            return None
        try:
            return [lpips_distance(f, r) for f, r in zip(frames, self.reference)]
        except LPIPSUnavailable as error:
            self.lpips_note = f"LPIPS not computed: {error}"
            self.log(self.lpips_note)
            return None

    def reference_run(self) -> Run:
        n = len(self.prompts)
        zero = [0.0] * n if self._lpips(self.reference[:1]) is not None else None
        return Run(Entry("none", 0.0, Kind.REFERENCE, "-"), [1.0] * n, [math.inf] * n, [1.0] * n, zero,
                   self.reference_wall)


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:16]


def _finite(value: float) -> float:
    """JSON has no infinity; a run identical to the reference is stored at 1e9 dB (shown as lossless)."""
    return 1e9 if math.isinf(value) else float(value)


def segment_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as stored:
        return stored["errors"], stored["forecast"]


def _split_prompts(model: str, split: str) -> list[str]:
    if get_spec(model).family != "toy-wan":
        raise CachepilotError("prompt splits exist for toy-wan only; pass --prompts-file (one prompt per line)")
    return list(load_split(split))
