"""The end of a training run: validation scores against the uniform schedule, then the policy file with its card."""

from __future__ import annotations

from pathlib import Path

from cachepilot import checks
from cachepilot.errors import InvalidInputError

from cachepilot.evaluation.validation import evaluate_student, evaluate_uniform, summary_table
from cachepilot.policies.learned import PolicyNet, lowest_budget
from cachepilot.policies.policy_file import PolicyCard, load_policy, model_config_hash, save_policy


def run_folder(out, run_dir=None) -> Path:
    """Where a training run keeps what it reuses on a rerun (default: beside the policy, `<out>.run`); made by the
    first file the run writes, so a run refused before it starts leaves nothing behind."""
    return checks.folder(run_dir or Path(out).with_name(Path(out).name + ".run"))


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


def save_trained_policy(out, net: PolicyNet, core, val, budget_range, training: dict, eval_budgets, log=print,
                        student: dict | None = None):
    """Final validation scores (student vs the uniform schedule), then the policy file with its card.
    `student`: the network's validation scores at `eval_budgets` when the caller already has them."""
    student = student or evaluate_student(val, net, eval_budgets)
    uniform = evaluate_uniform(val, eval_budgets)
    table = summary_table(student, uniform)
    log(f"validation, {len(val.pairs)} pairs, {core.steps} steps, guidance {core.guidance}:\n{table}")
    card = PolicyCard(model=core.model, model_config_hash=model_config_hash(core.pipe), actions=core.actions,
                      num_blocks=core.num_blocks, observation=core.spec, budget_range=tuple(budget_range),
                      steps=core.steps, guidance=core.guidance, hidden=net.hidden, training=training,
                      results={"split": "val", "pairs": len(val.pairs),
                               "learned": {str(b): v for b, v in student.items()},
                               "uniform": {str(b): v for b, v in uniform.items()}})
    save_policy(out, net, card)
    return load_policy(out), table
