"""The end of a training run: validation scores against the uniform schedule, then the policy file with its card."""

from __future__ import annotations

from pathlib import Path

from cachepilot.evaluation.validation import evaluate_student, evaluate_uniform, summary_table
from cachepilot.policies.learned import PolicyNet
from cachepilot.policies.policy_file import PolicyCard, load_policy, model_config_hash, save_policy


def make_run_dir(out, run_dir=None) -> Path:
    """Where a training run keeps what it reuses on a rerun (default: beside the policy, `<out>.run`)."""
    path = Path(run_dir or Path(out).with_name(Path(out).name + ".run"))
    path.mkdir(parents=True, exist_ok=True)
    return path


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
