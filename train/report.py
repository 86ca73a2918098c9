"""Score a trained network on validation pairs through the real inference path, and save it with its card."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cachepilot.infer.evaluate import run_method
from cachepilot.policies.learned import LearnedPolicy, PolicyNet
from cachepilot.policies.policy_file import PolicyCard, load_policy, model_config_hash, save_policy
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.train.oracle import fulls_for_budget


def make_run_dir(out, run_dir=None) -> Path:
    """Where a training run keeps what it reuses on a rerun (default: beside the policy, `<out>.run`)."""
    path = Path(run_dir or Path(out).with_name(Path(out).name + ".run"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _reference(core) -> np.ndarray:
    return np.stack([r.output.numpy() for r in core.store.get_many(core.pairs, progress=False)])


def _score(core, reference: np.ndarray, policy, method: str, knob: float) -> dict:
    prompts, seeds = [p for p, _ in core.pairs], [s for _, s in core.pairs]
    results, _ = run_method(core.pipe, policy, prompts, seeds, reference, core.steps, core.guidance, method, knob)
    return {"psnr": float(np.mean([r.psnr for r in results])), "ssim": float(np.mean([r.ssim for r in results])),
            "computed_fraction": float(np.mean([r.computed_fraction for r in results])), "pairs": len(results)}


def evaluate_student(core, net: PolicyNet, budgets) -> dict[float, dict]:
    """The network as a LearnedPolicy at each budget, on `core`'s pairs (one batched generation per budget)."""
    reference = _reference(core)
    return {float(b): _score(core, reference, LearnedPolicy(net, core.spec, core.actions, core.num_blocks, b), "learned", b)
            for b in budgets}


def evaluate_uniform(core, budgets) -> dict[float, dict]:
    """The static baseline's schedule family at the same number of FULL steps as each budget allows."""
    reference = _reference(core)
    return {float(b): _score(core, reference, FixedSchedule.uniform(core.steps, fulls_for_budget(b, core.steps) / core.steps),
                             "uniform", b) for b in budgets}


def summary_table(student: dict, uniform: dict) -> str:
    lines = ["| budget | learned PSNR dB | learned compute | uniform PSNR dB | uniform compute |", "|---|---|---|---|---|"]
    for b in student:
        s, u = student[b], uniform[b]
        lines.append(f"| {b:.2f} | {s['psnr']:.2f} | {s['computed_fraction']:.3f} | {u['psnr']:.2f} | {u['computed_fraction']:.3f} |")
    return "\n".join(lines)


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
