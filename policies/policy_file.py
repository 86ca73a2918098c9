"""Policy files: a directory with `policy.safetensors` (the network) and `policy.json` (its card).

The card says what the network is for and how to feed it: schema version, model id and a hash of the
model config it was trained for, the observation spec, the action set, the budget range, the steps and
guidance it was trained with, the network shape, and the training provenance and results. `load_policy`
checks all of it, the card against its own checksum and the weights against the card's sha256, before
anything runs. Writing is atomic
(the directory appears complete or not at all).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from cachepilot import checks
from cachepilot.errors import CachepilotError, InvalidInputError
from cachepilot.integrity import IntegrityError, seal, unseal
from cachepilot.io import atomic_directory
from cachepilot.models.adapters import num_blocks
from cachepilot.provenance import identifying_config
from cachepilot.runtime import FULL, Action

from .learned import LearnedPolicy, PolicyNet
from .observation import ObservationSpec
from .trained_range import TrainedRange, span

SCHEMA = 1
WEIGHTS, CARD, README = "policy.safetensors", "policy.json", "README.md"


class PolicyFileError(CachepilotError):
    pass


def model_config_hash(pipe_or_transformer) -> str:
    """What a policy is tied to: the transformer's class and identifying config (not where it was loaded from)."""
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    text = json.dumps({"class": type(transformer).__name__, "config": identifying_config(transformer)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PolicyCard:
    model: str
    model_config_hash: str
    actions: tuple[Action, ...]
    num_blocks: int
    observation: ObservationSpec
    budget_range: tuple[float, float]
    steps: int
    guidance: float
    hidden: tuple[int, ...] = (64, 64)
    training: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    steps_range: tuple[int, int] | None = None  # the step counts it was trained over (None: `steps` alone)
    guidance_range: tuple[float, float] | None = None  # the guidance scales (None: `guidance` alone)

    def __post_init__(self):
        trained = TrainedRange(self.steps_range or (self.steps, self.steps),
                               self.guidance_range or (self.guidance, self.guidance))
        if not (trained.steps[0] <= self.steps <= trained.steps[1]
                and trained.guidance[0] <= self.guidance <= trained.guidance[1]):
            raise ValueError(f"the trained setting ({self.steps} steps, guidance {self.guidance:g}) lies outside the "
                             f"trained ranges {list(trained.steps)} and {list(trained.guidance)}")
        self.steps_range, self.guidance_range = trained.steps, trained.guidance

    def trained(self, extrapolate: bool = False) -> TrainedRange:
        return TrainedRange(self.steps_range, self.guidance_range, extrapolate)

    def to_dict(self, weights_sha256: str) -> dict:
        return {"schema": SCHEMA, "kind": "cachepilot-policy", "model": self.model,
                "model_config_hash": self.model_config_hash, "actions": [str(a) for a in self.actions],
                "num_blocks": self.num_blocks, "observation": self.observation.to_dict(),
                "budget_range": list(self.budget_range), "steps": self.steps, "guidance": self.guidance,
                "steps_range": list(self.steps_range), "guidance_range": list(self.guidance_range),
                "network": {"type": "mlp", "hidden": list(self.hidden), "activation": "tanh"},
                "weights_sha256": weights_sha256, "training": self.training, "results": self.results}

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyCard":
        if data.get("kind") != "cachepilot-policy":
            raise ValueError("not a cachepilot policy card")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"policy schema {data.get('schema')!r}; this cachepilot reads schema {SCHEMA}")
        network = data["network"]
        if not isinstance(network, dict) or network.get("type") != "mlp" or network.get("activation") != "tanh":
            raise ValueError(f"unsupported network {network}")
        if not isinstance(network.get("hidden"), list):
            raise ValueError(f"network hidden widths must be a list, got {network.get('hidden')!r}")
        if not isinstance(data["budget_range"], list) or len(data["budget_range"]) != 2:
            raise ValueError(f"budget range must be [low, high], got {data['budget_range']!r}")
        lo, hi = (checks.budget(b, "budget range bound") for b in data["budget_range"])
        if lo > hi:
            raise ValueError(f"budget range [{lo}, {hi}] is empty")
        for name in ("model", "model_config_hash"):
            if not isinstance(data[name], str) or not data[name]:
                raise ValueError(f"{name} must be a non-empty string, got {data[name]!r}")
        for name in ("training", "results"):
            if not isinstance(data.get(name, {}), dict):
                raise ValueError(f"{name} must be a JSON object, got {data[name]!r}")
        num_blocks = checks.count("num_blocks", data["num_blocks"])
        return cls(model=data["model"], model_config_hash=data["model_config_hash"],
                   actions=_action_set(data["actions"], num_blocks), num_blocks=num_blocks,
                   observation=ObservationSpec.from_dict(data["observation"]), budget_range=(lo, hi),
                   steps=checks.count("steps", data["steps"]), guidance=checks.guidance(data["guidance"]),
                   hidden=tuple(checks.count("hidden width", h) for h in network["hidden"]),
                   training=data.get("training", {}), results=data.get("results", {}),
                   steps_range=_range(data, "steps_range"), guidance_range=_range(data, "guidance_range"))


def _range(data: dict, name: str) -> tuple | None:
    """A card's trained range; a card written before ranges were recorded has none (its one setting is its range)."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"{name} must be [low, high], got {value!r}")
    return tuple(value)


def _action_set(names, num_blocks: int) -> tuple[Action, ...]:
    """A card's actions: FULL first, each once, each one the model's blocks can take."""
    if not isinstance(names, list) or not all(isinstance(a, str) for a in names):
        raise ValueError(f"actions must be a list of action names, got {names!r}")
    actions = tuple(Action.parse(a) for a in names)
    if not actions or actions[0] != FULL:
        raise ValueError(f"the action set must start with FULL, got {', '.join(map(str, actions)) or 'none'}")
    if len(set(actions)) != len(actions):
        raise ValueError("the action set names an action twice")
    unfit = [str(a) for a in actions if not a.fits(num_blocks)]
    if unfit:
        raise ValueError(f"{', '.join(unfit)} do not fit a model of {num_blocks} blocks")
    return actions


@dataclass
class PolicyBundle:
    """A loaded policy file: the network and its card. `policy(budget)` makes the runtime policy."""

    net: PolicyNet
    card: PolicyCard
    path: Path | None = None
    weights_sha256: str = ""  # checked against the card on load: identifies these weights

    def policy(self, budget: float, budget_guard: bool = True, extrapolate: bool = False) -> LearnedPolicy:
        """The runtime policy at `budget`; `extrapolate`: run at step counts and guidance scales outside the trained
        ones too, with a warning, instead of refusing them."""
        budget = checks.budget(budget)
        lo, hi = self.card.budget_range
        if not lo - 1e-9 <= budget <= hi + 1e-9:
            raise PolicyFileError(f"budget {budget} is outside this policy's trained range [{lo}, {hi}]")
        return LearnedPolicy(self.net, self.card.observation, self.card.actions, self.card.num_blocks, budget,
                             budget_guard, self.card.trained(extrapolate))

    def check_pipeline(self, pipe, steps: int | None = None, guidance: float | None = None,
                       extrapolate: bool = False) -> None:
        """Refuse a pipeline (or transformer) of another model, or a step count or guidance scale outside the trained
        ones (where they are given; with `extrapolate`, those are let through: the runtime policy warns)."""
        actual = model_config_hash(pipe)
        if actual != self.card.model_config_hash:
            raise PolicyFileError(f"this policy was trained for {self.card.model!r} (config hash "
                                  f"{self.card.model_config_hash}); the pipeline's transformer has config hash {actual}")
        blocks = num_blocks(getattr(pipe, "transformer", pipe))
        wrong = [str(a) for a in self.card.actions if not a.fits(blocks)]
        if self.card.num_blocks != blocks or wrong:
            raise PolicyFileError(f"this policy's action set ({', '.join(map(str, self.card.actions))}, for "
                                  f"{self.card.num_blocks} blocks) does not fit a transformer of {blocks} blocks")
        if extrapolate:
            return
        try:
            self.card.trained().check(steps, None if guidance is None else checks.guidance(guidance))
        except InvalidInputError as err:
            raise PolicyFileError(str(err)) from None


def save_policy(path, net: PolicyNet, card: PolicyCard) -> Path:
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    blob = save_safetensors(tensors)
    card_text = json.dumps(seal(card.to_dict(hashlib.sha256(blob).hexdigest())), indent=2, sort_keys=True) + "\n"
    with atomic_directory(path) as tmp:
        (tmp / WEIGHTS).write_bytes(blob)
        (tmp / CARD).write_text(card_text)
        (tmp / README).write_text(readme(card, net))
    return path


def readme(card: PolicyCard, net: PolicyNet) -> str:
    """The human-readable side of the card (policy.json is the authority)."""
    training = card.training
    lines = [f"# cachepilot policy for {card.model}", "",
             f"- algorithm: {training.get('algorithm', '?')}; network: MLP {list(card.hidden)} tanh, "
             f"{net.num_parameters} parameters",
             f"- actions: {', '.join(map(str, card.actions))}; observation: {', '.join(card.observation.names)}",
             f"- trained for {span(card.steps_range)} steps, guidance {span(card.guidance_range)}, budgets "
             f"{card.budget_range[0]:g}-{card.budget_range[1]:g} (computed fraction of full compute); validated at "
             f"{card.steps} steps, guidance {card.guidance:g}",
             f"- training data: {training.get('train_pairs', '?')} (prompt, seed) pairs of the {training.get('split', '?')} "
             f"split; wall time {training.get('wall_minutes', '?')} min", ""]
    results = card.results
    if results.get("learned"):
        lines += [f"Validation ({results.get('pairs')} {results.get('split')} pairs; PSNR vs the uncached output):", "",
                  "| budget | PSNR dB | computed fraction | uniform schedule PSNR dB | uniform computed fraction |",
                  "|---|---|---|---|---|"]
        for b, r in results["learned"].items():
            u = results.get("uniform", {}).get(b, {})
            lines.append(f"| {float(b):.2f} | {r['psnr']:.2f} | {r['computed_fraction']:.3f} | "
                         f"{u.get('psnr', float('nan')):.2f} | {u.get('computed_fraction', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def network_shapes(obs_size: int, num_actions: int, hidden) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of `PolicyNet(obs_size, num_actions, hidden)`, by state-dict key."""
    shapes, width = {}, obs_size
    for i, size in enumerate(hidden):
        shapes[f"body.{2 * i}.weight"], shapes[f"body.{2 * i}.bias"] = (size, width), (size,)
        width = size
    return shapes | {"head.weight": (num_actions, width), "head.bias": (num_actions,)}


def load_policy(path) -> PolicyBundle:
    path = Path(path)
    if not path.is_dir():
        raise PolicyFileError(f"no policy at {path} (a policy is a directory with {CARD} and {WEIGHTS})")
    try:
        data = unseal(json.loads((path / CARD).read_text()), str(path / CARD))
        card = PolicyCard.from_dict(data)
    except FileNotFoundError:
        raise PolicyFileError(f"{path} has no {CARD}") from None
    except IntegrityError as err:
        raise PolicyFileError(f"{err}; train or reinstall the policy") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PolicyFileError(f"{path / CARD} is not a valid policy card: {err}") from None
    try:
        blob = (path / WEIGHTS).read_bytes()
    except FileNotFoundError:
        raise PolicyFileError(f"{path} has no {WEIGHTS}") from None
    if hashlib.sha256(blob).hexdigest() != data.get("weights_sha256"):
        raise PolicyFileError(f"{path / WEIGHTS} does not match the checksum in its card (truncated or altered)")
    try:
        tensors = load_safetensors(blob)
    except (RuntimeError, SafetensorError) as err:
        raise PolicyFileError(f"{path / WEIGHTS} does not fit the network its card describes: {err}") from None
    expected = network_shapes(card.observation.size, len(card.actions), card.hidden)
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:  # compared before the network is built: a card cannot make it allocate what it likes
        raise PolicyFileError(f"{path / WEIGHTS} does not fit the network its card describes: it holds "
                              f"{', '.join(f'{k} {list(v)}' for k, v in sorted(found.items()))}")
    net = PolicyNet(card.observation.size, len(card.actions), card.hidden)
    net.load_state_dict(tensors)
    if any(not torch.isfinite(p).all() for p in net.parameters()):
        raise PolicyFileError(f"{path / WEIGHTS} holds NaN or Inf weights")
    return PolicyBundle(net.eval(), card, path, data["weights_sha256"])
