"""Search space: which ranges a study puts in play, and how a trial samples a full Recipe.

Architectures and optimizers sample their own knobs (their spaces sit beside their factories in
`models` and `optim`); this module adds what every trial shares: architecture, batch size,
learning rate (log), epochs, optimizer, schedule, weight decay and input normalisation. A study
narrows any of them by name, and a family (`narrow`) narrows the study's space further: the value
of the study's scientific parameter, everything it leaves open tuned as a nuisance parameter.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any

import optuna

from bench import data, models, optim
from bench.train import Recipe


class SpaceError(ValueError):
    """A study's search space names something unknown or holds an impossible range."""


def _check_range(name: str, lo: float, hi: float, positive: bool = True) -> None:
    if lo > hi:
        raise SpaceError(f"{name} range ({lo}, {hi}) has low > high")
    if positive and lo <= 0:
        raise SpaceError(f"{name} range ({lo}, {hi}) must be > 0")


def _is_number(value: Any, whole: bool = False) -> bool:
    """An int (or, unless `whole`, a float); a bool is not a number here."""
    return isinstance(value, int if whole else int | float) and not isinstance(value, bool)


def _is_interval(value: Any, whole: bool = False) -> bool:
    """A (low, high) pair of numbers; tuples of choices such as (False, True) are not."""
    return (isinstance(value, tuple) and len(value) == 2
            and all(_is_number(v, whole) for v in value))


def _interval(what: str, value: Any, whole: bool) -> tuple:
    """`value` as a (low, high) pair: one number means that fixed value (`lr=1e-3`)."""
    if _is_number(value, whole):
        return (value, value)
    if not _is_interval(value, whole):
        kind = "whole numbers" if whole else "numbers"
        raise SpaceError(f"{what}={value!r}: expected a (low, high) pair of {kind}, or one "
                         f"{kind[:-1]} for a fixed value")
    return value


def _choices(what: str, value: Any, kind: type, example: tuple) -> tuple:
    """`value` as a non-empty tuple of `kind`; one number means that one choice (`(256,)`)."""
    if kind is int and _is_number(value, whole=True):
        return (value,)
    if not isinstance(value, tuple) or not value or not all(
            isinstance(v, kind) and not (kind is int and isinstance(v, bool)) for v in value):
        raise SpaceError(f"{what} must be a tuple of choices, e.g. {what}={example!r}; got "
                         f"{value!r}")
    return value


def _check_knob(what: str, value: Any, default: Any) -> None:
    """A knob's range has its default's form: whole numbers for an integer knob such as
    `width` (suggest_int), numbers for a float knob, a tuple of choices for a categorical one."""
    if _is_interval(default):
        whole = _is_interval(default, whole=True)
        if not _is_interval(value, whole):
            kind = "whole numbers" if whole else "numbers"
            raise SpaceError(f"{what}={value!r}: expected a (low, high) pair of {kind}, like "
                             f"its default {default!r}")
        _check_range(what, *value, positive=False)
    elif not isinstance(value, tuple) or not value:
        raise SpaceError(f"{what}={value!r}: expected a non-empty tuple of choices, like its "
                         f"default {default!r}")


def _check_names(kind: str, names: tuple[str, ...], valid: list[str]) -> None:
    if not names:
        raise SpaceError(f"no {kind} given; valid: {', '.join(valid)}")
    for name in names:
        if name not in valid:
            raise SpaceError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class Space:
    """Ranges for one study; `*_ranges` map a registered name to keyword ranges of its space.

    Tuples of names or values are choices; (low, high) pairs of lr, epochs and weight decay are
    ranges. `normalization` names `data.NORMALIZATIONS`; with several, a trial samples one.
    One number where a range or a batch size belongs fixes that value: `lr=1e-3` is
    (1e-3, 1e-3), `epochs=3` is (3, 3), `batch_size=256` is (256,). lr and weight decay are
    sampled log-scaled, so their ranges are > 0, except `weight_decay=0` (no decay) alone.
    Epochs are whole numbers. A wrong form is refused when the Space is made, naming the field,
    the value and the form expected; names and ranges are checked against the registries by
    `validate`, as each registered knob's range against its default's form (an integer knob such
    as the MLP's `width` takes whole numbers).
    """

    archs: tuple[str, ...] = ("mlp", "cnn")
    batch_size: tuple[int, ...] = (64, 128, 256, 512)
    lr: tuple[float, float] = (1e-4, 1e-1)
    epochs: tuple[int, int] = (2, 10)
    optimizers: tuple[str, ...] = ("sgd", "adam", "adamw", "rmsprop")
    schedules: tuple[str, ...] = ("constant", "step", "cosine", "onecycle")
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    arch_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    optimizer_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedule_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    normalization: tuple[str, ...] = ("mnist",)

    def __post_init__(self) -> None:
        """Each field in its one form, or one line naming the field, value and form expected."""
        for name in CHOICES:
            kind = int if name == "batch_size" else str
            value = _choices(name, getattr(self, name), kind, _DEFAULTS[name])
            object.__setattr__(self, name, value)
        for name in INTERVALS:
            value = _interval(name, getattr(self, name), whole=name == "epochs")
            object.__setattr__(self, name, value)
        for name in RANGES:
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, dict) for k, v in value.items()):
                raise SpaceError(f"{name}={value!r}: expected a dict of a registered name to its "
                                 "knobs' ranges, e.g. {'mlp': {'width': (32, 512)}}")

    def validate(self, narrowed: bool = False) -> None:
        """Raise SpaceError naming the bad value and the valid choices.

        `narrowed`: a family's narrowing, which keeps the study's ranges of the names it took
        out of play (`{"archs": ("cnn",)}` keeps the MLP's); those are skipped, not refused.
        """
        archs = self.archs
        _check_names("architecture", archs, models.list_models())
        _check_names("normalization", self.normalization, list(data.NORMALIZATIONS))
        _check_names("optimizer", self.optimizers, sorted(optim.OPTIMIZERS))
        _check_names("schedule", self.schedules, sorted(optim.SCHEDULES))
        spaces = {**{a: models.get_model(a).space for a in archs},
                  **{o: optim.OPTIMIZERS[o].space for o in self.optimizers},
                  **{s: optim.SCHEDULES[s].space for s in self.schedules}}
        for ranges in (self.arch_ranges, self.optimizer_ranges, self.schedule_ranges):
            for name, kwargs in ranges.items():
                if name not in spaces and narrowed:
                    continue
                if name not in spaces:
                    raise SpaceError(f"ranges given for {name!r}, which is not in play; "
                                     f"in play: {', '.join(spaces)}")
                space = spaces[name]
                known = list(inspect.signature(space).parameters)[1:] if space else []
                defaults = _space_defaults(space)
                for key, value in kwargs.items():
                    if key not in known:
                        raise SpaceError(f"{name} has no range {key!r}; valid: "
                                         f"{', '.join(known) or '(none)'}")
                    _check_knob(f"{name}.{key}", value, defaults[key])
        if not self.batch_size or min(self.batch_size) <= 0:
            raise SpaceError(f"batch sizes {self.batch_size} must all be > 0")
        _check_range("lr", *self.lr)
        _check_range("epochs", *self.epochs)
        if self.weight_decay != (0, 0):  # exactly 0 is "no decay"; a range is log-sampled
            if self.weight_decay[0] <= 0:
                raise SpaceError(f"weight_decay range {self.weight_decay} must be > 0 (it is "
                                 "sampled log-scaled); weight_decay=0 alone means no decay")
            _check_range("weight_decay", *self.weight_decay)

    def sample(self, trial: optuna.Trial) -> Recipe:
        """Define-by-run: every name a trial suggests is prefixed by what owns it.

        The input normalisation is data, not part of the Recipe: `normalization_of` reads it.
        """
        archs = self.archs
        arch = trial.suggest_categorical("arch", list(archs)) if len(archs) > 1 else archs[0]
        if len(self.normalization) > 1:
            trial.suggest_categorical("normalization", list(self.normalization))
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
            weight_decay=trial.suggest_float("weight_decay", *self.weight_decay,
                                             log=self.weight_decay[0] > 0),
            schedule=sched,
            schedule_kwargs=optim.schedule_space(sched, trial,
                                                 **self.schedule_ranges.get(sched, {})),
        )



    def normalization_of(self, trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
        """The input normalisation a trial trains on: sampled, or the space's only one."""
        return trial.params.get("normalization", self.normalization[0])


CHOICES = ("archs", "optimizers", "schedules", "batch_size", "normalization")
INTERVALS = ("lr", "epochs", "weight_decay")
RANGES = {"arch_ranges": ("archs", models.get_model),
          "optimizer_ranges": ("optimizers", lambda n: optim.OPTIMIZERS[n]),
          "schedule_ranges": ("schedules", lambda n: optim.SCHEDULES[n])}
_DEFAULTS = {name: f.default for name, f in Space.__dataclass_fields__.items()
             if name in CHOICES}


def _space_defaults(space: Any) -> dict[str, Any]:
    """The ranges a space function samples when a study narrows none of them."""
    if not space:
        return {}
    return {k: p.default for k, p in list(inspect.signature(space).parameters.items())[1:]}


def _default_ranges(entry: Any) -> dict[str, Any]:
    """The ranges a registered space function samples when a study narrows none of them."""
    return _space_defaults(entry.space)


def _one_form(value: Any, interval: bool) -> list:
    """A range as floats, choices sorted: ("sgd", "adam") is ("adam", "sgd")."""
    return [float(v) for v in value] if interval else sorted(set(value), key=repr)


def canonical(space: Space) -> dict[str, Any]:
    """What a space samples, in one form: choices sorted, ranges as floats, each registered
    space in play with its defaults filled in, ranges for names not in play dropped. Two spaces
    with the same canonical form are the same space, however they were written."""
    out: dict[str, Any] = {name: _one_form(getattr(space, name), name in INTERVALS)
                           for name in (*CHOICES, *INTERVALS)}
    for key, (owners, lookup) in RANGES.items():
        out[key] = {}
        for name in sorted(getattr(space, owners)):
            defaults = _default_ranges(lookup(name))
            ranges = {**defaults, **getattr(space, key).get(name, {})}
            out[key][name] = {k: _one_form(v, _is_interval(defaults.get(k)))
                              for k, v in sorted(ranges.items())}
    return out


def _within(what: str, value: Any, allowed: Any, choices: bool = False) -> None:
    """`value` must narrow `allowed`: a sub-interval of an interval, a subset of choices."""
    if not choices and _is_interval(allowed):
        if not _is_interval(value) or not allowed[0] <= value[0] <= value[1] <= allowed[1]:
            raise SpaceError(f"{what}={value!r} is not a range inside the study's {allowed!r}")
        return
    if not isinstance(value, tuple) or not value:
        raise SpaceError(f"{what} must be a non-empty tuple of choices from {tuple(allowed)!r}; "
                         f"got {value!r}")
    if outside := [v for v in value if v not in allowed]:
        raise SpaceError(f"{what}: {outside[0]!r} is not among the study's choices "
                         f"{tuple(allowed)!r}")


SAMPLERS = ("tpe", "random", "qmc")  # SAMPLER=: the study file's own (TPE), random, quasi-random


def family_samplers(families: dict[str, Any]) -> dict[str, str | None]:
    """The sampler a family names (`{"sampler": "random"}`: the search method as the scientific
    parameter), else None: the run's SAMPLER. Not a Space field, since it is how the space is
    searched, not what it holds."""
    named = {}
    for family, fields in families.items():
        name = fields.get("sampler") if isinstance(fields, dict) else None
        if name is not None and name not in SAMPLERS:
            raise SpaceError(f"family {family!r}: sampler={name!r}; valid: "
                             f"{', '.join(SAMPLERS)}")
        named[family] = name
    return named


def narrow(space: Space, family: str, fields: Any) -> Space:
    """The study's space narrowed by one family's fields; refuses anything it does not allow.

    Any Space field may be narrowed: choices to a subset (`{"optimizers": ("sgd",)}`), ranges to
    a sub-range (`{"lr": (1e-3, 1e-2)}`, or one value: `{"lr": 1e-3}`), and a registered space's
    ranges by name (`{"arch_ranges": {"mlp": {"batch_norm": (True,)}}}`). `{"weight_decay": 0}`
    (no decay) is allowed under any weight-decay range, as its limit.
    """
    example = "e.g. {'archs': ('mlp',)}"
    if not isinstance(fields, dict):
        raise SpaceError(f"family {family!r} must be a dict of the Space fields it narrows, "
                         f"{example}; got {fields!r}")
    valid = [*CHOICES, *INTERVALS, *RANGES]
    changes: dict[str, Any] = {}
    for key, value in fields.items():
        if key not in valid:
            raise SpaceError(f"family {family!r}: unknown field {key!r}; valid: "
                             f"{', '.join(valid)}")
        if key == "archs" and value == ():
            raise SpaceError(f"family {family!r} has no architecture; choose from "
                             f"{space.archs!r}")
        if key in INTERVALS and _is_number(value, whole=key == "epochs"):
            value = (value, value)  # one number fixes the value, as in a Space
        if key == "batch_size" and _is_number(value, whole=True):
            value = (value,)
        if key == "weight_decay" and value == (0, 0):
            changes[key] = value  # no decay: the limit of any log range, a family of its own
            continue
        if key in CHOICES or key in INTERVALS:
            _within(f"family {family!r}: {key}", value, getattr(space, key), key in CHOICES)
            changes[key] = value
            continue
        owners, lookup = RANGES[key]
        if not isinstance(value, dict):
            raise SpaceError(f"family {family!r}: {key} must map names to ranges, e.g. "
                             "{'mlp': {'batch_norm': (True,)}}; got " + repr(value))
        merged = dict(getattr(space, key))
        for name, ranges in value.items():
            if not isinstance(ranges, dict):
                raise SpaceError(f"family {family!r}: {key}.{name}={ranges!r}: expected a dict "
                                 "of its knobs' ranges, e.g. {'batch_norm': (True,)}")
            in_play = fields.get(owners, getattr(space, owners))
            if name not in in_play:
                raise SpaceError(f"family {family!r}: {key} names {name!r}, which is not in "
                                 f"play; in play: {', '.join(in_play)}")
            allowed = {**_default_ranges(lookup(name)), **getattr(space, key).get(name, {})}
            for k, v in ranges.items():
                if k not in allowed:
                    raise SpaceError(f"family {family!r}: {name} has no range {k!r}; valid: "
                                     f"{', '.join(allowed) or '(none)'}")
                _within(f"family {family!r}: {key}.{name}.{k}", v, allowed[k])
            merged[name] = {**merged.get(name, {}), **ranges}
        changes[key] = merged
    return replace(space, **changes)
