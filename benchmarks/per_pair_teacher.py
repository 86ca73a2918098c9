"""Can a student learn the searched oracle's per-pair adaptation from its signals? Cross-fitted on the test pairs.

    python benchmarks/per_pair_teacher.py [--budget 0.5] [--pairs 16] [--rounds 2] [--signals a,b]
                                          [--out results/ablation]

The searched oracle (`cachepilot ablate`) fits one schedule to each (prompt, seed). A policy sees only the
runtime's signals, so the question is whether those signals say enough about a pair to pick its schedule. This
teaches a fresh student to follow each pair's own searched schedule (`ScheduleFollower`, one episode per pair
and round, DAgger rounds as in distillation) on one half of the test pairs, and scores it on both halves; then
the halves swap. Beside it: the oracle, the best learned policy and the uniform schedule from the ablation's
stored runs on the same halves. A student that learned the adaptation would close the gap to the oracle on
the pairs it was not taught. `--signals` adds registered signals to the student's observation, to ask whether
they would say enough. A probe, not a training recipe: it teaches on test pairs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from cachepilot.envs import CacheEpisodes, EpisodeConfig, RunSpec
from cachepilot.evaluation.harness import ScoredPairs, run_method
from cachepilot.infer.ablation import AblationConfig, Setting
from cachepilot.policies.learned import LearnedPolicy
from cachepilot.policies.trained_range import TrainedRange
from cachepilot.provenance import machine_summary
from cachepilot.train.distill import DistillConfig, fit
from cachepilot.train.rollouts import ScheduleFollower, run_episodes


class PerPairTeacher:
    """Follows each pair's own schedule, as the distillation teacher follows one shared schedule."""

    def __init__(self, schedules, episodes: CacheEpisodes):
        self.followers = [ScheduleFollower(s, episodes.actions, episodes.num_blocks) for s in schedules]

    def act(self, pair, step, last_full, previous_full, spent, budget, reached=None, valid=None) -> int:
        return self.followers[pair].act(step, spent, valid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="DAgger rounds after the teacher's own")
    parser.add_argument("--signals", default="", help="extra signals for the observation, comma-separated")
    parser.add_argument("--out", default="results/ablation")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    setting = Setting(AblationConfig(pairs=args.pairs), Path(args.out))
    budget, steps, guidance = args.budget, setting.config.steps, setting.config.guidance
    stored_search = setting.stored_search(budget)
    if stored_search is None:
        raise SystemExit(f"no searched oracle at budget {budget:g} in {setting.dir}; run `cachepilot ablate` first")
    search = stored_search[1]
    episodes = CacheEpisodes(RunSpec(setting.config.model, "test", args.pairs, steps=steps, guidance=guidance,
                                 budgets=budget, pipe=setting.pipe),
                         EpisodeConfig(extra_signals=tuple(n for n in args.signals.split(",") if n)))
    if episodes.pairs != list(zip(setting.prompts, setting.seeds)):
        raise SystemExit("the environment's test pairs are not the ablation's")
    reference = episodes.store.outputs(episodes.pairs)
    halves = [list(range(0, args.pairs, 2)), list(range(1, args.pairs, 2))]
    teacher, config = PerPairTeacher(search.schedules, episodes), DistillConfig()

    def student_psnr(net, pairs: list[int]) -> float:
        policy = LearnedPolicy(net, episodes.observation_spec, episodes.actions, episodes.num_blocks, budget,
                               trained=TrainedRange((steps, steps)))
        scored = ScoredPairs([episodes.pairs[i][0] for i in pairs], [episodes.pairs[i][1] for i in pairs], steps, guidance,
                             reference[pairs])
        results, _ = run_method(episodes.pipe, policy, scored, "learned", budget)
        return float(np.mean([r.psnr for r in results]))

    stored = {name: np.asarray(scores, dtype=float) for name, scores in search.start_psnr.items()}
    learned = max((n for n in stored if n.startswith("learned-")), key=lambda n: np.nanmean(stored[n]))
    learned_name = learned.split("@")[0].removeprefix("learned-")
    print(f"machine: {machine_summary()}; toy-wan, budget {budget:g}, {args.pairs} test pairs in two halves; "
          f"observation: {', '.join(episodes.observation_spec.names)}")
    print(f"| taught on | scored on | oracle | {learned_name} (the ablation's run) | uniform | "
          + " | ".join(f"student, round {r}" for r in range(args.rounds + 1)) + " |")
    print("|---" * (5 + args.rounds + 1) + "|")
    for taught, other in ((halves[0], halves[1]), (halves[1], halves[0])):
        gathered, net, scores = [], None, {tuple(taught): [], tuple(other): []}
        for round_ in range(args.rounds + 1):
            rollouts = run_episodes(episodes, [(p, budget) for p in taught], teacher, net=net, batch=len(taught))
            gathered.append(rollouts.arrays())
            merged = {k: np.concatenate([a[k] for a in gathered]) for k in ("obs", "masks", "labels")}
            with tempfile.TemporaryDirectory() as run_dir:
                net = fit(merged, Path(run_dir), config, round_, log=lambda *_: None)
            for pairs in scores:
                scores[pairs].append(student_psnr(net, list(pairs)))
        name = "even" if taught[0] == 0 else "odd"
        for pairs, row in scores.items():
            where = "taught" if list(pairs) == taught else "held out"
            print(f"| {name} pairs | {where} | {np.mean(np.asarray(search.psnr)[list(pairs)]):.2f} | "
                  f"{np.mean(stored[learned][list(pairs)]):.2f} | "
                  f"{np.mean(stored['uniform'][list(pairs)]):.2f} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()
