"""What a policy is trained, searched or validated on, said once: the model, the pairs, the setting, the budgets.

A `RunSpec` is built once (by the command line, or in Python) and handed to the environments, the search and the
trainers, which each add a config of their own saying *how* they work (`EpisodeConfig`, `SearchConfig`,
`DistillConfig`, `PPOConfig`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.models.registry import ModelSource
from cachepilot.models.toy_wan.scenes import load_split

from .references import ReferenceStore


@dataclass(frozen=True, order=True)
class Setting:
    """A generation setting a policy meets: the step count and the guidance scale."""

    steps: int
    guidance: float

    def __post_init__(self):
        object.__setattr__(self, "steps", checks.count("steps", self.steps))
        object.__setattr__(self, "guidance", checks.guidance(self.guidance))

    @classmethod
    def of(cls, value) -> "Setting":
        return value if isinstance(value, Setting) else cls(*value)

    def __str__(self) -> str:
        return f"{self.steps} steps, guidance {self.guidance:g}"


def setting_cross(steps, guidance, primary: Setting) -> tuple[Setting, ...]:
    """Every step count at the primary guidance and every guidance at the primary step count: a cross through the
    primary setting, whose cost grows with the sum of the two lists rather than their product."""
    cells = {primary, *(Setting(s, primary.guidance) for s in steps), *(Setting(primary.steps, g) for g in guidance)}
    return tuple(sorted(cells))


@dataclass(frozen=True)
class RunSpec:
    """The model (with its device and dtype), the (prompt, seed) pairs, the steps, the guidance, the budgets and the
    reference store. Pair i is prompt i of `prompts` with seed i; the validation pairs come from `val_prompts`.

    `steps` and `guidance` are the primary setting (where validation runs during training and the card's results
    are measured); `settings` lists every setting the run covers (empty: the primary one alone).

    `pipe` is a pipeline already loaded for `model` (tests, notebooks); without one the spec loads it once, on first
    use. `references` is a store folder, a `ReferenceStore`, or None for the default folder."""

    model: ModelSource | str = "toy-wan"
    prompts: str | tuple[str, ...] = "train"
    pairs: int | None = 16  # None: every prompt
    val_prompts: str | tuple[str, ...] = "val"
    val_pairs: int | None = 8
    steps: int = 50
    guidance: float = 5.0
    budgets: tuple[float, ...] = (0.15, 0.2, 0.3, 0.4, 0.5, 0.6)
    references: object = None
    settings: tuple[Setting, ...] = ()
    pipe: object = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen: normalise once)
        set_("model", ModelSource.of(self.model))
        set_("prompts", _prompts(self.prompts))
        set_("val_prompts", _prompts(self.val_prompts))
        set_("steps", checks.count("steps", self.steps))
        set_("guidance", checks.guidance(self.guidance))
        set_("budgets", _budgets(self.budgets))
        if not isinstance(self.settings, (tuple, list)):
            raise InvalidInputError(f"settings is a list of (steps, guidance) settings, got {self.settings!r}")
        settings = sorted({Setting.of(s) for s in self.settings})
        set_("settings", () if settings in ([], [self.primary]) else tuple(sorted({*settings, self.primary})))
        if isinstance(self.references, (str, Path)):
            set_("references", checks.folder(self.references))

    @property
    def device(self) -> str | None:
        return self.model.device

    @property
    def budget_range(self) -> tuple[float, float]:
        return min(self.budgets), max(self.budgets)

    @property
    def primary(self) -> Setting:
        return Setting(self.steps, self.guidance)

    def setting_list(self) -> tuple[Setting, ...]:
        """Every setting the run covers, the primary one included."""
        return self.settings or (self.primary,)

    @property
    def steps_range(self) -> tuple[int, int]:
        steps = [s.steps for s in self.setting_list()]
        return min(steps), max(steps)

    @property
    def guidance_range(self) -> tuple[float, float]:
        guidance = [s.guidance for s in self.setting_list()]
        return min(guidance), max(guidance)

    def at(self, setting) -> "RunSpec":
        """The same run at one setting alone."""
        setting = Setting.of(setting)
        return replace(self, steps=setting.steps, guidance=setting.guidance, settings=())

    def pipeline(self):
        """The pipeline: the one given, else loaded once."""
        return self.pipe if self.pipe is not None else self._loaded

    @cached_property
    def _loaded(self):
        return self.model.load()

    def reference_store(self) -> ReferenceStore:
        """The store of the pairs' uncached outputs: the one given, else one at `references` (None: the default
        folder) for this pipeline, step count and guidance."""
        store = self.references
        if isinstance(store, ReferenceStore):
            if (store.steps, store.guidance) == (self.steps, self.guidance):
                return store
            return ReferenceStore(store.pipe, store.model, self.steps, self.guidance, root=store.root)
        return ReferenceStore(self.pipeline(), self.model.name, self.steps, self.guidance, root=store)

    def pair_list(self) -> list[tuple[str, int]]:
        """The training (prompt, seed) pairs."""
        return make_pairs(self.model, self.prompts, self.pairs)

    def validation(self, pipe=None, references=None) -> "RunSpec":
        """The same run on its validation pairs: on `pipe` and `references` where given (a second pipeline, another
        store object), else on this spec's pipeline and store."""
        return replace(self, prompts=self.val_prompts, pairs=self.val_pairs,
                       pipe=self.pipeline() if pipe is None else pipe,
                       references=self.references if references is None else references)


def _prompts(prompts):
    if isinstance(prompts, str):
        return prompts
    if isinstance(prompts, (list, tuple)):
        return tuple(prompts)
    raise InvalidInputError(f"prompts must be a split name or a list of prompts, got {type(prompts).__name__}")


def _budgets(budgets) -> tuple[float, ...]:
    """One fraction of full compute, or several (a list, or a (low, high) range to draw from)."""
    if isinstance(budgets, numbers.Real):
        budgets = (budgets,)
    elif not isinstance(budgets, (tuple, list)) or not budgets:
        raise InvalidInputError(f"budget must be a fraction of full compute or a list of them, got {budgets!r}")
    return tuple(checks.budget(b) for b in budgets)


def make_pairs(model, prompts, pairs: int | None) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: prompt i of the list (a toy-wan split name or explicit prompts) with seed i."""
    model = ModelSource.of(model).name
    if isinstance(prompts, str):
        if model != "toy-wan":
            raise InvalidInputError(f"prompt split {prompts!r} exists for toy-wan only; pass a list of prompts for "
                                    f"{model!r}")
        prompts = load_split(prompts)
    prompts = [checks.prompt(p) for p in prompts]
    if not prompts:
        raise InvalidInputError("no prompts given")
    count = len(prompts) if pairs is None else checks.count("pairs", pairs, high=len(prompts))
    return [(prompts[i], i) for i in range(count)]
