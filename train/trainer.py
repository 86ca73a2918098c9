"""What every trainer shares: its run folder, the final validation against the uniform schedule, the policy card."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.evaluation.validation import evaluate_student, evaluate_uniform, summary_table
from cachepilot.policies.learned import PolicyNet, lowest_budget
from cachepilot.policies.policy_file import PolicyBundle, PolicyCard, load_policy, model_config_hash, save_policy


def run_folder(out, run_dir=None) -> Path:
    """Where a training run keeps what it reuses on a rerun (default: beside the policy, `<out>.run`); made by the
    first file the run writes, so a run refused before it starts leaves nothing behind."""
    if run_dir is not None:
        return checks.folder(run_dir)
    out = Path(out).absolute()
    if not out.name:
        raise InvalidInputError(f"{out} cannot hold a policy beside its run folder; give --out a folder below it")
    return checks.folder(out.with_name(out.name + ".run"))


def feasible_budgets(budgets, eval_budgets, steps: int, log=print) -> tuple[float, ...]:
    """Refuse training budgets that a `steps`-step generation cannot keep (its first step computes in full); of the
    validation budgets, those it can keep (the others are left out, said in one line)."""
    floor = lowest_budget(checks.count("steps", steps))
    low = [f"{b:g}" for b in budgets if b < floor - 1e-9]
    if low:
        raise InvalidInputError(f"budgets {', '.join(low)} cannot be kept in {steps}-step generations: their first step "
                                f"computes in full, {floor:.3g} of the compute; train for budgets of at least that, or "
                                "for more steps")
    kept = tuple(b for b in eval_budgets if b >= floor - 1e-9)
    if len(kept) < len(eval_budgets):
        log(f"validation leaves out budgets under {floor:.3g}, which {steps}-step generations cannot keep")
    return kept or tuple(sorted(set(budgets)))


def validated_policy(net: PolicyNet, episodes, val, training: dict, eval_budgets, student: dict | None = None,
                     log=print, trained: tuple | None = None) -> tuple[PolicyBundle, str]:
    """The trained network as a policy with its card, after its final validation scores at the primary setting (`val`'s:
    student vs the uniform schedule at each of `eval_budgets`), and their table. `student`: the network's scores when
    the caller has them; `trained`: the (steps, guidance) ranges it was trained over (None: the primary setting)."""
    student = student or evaluate_student(val, net, eval_budgets)
    uniform = evaluate_uniform(val, eval_budgets)
    table = summary_table(student, uniform)
    log(f"validation, {len(val.pairs)} pairs, {val.steps} steps, guidance {val.guidance}:\n{table}")
    steps_range, guidance_range = trained or (None, None)
    card = PolicyCard(model=episodes.model, model_config_hash=model_config_hash(episodes.pipe), actions=episodes.actions,
                      num_blocks=episodes.num_blocks, observation=episodes.observation_spec,
                      budget_range=episodes.budget_range, steps=val.steps, guidance=val.guidance,
                      steps_range=steps_range, guidance_range=guidance_range, hidden=net.hidden, training=training,
                      results={"split": "val", "pairs": len(val.pairs),
                               "learned": {str(b): v for b, v in student.items()},
                               "uniform": {str(b): v for b, v in uniform.items()}})
    return PolicyBundle(net, card), table


class Trainer:
    """What `Distiller` and `PPOTrainer` share: a run over a `RunSpec` whose reusable state lives in `run_dir`;
    `learn()` returns the trained policy, `save(out)` writes its policy file."""

    def __init__(self, spec, config, run_dir, log=print):
        self.spec, self.config, self.run_dir, self.log = spec, config, checks.folder(run_dir), log
        self.policy: PolicyBundle | None = None
        self.table: str | None = None  # the final validation table, learned vs uniform

    def training_record(self, algorithm: str, started: float, **details) -> dict:
        """The card's training section: the algorithm, its config, what it was trained on (a path to a prompts file
        may not last: only whether one was used) and the wall time since `started`, with the algorithm's `details`."""
        spec = self.spec
        split = spec.prompts if isinstance(spec.prompts, str) else "prompts file"
        trained_on = {"model": spec.model.name, "steps": spec.steps, "guidance": spec.guidance, "pairs": spec.pairs,
                      "val_pairs": spec.val_pairs, "budgets": list(spec.budgets), "split": split,
                      **({"settings": [[s.steps, s.guidance] for s in spec.settings]} if spec.settings else {})}
        return {"algorithm": algorithm, "config": asdict(self.config), "spec": trained_on,
                "train_pairs": len(spec.pair_list()), "split": split,
                "wall_minutes": round((time.perf_counter() - started) / 60, 1), **details}

    def save(self, out) -> PolicyBundle:
        """Write the learned policy as a policy file at `out`; the policy as read back from it."""
        if self.policy is None:
            raise InvalidInputError("nothing to save yet: call learn() first")
        save_policy(out, self.policy.net, self.policy.card)
        return load_policy(out)
