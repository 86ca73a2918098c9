"""Which runs an ablation makes: the learned policies it can use, and every entry the config asks for."""

from __future__ import annotations

from pathlib import Path

from cachepilot.errors import CachepilotError
from cachepilot.evaluation.peers import PEERS, available_peers, unsupported_reason
from cachepilot.policies.learned import lowest_budget
from cachepilot.policies.policy_file import PolicyFileError, load_policy
from cachepilot.policies.registry import BASELINES, calibration_covers
from cachepilot.policies.schedule import uniform_full_steps

from .config import UNIFORM, Entry, Kind, sweep_entries
from .setting import Setting


def learned_name(folder) -> str:
    """A policy folder's method name in the ablation: `policy-ppo` is `learned-ppo`."""
    return "learned-" + Path(folder).name.removeprefix("policy-")


def learned_policies(setting: Setting) -> dict[str, object]:
    """name -> PolicyBundle for each policy folder named in `config.policies`, each of which must load and fit this
    pipeline, step count and guidance; without names, for each policy-* folder beside the weights that does (the others are
    reported and skipped)."""
    config = setting.config
    named = config.policies is not None
    folders = config.policies if named else (
        sorted(str(p) for p in setting.weights.glob("policy-*") if p.is_dir()) if setting.weights else [])
    bundles = {}
    for folder in folders:
        name = learned_name(folder)
        try:
            bundle = load_policy(folder)
            bundle.check_pipeline(setting.pipe, config.steps, config.guidance)
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
    baselines = [n for n in BASELINES if n != "none" and n not in UNIFORM]  # the uniform schedule: its own entries
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
            entries += sweep_entries(b, Kind.BASELINE, config.sweeps)
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
            entries += sweep_entries(p, Kind.PEER, config.sweeps)
    floor = lowest_budget(config.steps)
    evenly = len(uniform_full_steps(config.steps, 0.0)) / config.steps  # the uniform schedule's first and last step
    scheduled = {}
    for group, low in (("the uniform schedules", evenly), ("the oracles", floor)):
        scheduled[group] = [float(b) for b in config.oracle_budgets if b >= low - 1e-9]
        if len(scheduled[group]) < len(config.oracle_budgets):
            setting.log(f"{group} skip budgets under {low:.3g}: a {config.steps}-step generation cannot keep them")
    for name in UNIFORM:  # the oracle's FULL count, evenly spaced: what the oracle's placement is worth
        if name in wanted:
            entries += [Entry(name, b, Kind.SCHEDULE, "budget") for b in scheduled["the uniform schedules"]]
    if bundles and any(b < floor for b in config.budgets):
        setting.log(f"learned policies skip budgets under {floor:.3g}: a {config.steps}-step generation computes its "
                    "first step in full")
    for name, bundle in bundles.items():
        if name in wanted or "learned" in wanted:
            lo, hi = bundle.card.budget_range
            entries += [Entry(name, float(b), Kind.LEARNED, "budget") for b in config.budgets
                        if lo <= b <= hi and b >= floor - 1e-9]
    if "learned" in wanted and not any(e.kind is Kind.LEARNED for e in entries):
        skip("learned", "no policy beside the weights fits this model, step count and --budgets")
    if "oracle-dp" in wanted or "oracle" in wanted:  # last: the search starts from the runs above
        entries += [Entry("oracle-dp", b, Kind.DP, "budget") for b in scheduled["the oracles"]]
    if "oracle" in wanted:
        entries += [Entry("oracle", b, Kind.ORACLE, "budget") for b in scheduled["the oracles"]]
    return entries
