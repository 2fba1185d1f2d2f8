"""Search space: which ranges a study puts in play, and how a trial samples a full Recipe.

Architectures and optimizers sample their own knobs (their spaces sit beside their factories in
`models` and `optim`); this module adds what every trial shares: batch size, learning rate (log),
epochs, optimizer, schedule and weight decay. A study narrows any of them by name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import optuna

from bench import models, optim
from bench.train import Recipe


class SpaceError(ValueError):
    """A study's search space names something unknown or holds an impossible range."""


def _check_range(name: str, lo: float, hi: float, positive: bool = True) -> None:
    if lo > hi:
        raise SpaceError(f"{name} range ({lo}, {hi}) has low > high")
    if positive and lo <= 0:
        raise SpaceError(f"{name} range ({lo}, {hi}) must be > 0")


def _is_interval(value: Any) -> bool:
    """A (low, high) pair of numbers; tuples of choices such as (False, True) are not."""
    return (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))


def _check_names(kind: str, names: tuple[str, ...], valid: list[str]) -> None:
    if not names:
        raise SpaceError(f"no {kind} given; valid: {', '.join(valid)}")
    for name in names:
        if name not in valid:
            raise SpaceError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class Space:
    """Ranges for one study; `*_ranges` map a registered name to keyword ranges of its space."""

    batch_size: tuple[int, ...] = (64, 128, 256, 512)
    lr: tuple[float, float] = (1e-4, 1e-1)
    epochs: tuple[int, int] = (2, 10)
    optimizers: tuple[str, ...] = ("sgd", "adam", "adamw", "rmsprop")
    schedules: tuple[str, ...] = ("constant", "step", "cosine", "onecycle")
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    arch_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    optimizer_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedule_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self, archs: tuple[str, ...]) -> None:
        """Raise SpaceError naming the bad value and the valid choices."""
        _check_names("architecture", archs, models.list_models())
        _check_names("optimizer", self.optimizers, sorted(optim.OPTIMIZERS))
        _check_names("schedule", self.schedules, sorted(optim.SCHEDULES))
        spaces = {**{a: models.get_model(a).space for a in archs},
                  **{o: optim.OPTIMIZERS[o].space for o in self.optimizers},
                  **{s: optim.SCHEDULES[s].space for s in self.schedules}}
        for ranges in (self.arch_ranges, self.optimizer_ranges, self.schedule_ranges):
            for name, kwargs in ranges.items():
                if name not in spaces:
                    raise SpaceError(f"ranges given for {name!r}, which is not in play; "
                                     f"in play: {', '.join(spaces)}")
                space = spaces[name]
                known = list(inspect.signature(space).parameters)[1:] if space else []
                for key, value in kwargs.items():
                    if key not in known:
                        raise SpaceError(f"{name} has no range {key!r}; valid: "
                                         f"{', '.join(known) or '(none)'}")
                    if _is_interval(value):
                        _check_range(f"{name}.{key}", *value, positive=False)
        if not self.batch_size or min(self.batch_size) <= 0:
            raise SpaceError(f"batch sizes {self.batch_size} must all be > 0")
        _check_range("lr", *self.lr)
        _check_range("epochs", *self.epochs)
        _check_range("weight_decay", *self.weight_decay)

    def sample(self, trial: optuna.Trial, archs: tuple[str, ...]) -> Recipe:
        """Define-by-run: every name a trial suggests is prefixed by what owns it."""
        arch = trial.suggest_categorical("arch", list(archs)) if len(archs) > 1 else archs[0]
        entry = models.get_model(arch)
        arch_kwargs = entry.space(trial, **self.arch_ranges.get(arch, {})) if entry.space else {}
        opt = trial.suggest_categorical("optimizer", list(self.optimizers))
        sched = trial.suggest_categorical("schedule", list(self.schedules))
        return Recipe(
            arch=arch,
            arch_kwargs=arch_kwargs,
            batch_size=trial.suggest_categorical("batch_size", list(self.batch_size)),
            lr=trial.suggest_float("lr", *self.lr, log=True),
            epochs=trial.suggest_int("epochs", *self.epochs),
            optimizer=opt,
            optimizer_kwargs=optim.optimizer_space(opt, trial,
                                                   **self.optimizer_ranges.get(opt, {})),
            weight_decay=trial.suggest_float("weight_decay", *self.weight_decay, log=True),
            schedule=sched,
            schedule_kwargs=optim.schedule_space(sched, trial,
                                                 **self.schedule_ranges.get(sched, {})),
        )

