"""`cachepilot ablate`: every cache method on the same prompts and seeds, scored against the uncached output.

NoCache (the reference), each baseline across its knob sweep, the peers (diffusers' caches, cache-dit when
installed), the oracle at a few budgets and each learned policy shipped beside the model at several
budgets. Each (method, knob) run is one batched generation of all pairs; its per-pair scores (and the
frames of the first pairs, for the side-by-side GIF) are stored as soon as it finishes, under a folder
named by the model hash and the setting, so a rerun only computes what is missing. A run that read files
beside the weights (a policy, the calibration, the oracle's profile) records their digest and is computed
again once they change. `ablation_report`
turns the runs into results.csv / results.json, the Pareto table, pareto.png and the GIF.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cachepilot import checks
from cachepilot.envs.references import model_hash
from cachepilot.errors import CachepilotError
from cachepilot.evaluation.harness import generate_with, timed_reference
from cachepilot.evaluation.oracle import (DEFAULT_MAX_GAP, GAIN_FILE, SegmentTable, fulls_for_budget, measure_segments,
                                          stored_gain)
from cachepilot.evaluation.peers import PEERS, available_peers, generate_with_peer, unsupported_reason
from cachepilot.evaluation.search import SearchConfig, SearchResult, realise, search
from cachepilot.io import atomic_write_npz, atomic_write_text, read_or_set_aside
from cachepilot.metrics import LPIPSUnavailable, lpips_distance, psnr, ssim
from cachepilot.models.adapters import num_blocks
from cachepilot.models.registry import ModelSource, get_spec, weights_path
from cachepilot.models.toy_wan.scenes import load_split
from cachepilot.policies.calibration import find_calibration
from cachepilot.policies.learned import lowest_budget
from cachepilot.policies.policy_file import PolicyFileError, load_policy
from cachepilot.policies.registry import BASELINES, calibration_covers, make_baseline
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.runtime import Action

from .ablation_report import write_report


@dataclass(frozen=True)
class Entry:
    """One point of the ablation: a method at one setting of its knobs (a budget for learned policies, the oracle
    and the uniform schedules): its main knob, and the other knobs the setting changes from their defaults."""

    method: str
    knob: float
    kind: str  # "reference" | "learned" | "oracle" (searched) | "dp" | "schedule" (uniform) | "baseline" | "peer"
    knob_name: str
    extra: tuple[tuple[str, float], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.method}@{self.knob:g}" + "".join(f",{name}={value:g}" for name, value in self.extra)

    @property
    def settings(self) -> dict[str, float]:
        return {self.knob_name: self.knob, **dict(self.extra)}

    @property
    def label(self) -> str:
        return ", ".join(f"{name}={value:g}" for name, value in self.settings.items())


def sweep_entries(method, kind: str, sweeps: bool) -> list[Entry]:
    """A baseline's or peer's settings as entries: its whole sweep, or its defaults only (the sweep's first). An
    entry names the other knobs where they differ from their defaults."""
    entries = []
    for s in method.sweep if sweeps else method.sweep[:1]:
        s = method.settings(**s)
        extra = tuple(sorted((n, float(v)) for n, v in s.items() if n != method.knob and v != method.defaults[n]))
        entries.append(Entry(method.name, float(s[method.knob]), kind, method.knob, extra))
    return entries


# The uniform FULL/STEP schedule, and the same FULL steps with every reuse forecast: what forecasting alone does
UNIFORM = {"uniform": (0, "step"), "uniform-f1": (1, "step"), "uniform-f2": (2, "step"),
           "uniform-f1-sigma": (1, "sigma"), "uniform-f2-sigma": (2, "sigma")}


@dataclass
class AblationConfig:
    model: str = "toy-wan"
    model_path: str | None = None
    device: str | None = None  # e.g. "cuda"; None: where the pipeline loads (the CPU)
    dtype: str | None = None  # float32, bfloat16 or float16; None: as saved
    options: tuple[tuple[str, object], ...] = ()  # how the pipeline is called: height, width, num_frames, ...
    split: str = "test"
    prompts: tuple[str, ...] | None = None  # instead of a toy-wan split (real models)
    pairs: int = 16  # (prompt, seed) pairs: the split's first prompts, seeds 0..pairs-1
    steps: int = 50
    guidance: float = 5.0
    methods: str = "all"  # or a comma list of baseline / peer names, "oracle", "learned", "learned-<name>"
    budgets: tuple[float, ...] = (0.15, 0.2, 0.25, 0.35, 0.5, 0.6)  # learned policies (within each one's range)
    oracle_budgets: tuple[float, ...] = (0.15, 0.25, 0.35, 0.5)  # the oracles' and the uniform schedules'
    oracle_search: SearchConfig = SearchConfig()
    policies: tuple[str, ...] | None = None  # policy folders; default: every policy-* folder beside the weights
    sweeps: bool = True  # False: each baseline and peer at its default knob only
    gif_pairs: int = 2
    gif_budget: float = 0.35  # each method's point closest to this computed fraction goes into the GIF

    @classmethod
    def quick(cls, **overrides) -> "AblationConfig":
        """A smoke run of every method (2 pairs, default knobs, one budget) for tests and first looks."""
        return replace(cls(pairs=2, budgets=(0.35,), oracle_budgets=(0.35,), sweeps=False, gif_pairs=1,
                           oracle_search=SearchConfig(rounds=2, proposals=2)), **overrides)


@dataclass
class Run:
    """A finished run: per-pair scores and the batch's transformer wall time."""

    entry: Entry
    computed_fraction: list[float]
    psnr: list[float]
    ssim: list[float]
    lpips: list[float] | None
    wall: float


class Setting:
    """The pipeline, the pairs, their uncached reference and where runs of this exact setting are stored."""

    def __init__(self, config: AblationConfig, root: Path, log=print):
        self.config, self.log = config, log
        self.pipe = ModelSource(config.model, config.model_path, config.device, config.dtype, config.options).load()
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
        return self.best_within([Entry(name, budget, "learned", "budget") for name in self.policy_digests], budget)

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
        if entry.kind == "learned":
            return self.policy_digests[entry.method]
        spec = BASELINES.get(entry.method) or PEERS.get(entry.method)
        if spec is not None and spec.calibration:
            return _digest(json.dumps(self.calibration, sort_keys=True).encode())
        if entry.kind == "dp" and self.weights and (self.weights / GAIN_FILE).is_file():
            return _digest((self.weights / GAIN_FILE).read_bytes())
        if entry.kind == "oracle":
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
        return Run(Entry("none", 0.0, "reference", "-"), [1.0] * n, [math.inf] * n, [1.0] * n, zero,
                   self.reference_wall)


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:16]


def _finite(value: float) -> float:
    """JSON has no infinity; a run identical to the reference is stored at 1e9 dB (shown as lossless)."""
    return 1e9 if math.isinf(value) else float(value)


def _segment_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as stored:
        return stored["errors"], stored["forecast"]


def _split_prompts(model: str, split: str) -> list[str]:
    if get_spec(model).family != "toy-wan":
        raise CachepilotError("prompt splits exist for toy-wan only; pass --prompts-file (one prompt per line)")
    return list(load_split(split))


# ---- which runs ---------------------------------------------------------------------------------
def learned_policies(setting: Setting) -> dict[str, object]:
    """name -> PolicyBundle for each policy folder named in `config.policies`, each of which must load and fit this
    pipeline and step count; without names, for each policy-* folder beside the weights that does (the others are
    reported and skipped)."""
    config = setting.config
    named = config.policies is not None
    folders = config.policies if named else (
        sorted(str(p) for p in setting.weights.glob("policy-*") if p.is_dir()) if setting.weights else [])
    bundles = {}
    for folder in folders:
        name = "learned-" + Path(folder).name.removeprefix("policy-")
        try:
            bundle = load_policy(folder)
            bundle.check_pipeline(setting.pipe, config.steps)
        except (PolicyFileError, CachepilotError) as error:
            if named:
                raise CachepilotError(f"policy {folder} cannot be ablated: {error}") from None
            setting.log(f"skipping policy {folder}: {error}")
            continue
        if name in bundles:
            raise CachepilotError(f"two policies are named {name}: give folders with different names")
        bundles[name] = bundle
        setting.policy_digests[name] = bundle.weights_sha256[:16]
    return bundles


def plan(setting: Setting, bundles: dict) -> list[Entry]:
    """The entries `config.methods` asks for, in a stable order; unknown names are an error."""
    config = setting.config
    baselines = [n for n in BASELINES if n != "none"]
    peers = available_peers()
    known = baselines + list(PEERS) + ["oracle", "oracle-dp", *UNIFORM, "learned", *bundles]
    wanted = known if config.methods == "all" else [m.strip() for m in config.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise CachepilotError(f"unknown method(s) {', '.join(unknown)}; choose from all, {', '.join(known)}")
    entries = []

    def skip(name: str, reason: str) -> None:
        """A method that cannot run here: skipped from "all", an error where it was named."""
        if config.methods != "all":
            raise CachepilotError(f"{name} cannot run on this model: {reason}")
        setting.log(f"skipping {name}: {reason}")

    for name in baselines:
        if name in wanted:
            b = BASELINES[name]
            if not calibration_covers(setting.calibration, b):
                skip(name, "no calibration.json beside the weights (`cachepilot calibrate`)")
                continue
            entries += sweep_entries(b, "baseline", config.sweeps)
    for name in PEERS:
        if name in wanted and config.methods != "all" and name not in peers:
            raise CachepilotError(f"{name} needs cache-dit: pip install 'cachepilot[peers]'")
        if name in wanted and name in peers:
            p = PEERS[name]
            reason = unsupported_reason(name, setting.pipe)
            if reason is None and not calibration_covers(setting.calibration, p):
                reason = "no calibration.json beside the weights"
            if reason is not None:
                skip(name, reason)
                continue
            entries += sweep_entries(p, "peer", config.sweeps)
    for name in UNIFORM:  # the oracle's FULL count, evenly spaced: what the oracle's placement is worth
        if name in wanted:
            entries += [Entry(name, float(b), "schedule", "budget") for b in config.oracle_budgets]
    floor = lowest_budget(config.steps)
    if bundles and any(b < floor for b in config.budgets):
        setting.log(f"learned policies skip budgets under {floor:.3g}: a {config.steps}-step generation computes its "
                    "first step in full")
    for name, bundle in bundles.items():
        if name in wanted or "learned" in wanted:
            lo, hi = bundle.card.budget_range
            entries += [Entry(name, float(b), "learned", "budget") for b in config.budgets
                        if lo <= b <= hi and b >= floor - 1e-9]
    if "learned" in wanted and not any(e.kind == "learned" for e in entries):
        skip("learned", "no policy beside the weights fits this model, step count and --budgets")
    if "oracle-dp" in wanted or "oracle" in wanted:  # last: the search starts from the runs above
        entries += [Entry("oracle-dp", float(b), "dp", "budget") for b in config.oracle_budgets]
    if "oracle" in wanted:
        entries += [Entry("oracle", float(b), "oracle", "budget") for b in config.oracle_budgets]
    return entries


# ---- running ------------------------------------------------------------------------------------
class Runner:
    """Computes the entries a setting has not stored yet."""

    def __init__(self, setting: Setting, bundles: dict):
        self.setting, self.bundles, self._oracle_tables, self._gain = setting, bundles, None, None

    def run(self, entry: Entry) -> Run:
        s, c = self.setting, self.setting.config
        if entry.kind == "peer":
            frames, fractions, wall = generate_with_peer(s.pipe, PEERS[entry.method], entry.settings, s.prompts, s.seeds,
                                                         c.steps, c.guidance, s.calibration)
        else:
            frames, fractions, wall = generate_with(s.pipe, self.policy(entry), s.prompts, s.seeds, c.steps, c.guidance)
        return s.score(entry, frames, fractions, wall)

    def policy(self, entry: Entry):
        s = self.setting
        if entry.kind == "learned":
            return self.bundles[entry.method].policy(entry.knob)
        fulls = fulls_for_budget(entry.knob, s.config.steps)
        if entry.kind == "schedule":
            order, basis = UNIFORM[entry.method]
            return FixedSchedule.uniform(s.config.steps, fulls / s.config.steps, forecast=order, forecast_basis=basis)
        if entry.kind == "dp":
            return FixedSchedule.per_sample([t.schedule(fulls) for t in self.oracle_tables()])
        if entry.kind == "oracle":
            return FixedSchedule.per_sample(self.searched(entry.knob).schedules, s.config.oracle_search.forecast_basis)
        return make_baseline(entry.method, calibration=s.calibration, num_blocks=num_blocks(s.pipe.transformer),
                             **entry.settings)

    def searched(self, budget: float) -> SearchResult:
        """The searched oracle's schedules at `budget` (searched once, stored with the runs)."""
        s, c = self.setting, self.setting.config
        stored = s.stored_search(budget)
        if stored is not None and stored[0] == s.search_inputs(budget):
            return stored[1]
        result = search(s.pipe, s.prompts, s.seeds, s.reference, budget, self.search_starts(budget), c.steps,
                        c.guidance, num_blocks(s.pipe.transformer), c.oracle_search, s.log)
        s.log(f"oracle search, budget {budget:g}: {result.cpu_seconds / 60:.1f} CPU minutes, "
              f"{result.wall_seconds / 60:.1f} minutes")
        atomic_write_text(s.search_path(budget), json.dumps({"inputs": s.search_inputs(budget),
                                                             "result": result.as_dict()}, allow_nan=False))
        return result

    def search_starts(self, budget: float) -> dict[str, list[list[Action]]]:
        """The schedules the search starts from: the DP's (where the model has a gain profile), the uniform ones,
        TaylorSeer's best setting within the budget and the best learned policy at the budget (from their stored
        runs), each as the runtime realised it on these pairs."""
        s, c = self.setting, self.setting.config
        pairs = (s.prompts, s.seeds, c.steps, c.guidance)
        starts = {}
        if self.has_gain():
            fulls = fulls_for_budget(budget, c.steps)
            starts["oracle-dp"] = [t.schedule(fulls) for t in self.oracle_tables()]
        for name in ("uniform", "uniform-f1", "uniform-f2"):
            starts[name] = realise(s.pipe, self.policy(Entry(name, budget, "schedule", "budget")), *pairs)
        best = [s.best_within(sweep_entries(BASELINES["taylorseer"], "baseline", True), budget), s.best_learned(budget)]
        for run in filter(None, best):
            starts[run.entry.key] = realise(s.pipe, self.policy(run.entry), *pairs)
        return starts

    def has_gain(self) -> bool:
        try:
            self.oracle_gain()
            return True
        except CachepilotError:
            return False

    def oracle_tables(self):
        """The DP oracle's segment tables for these pairs, forecasts included (measured once, stored with the runs)."""
        if self._oracle_tables is None:
            s, c = self.setting, self.setting.config
            gain = self.oracle_gain()
            path = s.dir / "oracle_tables.npz"
            stored = s.read(path, _segment_arrays)
            if stored is None:
                s.log("oracle: measuring segment tables")
                tables, _ = measure_segments(s.pipe, list(zip(s.prompts, s.seeds)), c.steps, c.guidance, gain=gain,
                                             forecast=True)
                stored = np.stack([t.errors for t in tables]), np.stack([t.forecast for t in tables])
                atomic_write_npz(path, errors=stored[0], forecast=stored[1])
            self._oracle_tables = [SegmentTable(e, DEFAULT_MAX_GAP, gain, f) for e, f in zip(*stored)]
        return self._oracle_tables

    def oracle_gain(self) -> np.ndarray:
        if self._gain is not None:
            return self._gain
        s, c = self.setting, self.setting.config
        gain = stored_gain(s.weights / GAIN_FILE, s.model_hash, c.steps, c.guidance) if s.weights else None
        if gain is None:
            raise CachepilotError(f"the oracle needs the model's error-amplification profile ({GAIN_FILE} beside the "
                                  f"weights, for {c.steps} steps and guidance {c.guidance:g}); `cachepilot train "
                                  "--algo distill` measures one in its run folder: copy it there, or leave out the oracle")
        self._gain = gain
        return gain


@dataclass
class Ablation:
    setting: Setting
    runs: list[Run]  # the reference first
    points: list  # ablation_report.Point per run: means, speedups, Pareto marks


def ablate(config: AblationConfig, out, log=print, progress: bool = True) -> Ablation:
    """Run (or reuse) every entry, then write the report into `out`."""
    out = checks.folder(out)
    setting = Setting(config, out, log)
    bundles = learned_policies(setting)
    entries = plan(setting, bundles)
    runner = Runner(setting, bundles)
    if any(e.kind == "dp" for e in entries):
        try:
            runner.oracle_gain()
        except CachepilotError as error:
            if "oracle-dp" in config.methods.split(","):
                raise
            log(f"skipping the DP oracle (the searched one starts without it): {error}")
            entries = [e for e in entries if e.kind != "dp"]
    setting.load_reference()
    stored = {e: setting.stored(e) for e in entries}
    missing = [e for e, run in stored.items() if run is None]
    log(f"{len(entries)} runs, {len(entries) - len(missing)} already stored in {setting.dir}")
    bar = tqdm(total=len(missing), desc="ablation", unit="run", disable=not progress or not missing)
    for entry in entries:
        if entry.kind == "oracle":  # its inputs name the best learned run, which may have been made just above
            stored[entry] = setting.stored(entry)
        if stored[entry] is None:
            bar.set_postfix_str(entry.key)
            stored[entry] = runner.run(entry)
            bar.update()
    bar.close()
    runs = [setting.reference_run(), *stored.values()]
    return Ablation(setting, runs, write_report(out, setting, runs))
