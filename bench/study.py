"""Optuna study runner: storage, samplers, pruners, objective, equal budgets per family.

A study file declares a `Study`. It is run as `replicates` whole copies under study seeds SEED,
SEED+1, ... (each its own split, samplers and trial seeds), so its answer can be checked against
its own variance. Each (replicate, family) pair (a family is a value of the scientific
parameter, written as the Space fields it narrows: `{"optimizers": ("sgd",)}`) gets its own
Optuna sub-study in one storage (`bench.storage`: a journal under results/<name>/, or a database),
with its own seeded sampler. `schedule` hands trials to whichever unit has used the smallest share
of its budget, counted from storage, so every family gets the same number of trials, or the same
training seconds, in every replicate, whichever processes ran them. Worker processes run the same
loop against the same storage, so a study can be spread over processes and machines without a
scheduler. Only `data.load_train` is called here: a study never opens the test files.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import Progress

from bench import curves, data, host, optim, provenance, storage, store, train
from bench.models import count_params
from bench.outcomes import FAILED, check_failures, counts, frames, importances, stop_reason
from bench.space import Space, SpaceError, canonical, family_samplers, narrow
from bench.tables import comparison, config_table, progress_bars, rich_table, summary_table

SMOKE_SUBSET, SMOKE_VAL, SMOKE_TRIALS = 3000, 600, 6
RUN_KEYS = ("trials", "timeout", "device", "seed", "smoke", "precision", "fast",
            "replicates", "sampler")  # stored, joined
CONTINUED_KEYS = ("seed", "device", "precision", "sampler")  # a continued study keeps these
AUTO_WORKERS = 8
POLL_S = 1.0  # how often a worker with nothing to start looks at the others' trials again


class Interrupted(Exception):
    """Ctrl-C asked the study to stop; the trial ends FAIL and its configuration is retried."""


class TrialFailed(Exception):
    """A trial diverged, ran out of memory or raised; it ends FAIL and the study goes on."""


@dataclass(frozen=True)
class Study:
    """What a study file declares: its question, families, ranges, budget, sampler and pruner.

    `families` maps a family name to the Space fields it narrows (`space.narrow`); whatever a
    family leaves open is a nuisance parameter, tuned with the same budget in every family.
    `trials`, `timeout` and `replicates` are per device, {"cpu": ..., "cuda": ...} with both
    keys; one plain value means both devices (`timeout=120`, `trials=500`, `replicates=3`).
    A timeout of None or 0 is no limit. A field of the wrong form is refused when the Study is
    made (one line: the field, its value and the form expected); `check` then narrows the
    families of both devices, so a mistake in the GPU's half is found on a CPU too.
    """

    question: str
    families: dict[str, dict[str, Any]]
    space: Space
    cpu_space: Space | None = None
    cpu_families: dict[str, dict[str, Any]] | None = None  # when the CPU asks about other values
    # Per replicate: trials, or seconds of training (summed over worker processes), split
    # equally between the families.
    trials: dict[str, int] = field(default_factory=lambda: {"cpu": 100, "cuda": 100})
    timeout: dict[str, float | None] = field(default_factory=lambda: {"cpu": None, "cuda": None})
    # TPE with constant_liar: with several workers a running trial counts as a poor result, so
    # parallel processes do not all sample next to the same promising point. Hyperband on the
    # epochs, from one epoch up to the family's most.
    sampler: Callable[[int], optuna.samplers.BaseSampler] = (
        lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=8,
                                                constant_liar=True))
    pruner: Callable[[int], optuna.pruners.BasePruner] = (
        lambda max_epochs: optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max_epochs, reduction_factor=3))
    val_size: int = 10_000
    # Replicates: the study run again under another study seed (own split, samplers, trial
    # seeds), so that a family verdict rests on the spread between whole studies.
    replicates: dict[str, int] = field(default_factory=lambda: {"cpu": 3, "cuda": 5})

    def __post_init__(self) -> None:
        for name, value in _study_fields(self).items():
            object.__setattr__(self, name, value)


STUDY_DEVICES = ("cpu", "cuda")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_seconds(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0)


def _per_device(name: str, value: Any, ok: Callable[[Any], bool], form: str) -> dict[str, Any]:
    """{"cpu": v, "cuda": v} from one value for both devices, or the dict itself when valid."""
    if not isinstance(value, dict) and ok(value):
        return dict.fromkeys(STUDY_DEVICES, value)
    if (not isinstance(value, dict) or sorted(value) != sorted(STUDY_DEVICES)
            or not all(ok(v) for v in value.values())):
        raise ValueError(f"Study.{name}={value!r}: expected {form} for both devices, or "
                         f"{{'cpu': {form}, 'cuda': {form}}}")
    return dict(value)


def _study_fields(study: Study) -> dict[str, Any]:
    """The per-device fields in their one form; any field of the wrong form is one line."""
    def expect(name: str, ok: bool, form: str) -> None:
        if not ok:
            raise ValueError(f"Study.{name}={getattr(study, name)!r}: expected {form}")

    expect("question", isinstance(study.question, str) and study.question.strip() != "",
           "a non-empty string (the study file's docstring: question=__doc__)")
    expect("families", isinstance(study.families, dict),
           "a dict of family name -> the Space fields it narrows")
    expect("cpu_families", study.cpu_families is None or isinstance(study.cpu_families, dict),
           "None or a dict of family name -> the Space fields it narrows")
    expect("space", isinstance(study.space, Space), "a Space(...)")
    expect("cpu_space", study.cpu_space is None or isinstance(study.cpu_space, Space),
           "None or a Space(...)")
    expect("sampler", callable(study.sampler), "a function of a seed returning an Optuna sampler")
    expect("pruner", callable(study.pruner),
           "a function of the most epochs returning an Optuna pruner")
    expect("val_size", _is_count(study.val_size), "a whole number of images > 0")
    return {
        "trials": _per_device("trials", study.trials, _is_count, "a whole number > 0"),
        "timeout": _per_device("timeout", study.timeout, _is_seconds,
                               "seconds >= 0 or None (no limit)"),
        "replicates": _per_device("replicates", study.replicates, _is_count,
                                  "a whole number > 0"),
    }


def check(study: Study, where: str = "") -> None:
    """Narrow each device's families of its space (`family_spaces`), the GPU's and the CPU's,
    whichever device runs now: SpaceError (one line, ending with `where` and which half)."""
    for device in STUDY_DEVICES:
        cpu = device == "cpu"
        try:
            family_spaces(families_for(study, device), _space_on(study, device))
        except SpaceError as exc:
            which = ("cpu_families" if cpu and study.cpu_families else "families") + " of " + (
                "cpu_space" if cpu and study.cpu_space else "space")
            raise SpaceError(f"{exc} ({where}{which})") from None


@dataclass(frozen=True)
class RunConfig:
    """One invocation's resolved settings (the CLI's overrides over the study's defaults)."""

    name: str
    trials: int
    timeout: float | None
    device: str
    seed: int
    smoke: bool
    results_dir: Path
    storage: str | None = None
    workers: int = 1
    precision: str = "fp32"  # resolved: "fp32" or "bf16" (train.resolve_precision)
    fast: bool = True  # train.build/fit speed paths; False: the eager loop (FAST=0)
    replicates: int = 1  # the whole study run again under study seeds SEED .. SEED+k-1
    sampler: str = "tpe"  # SAMPLERS: tpe = the study file's own; random, qmc: i.i.d. samplers

    @property
    def out(self) -> Path:
        return results_folder(self.results_dir, self.name, self.smoke)

    def public(self) -> dict:
        """The settings as printed and stored: a storage password never leaves the process."""
        return {**asdict(self), "storage": self.storage and storage.masked(self.storage)}


def results_folder(results_dir: Path, name: str, smoke: bool) -> Path:
    """Where a study's store lives; smoke runs keep apart from real ones."""
    return Path(results_dir) / (name + ("-smoke" if smoke else ""))


def default_workers(device: torch.device) -> int:
    """On a CPU one single-threaded process per core, up to AUTO_WORKERS (each holds its own
    copy of the data): small models gain little from intra-op threads, and on 2 cores two
    processes ran 1.8x the trials per minute of one (README Performance). On CUDA one, until
    several per GPU are measured."""
    return min(host.cores(), AUTO_WORKERS) if device.type == "cpu" else 1


def resolve(study: Study, name: str, device: torch.device, overrides: dict) -> RunConfig:
    """Study defaults for `device`, then overrides (already type-checked by the CLI)."""
    smoke = overrides.get("smoke", False)
    default_timeout = None if smoke else study.timeout.get(device.type)
    timeout = overrides.get("timeout", default_timeout)
    trials = overrides.get("trials", SMOKE_TRIALS if smoke else study.trials[device.type])
    return RunConfig(
        name=name,
        trials=trials,
        timeout=timeout or None,
        device=device.type,
        seed=overrides.get("seed", 0),
        smoke=smoke,
        results_dir=Path(overrides.get("results_dir", "results")),
        storage=overrides.get("storage"),
        workers=overrides.get("workers", min(default_workers(device), trials)),
        precision=train.resolve_precision(overrides.get("precision", "auto"), device),
        fast=overrides.get("fast", True),
        replicates=overrides.get("replicates", study.replicates[device.type]),
        sampler=overrides.get("sampler", "tpe"),
    )


SMOKE_EPOCHS = (1, 2)


def space_for(study: Study, cfg: RunConfig, smoke: bool | None = None) -> Space:
    """The study's space on cfg's device; under smoke (cfg.smoke unless `smoke` is given) with
    SMOKE_EPOCHS. Families narrow the space without smoke: `family_spaces(..., smoke=True)`."""
    space = _space_on(study, cfg.device)
    smoke = cfg.smoke if smoke is None else smoke
    return replace(space, epochs=SMOKE_EPOCHS) if smoke else space


def _space_on(study: Study, device: str) -> Space:
    return study.cpu_space if device == "cpu" and study.cpu_space else study.space


def families_for(study: Study, device: str) -> dict[str, dict[str, Any]]:
    return study.cpu_families if device == "cpu" and study.cpu_families else study.families


def family_spaces(families: dict[str, dict[str, Any]], space: Space,
                  smoke: bool = False) -> dict[str, Space]:
    """Each family's narrowing of `space`, refused in one line when it cannot be compared.

    Two families are the same space when they sample the same (`space.canonical`: choices in
    any order, a registered knob left at its default or written out). Each narrowed space is
    validated as the study's is (a float range for an integer knob is refused here, not at the
    first trial). `smoke` sets SMOKE_EPOCHS after narrowing, so a family that narrows the
    epochs runs under SMOKE=1 too; `space` is the study's own, not space_for's smoke one.
    """
    if not isinstance(families, dict) or len(families) < 2:
        raise SpaceError(f"a study compares at least two families; got {families!r}")
    space.validate()
    samplers = family_samplers(families)
    spaces = {f: narrow(space, f, {k: v for k, v in fields.items() if k != "sampler"}
                        if isinstance(fields, dict) else fields)
              for f, fields in families.items()}
    seen: dict[str, str] = {}
    for family, narrowed in spaces.items():
        try:
            narrowed.validate(narrowed=True)
        except SpaceError as exc:
            raise SpaceError(f"family {family!r}: {exc}") from None
        key = json.dumps([canonical(narrowed), samplers[family]], sort_keys=True, default=str)
        if key in seen:
            raise SpaceError(f"families {seen[key]!r} and {family!r} are the same space; "
                             "a family must narrow some field to a value of its own")
        seen[key] = family
    if smoke:
        spaces = {f: replace(s, epochs=SMOKE_EPOCHS) for f, s in spaces.items()}
    return spaces


def make_sampler(study: Study, name: str, seed: int) -> optuna.samplers.BaseSampler:
    """`tpe`: the study file's own sampler (TPE with constant_liar unless it declares another);
    `random` and `qmc` (scrambled Sobol): Optuna's i.i.d. samplers, for which expected-best
    tuning curves hold."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return study.sampler(seed)


def validate(study: Study, cfg: RunConfig) -> dict[str, Space]:
    """Everything that can be wrong with a study before any file is written."""
    spaces = family_spaces(families_for(study, cfg.device), space_for(study, cfg, smoke=False),
                           smoke=cfg.smoke)
    if cfg.trials <= 0:
        raise ValueError(f"TRIALS={cfg.trials} must be > 0")
    if cfg.replicates <= 0:
        raise ValueError(f"REPLICATES={cfg.replicates} must be > 0")
    return spaces


def derive_seed(*parts: object) -> int:
    """A stable seed named by its parts (base seed, family, trial, ...): the same on every run."""
    return zlib.crc32("/".join(map(str, parts)).encode())


Unit = tuple[int, str]  # (replicate, family): one Optuna sub-study
WAIT = "wait"  # nothing to start now, but trials of other processes still run


@dataclass(frozen=True)
class Tally:
    """A (replicate, family) sub-study as the scheduler sees it, read from storage, so every
    process of the study (and a rerun after a crash) counts the same budget."""

    done: int = 0  # trials that used budget: ran to an outcome (a divergence is one)
    running: int = 0  # trials running now, in any process
    queued: int = 0  # retries waiting: the configurations of lost trials
    seconds: float = 0.0  # charged: finished trials' wall time + running trials' time so far,
    # at least one epoch each (two processes must not both start a trial into the last epoch)
    epoch_s: float = 0.0  # the family's longest measured epoch; 0 before any epoch


def schedule(tallies: dict[Unit, Tally], quota: int, budget: float | None) -> Unit | str | None:
    """The unit to run a trial of next, WAIT, or None when the study is done.

    A unit can start a trial while it is under its trial quota (running trials count as taken)
    and, with a time budget, while at least one epoch of its family fits in what is left. A
    queued retry always runs, budget spent or not: a lost trial's configuration is never dropped
    and never left waiting. Replicates fill in order (a killed study keeps whole replicates), and
    within one the unit with the smallest share of its budget goes first, so families get equal
    budgets. With nothing to start, the study waits while any trial runs (it may die and be
    queued again), else it is done.
    """
    def share(t: Tally) -> float:
        return max((t.done + t.running) / quota, t.seconds / budget if budget else 0.0)

    ready = [u for u, t in tallies.items()
             if t.queued or (t.done + t.running < quota
                             and (budget is None or budget - t.seconds > t.epoch_s))]
    if ready:
        order = list(tallies)
        return min(ready, key=lambda u: (not tallies[u].queued, u[0], share(tallies[u]),
                                         order.index(u)))
    return WAIT if any(t.running for t in tallies.values()) else None


def tallies(subs: dict[Unit, optuna.Study]) -> dict[Unit, Tally]:
    """Each unit's Tally from its trials in storage; the epoch time is the family's longest,
    over all its replicates (a median let a slow configuration's first epoch overrun a CPU
    budget by a third)."""
    trials = {u: sub.get_trials(deepcopy=False) for u, sub in subs.items()}
    epochs: dict[str, list[float]] = {}
    for (_, family), ts in trials.items():
        epochs.setdefault(family, []).extend(
            h["seconds"] for t in ts for h in t.user_attrs.get("epochs", []))
    now = datetime.now()
    out = {}
    for u, ts in trials.items():
        running = [t for t in ts if t.state == TrialState.RUNNING]
        seconds = sum(t.user_attrs.get("wall_seconds", 0.0) for t in ts if counts(t))
        epoch_s = max(epochs[u[1]], default=0.0)
        seconds += sum(max((now - t.datetime_start).total_seconds(), epoch_s) for t in running
                       if t.datetime_start)
        out[u] = Tally(done=sum(map(counts, ts)), running=len(running),
                       queued=sum(t.state == TrialState.WAITING for t in ts), seconds=seconds,
                       epoch_s=epoch_s)
    return out


def _space_hash(spaces: dict[str, Space], study: Study, precision: str,
                samplers: dict[str, str | None] | None = None) -> str:
    """What a continued study must share: each family's ranges, the split size, the training
    precision and the samplers families name (a study is not continued in other ones)."""
    spec = [{f: asdict(s) for f, s in spaces.items()}, study.val_size]
    if precision != "fp32":  # float32 studies keep the hash they had before precision existed
        spec.append(precision)
    if samplers and any(samplers.values()):  # likewise for studies before family samplers
        spec.append(samplers)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _objective(unit: Unit, space: Space, splits: Callable[[str], data.Split],
               device: torch.device, cfg: RunConfig, prov: dict,
               seconds_left: Callable[[], float] | None,
               progress: Progress, epoch_task,
               interrupt: threading.Event) -> Callable[[optuna.Trial], float]:
    replicate, family = unit

    def objective(trial: optuna.Trial) -> float:
        start, history, stop = time.perf_counter(), [], ""

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            nonlocal stop
            history.append(metrics)
            progress.advance(epoch_task)
            trial.report(metrics["val_acc"], epoch)
            last = trial.params["epochs"]
            if interrupt.is_set():
                stop = "interrupted"
            elif epoch < last and trial.should_prune():  # never prune a finished run
                stop = "pruned"
            elif (seconds_left is not None and epoch < last
                  and metrics["seconds"] > seconds_left()):
                stop = "budget"  # the next epoch would not end inside the family's budget
            return bool(stop)

        error = ""
        try:  # everything, so that a fault anywhere in the trial is recorded as such
            for k, v in storage.owner().items():  # first: who runs it, for the dead-process check
                trial.set_user_attr(k, v)
            recipe = replace(space.sample(trial), precision=cfg.precision)
            normalization = space.normalization_of(trial)
            split = splits(normalization)
            # A retry reruns the lost trial's seed, so it computes what that trial would have.
            seed = trial.user_attrs.get("seed", derive_seed(cfg.seed + replicate, family,
                                                            trial.number))
            for k, v in {**prov, "replicate": replicate, "arch": recipe.arch, "seed": seed,
                         "normalization": normalization, "recipe": recipe.to_dict()}.items():
                trial.set_user_attr(k, v)
            train.seed_everything(seed)
            model, opt, sched = train.build(recipe, len(split.x_train), device, fast=cfg.fast)
            trial.set_user_attr("params_count", count_params(model))
            progress.reset(epoch_task, total=recipe.epochs,
                           description=f"  {family} r{replicate} #{trial.number} epochs")
            train.fit(model, opt, sched, split, recipe.batch_size, recipe.epochs, seed, on_epoch,
                      graph=None if cfg.fast else False, precision=recipe.precision)
        except train.NonFiniteLoss:
            stop = "nonfinite"
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
            stop, error = "oom", _one_line(exc)
            exc.__traceback__ = None  # it holds the trial's frames: the model and its tensors
        except KeyboardInterrupt:
            stop = "interrupted"
            raise
        except Exception as exc:  # noqa: BLE001 - any fault of one trial must not end the study
            stop, error = "error", _one_line(exc)
            exc.__traceback__ = None
        finally:
            trial.set_user_attr("epochs", history)
            trial.set_user_attr("wall_seconds", time.perf_counter() - start)
            trial.set_user_attr("stop_reason", stop)
            if error:
                trial.set_user_attr("error", error)
        if stop in FAILED:
            model = opt = sched = None  # the traceback is gone too: release the memory now
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            raise TrialFailed(error or stop)
        if stop == "interrupted":
            raise Interrupted(f"interrupted after epoch {history[-1]['epoch']}")
        if stop:
            raise optuna.TrialPruned(f"{stop} after epoch {history[-1]['epoch']}")
        return history[-1]["val_acc"]

    return objective


def _settings_changed(stored: dict, cfg: RunConfig) -> str:
    """Which setting of a stored run differs from this one's, as `SEED 0 → 5`; '' when none.

    Trials, timeout and replicates may grow when a study is continued; these may not."""
    changed = [f"{k.upper()} {stored[k]} → {getattr(cfg, k)}" for k in CONTINUED_KEYS
               if k in stored and stored[k] != getattr(cfg, k)]
    return ", ".join(changed)


def _unit_name(prefix: str, unit: Unit) -> str:
    return f"{prefix}.r{unit[0]}.{unit[1]}"


def _check_folder(db: optuna.storages.BaseStorage, cfg: RunConfig, units: list[Unit],
                  space_hash: str, split_hashes: dict[int, str] | None = None) -> None:
    """Refuse, before anything is written, a storage whose study this run must not continue:
    other studies under this name, other settings (naming the one that differs), another search
    space, or (`split_hashes` given) trials of another split."""
    prefix, where = cfg.out.name, _where(cfg)
    names = {_unit_name(prefix, u): u for u in units}
    existing = set(optuna.get_all_study_names(db))
    ours = {n for n in existing if cfg.storage is None or n.split(".")[0] == prefix}
    other = sorted(n for n in ours if n not in names
                   and not re.fullmatch(rf"{re.escape(prefix)}\.r\d+\.[^.]+", n))
    if other:
        raise storage.StorageError(f"{where} holds other studies ({', '.join(other)}), not "
                                   f"{', '.join(names)}; choose another RESULTS_DIR")
    for name in sorted(ours):
        sid = db.get_study_id_from_name(name)
        if changed := _settings_changed(db.get_study_user_attrs(sid).get("run", {}), cfg):
            raise ValueError(f"{where} holds this study run with other settings ({changed}); "
                             "continue it with its own settings or choose another RESULTS_DIR")
        # Each hash on its own: a trial records them one after the other, so one killed (or
        # still starting) in between holds the first only.
        seen = {(k, t.user_attrs[k]) for t in db.get_all_trials(sid, False)
                for k in ("split_hash", "space_hash") if k in t.user_attrs}
        if {h for k, h in seen if k == "space_hash"} - {space_hash}:
            raise ValueError(f"{where} holds trials of another search space, split size or "
                             "precision (the study file changed); continue it with the file it "
                             "was run with or choose another RESULTS_DIR")
        unit = names.get(name)
        if split_hashes and unit and {h for k, h in seen if k == "split_hash"} - {
                split_hashes[unit[0]]}:
            raise ValueError(f"{where} holds replicate {unit[0]} on another split (the data or "
                             "the split code changed); choose another RESULTS_DIR")


def _sub_studies(study: Study, spaces: dict[str, Space], units: list[Unit], cfg: RunConfig,
                 db: optuna.storages.BaseStorage, joining: bool) -> dict[Unit, optuna.Study]:
    """One sub-study per (replicate, family), opened (or, unless joining, created) after every
    check passed."""
    prefix, existing = cfg.out.name, set(optuna.get_all_study_names(db))
    if joining and (missing := sorted(n for u in units
                                      if (n := _unit_name(prefix, u)) not in existing)):
        raise storage.StorageError(f"no study {missing[0]} in {_where(cfg)}; start it first with "
                                   f"`make study NAME={cfg.name}` and the same settings")
    return {u: optuna.create_study(storage=db, study_name=_unit_name(prefix, u),
                                   direction="maximize", load_if_exists=True,
                                   pruner=study.pruner(spaces[u[1]].epochs[1]))
            for u in units}


def _where(cfg: RunConfig) -> str:
    return storage.masked(cfg.storage) if cfg.storage else str(cfg.out / "optuna.journal")


def join(study: Study, name: str, overrides: dict, console: Console) -> Path:
    """Add a worker to a study that exists (`make worker`), with that study's own settings."""
    cfg = RunConfig(name=name, trials=1, timeout=None, device="cpu", seed=0,
                    smoke=overrides.get("smoke", False),
                    results_dir=Path(overrides.get("results_dir", "results")),
                    storage=overrides.get("storage"), workers=overrides.get("workers", 1))
    journal = cfg.out / "optuna.journal"
    if cfg.storage is None and not journal.is_file():
        raise storage.StorageError(f"no study at {journal}; start it first with "
                                   f"`make study NAME={name}`")
    db = storage.open_storage(cfg.storage, journal)
    found = optuna.get_all_study_names(db)
    # The first family of the GPU or the CPU families, whichever the study was started with.
    firsts = [_unit_name(cfg.out.name, (0, next(iter(f))))
              for f in (study.families, study.cpu_families) if f]
    first = next((n for n in firsts if n in found), firsts[0])
    if first not in found:
        raise storage.StorageError(f"no study {first} in {_where(cfg)}; start it first with "
                                   f"`make study NAME={name}` and the same settings")
    settings = db.get_study_user_attrs(db.get_study_id_from_name(first)).get("run")
    if not settings:
        raise storage.StorageError(f"{first} in {_where(cfg)} records no settings; continue it "
                                   f"once with `make study NAME={name}` first")
    device = train.resolve_device(settings.get("device", "cpu"))
    cfg = replace(cfg, **{k: v for k, v in settings.items() if k != "device"},
                  device=device.type)
    return run(study, cfg, console, joining=True, db=db)


def run(study: Study, cfg: RunConfig, console: Console, joining: bool = False,
        db: optuna.storages.BaseStorage | None = None) -> Path:
    """Run (or continue) the study, every replicate of it; returns its results folder.

    `joining`: this process is one more worker of a running study: it creates nothing, and
    failing dead trials left by earlier runs and queueing them again is the study command's job.
    """
    device = torch.device(cfg.device)
    spaces = validate(study, cfg)
    samplers = family_samplers(families_for(study, cfg.device))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # outcomes go to the store and table
    families = list(spaces)
    units = [(r, f) for r in range(cfg.replicates) for f in families]
    quota = math.ceil(cfg.trials / len(families))
    budget = cfg.timeout / len(families) if cfg.timeout else None
    space_hash = _space_hash(spaces, study, cfg.precision, samplers)
    out = cfg.out
    if not joining and (done := _finished(cfg, units, quota, budget, space_hash)) is not None:
        console.print(f"all {cfg.replicates} replicate(s) of every family have used their "
                      "budget and none is running or queued; nothing to do (raise TRIALS=, "
                      "TIMEOUT= or REPLICATES= to continue)")
        console.print(summary_table(done))
        return out
    if cfg.workers > 1:  # share the cores instead of each worker taking all of them
        torch.set_num_threads(host.threads_per_worker(cfg.workers))
    raw = data.load_train()
    # Each replicate is the study run again under study seed SEED + r: its own split, samplers
    # and trial seeds.
    splits = {r: splits_by_normalization(raw, SMOKE_VAL if cfg.smoke else study.val_size,
                                         cfg.seed + r, device,
                                         SMOKE_SUBSET if cfg.smoke else None)
              for r in range(cfg.replicates)}
    norm = spaces[families[0]].normalization[0]
    hashes = {r: s(norm).split_hash for r, s in splits.items()}
    prov = {**provenance.collect(device), "data_md5": json.dumps(splits[0](norm).md5,
                                                                 sort_keys=True),
            "space_hash": space_hash}
    db = db or storage.open_storage(cfg.storage, out / "optuna.journal")
    _check_folder(db, cfg, units, space_hash, hashes)
    subs = _sub_studies(study, spaces, units, cfg, db, joining)
    out.mkdir(parents=True, exist_ok=True)
    console.print(config_table(cfg.public() | {"out": out}, space_for(study, cfg),
                               prov["device"]))
    for (r, family), sub in subs.items():
        if not joining:
            if n := storage.fail_dead(sub, db):
                console.print(f"{family} replicate {r}: {n} trial(s) of a dead process marked "
                              "FAIL")
            storage.retry_lost(sub)
            sub.set_user_attr("run", {k: v for k, v in asdict(cfg).items()
                                      if k in RUN_KEYS})
        # Workers that start together must not draw the same configurations.
        seed = (cfg.seed + r, family, "sampler", len(sub.trials)) + (
            (os.getpid(),) if joining else ())
        sub.sampler = make_sampler(study, samplers[family] or cfg.sampler, derive_seed(*seed))

    with (out / "runs.jsonl").open("a") as fh:  # one line per invocation: config + provenance
        fh.write(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "role": "worker" if joining else "study", "config": cfg.public(),
                             "space": asdict(space_for(study, cfg)),
                             "families": families_for(study, cfg.device),
                             "question": study.question, "split_hashes": hashes, **prov},
                            default=str) + "\n")

    mine: list[str] = []  # how this process's trials ended
    ended: list[optuna.trial.FrozenTrial] = []  # the trial optimize() just ran

    def save() -> None:
        with storage.store_lock(out):  # a snapshot of the whole storage, newest last
            store.write_study(out, *frames(subs))

    _warm_up(spaces.values(), device)
    # The first Ctrl-C stops at the next epoch boundary, so no journal write is cut in half;
    # a second one stops at once. Workers started here get each Ctrl-C passed on.
    interrupt = threading.Event()
    children = _spawn(cfg) if cfg.workers > 1 else []

    def on_sigint(signum: int, frame: object) -> None:
        for p in children:
            p.send_signal(signal.SIGINT)
        if interrupt.is_set():
            raise KeyboardInterrupt
        interrupt.set()
        console.print("stopping after this epoch (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with progress_bars(console, transient=False) as progress:
            # One bar per family, counting every process's trials over all replicates; the
            # label says how many of them this process ran.
            ran = dict.fromkeys(families, 0)
            bars = {f: progress.add_task(f"trials {f}", total=quota * cfg.replicates)
                    for f in families}
            clock = progress.add_task("budget (s)", visible=bool(budget),
                                      total=(cfg.timeout or 0) * cfg.replicates)
            epoch_task = progress.add_task("  epochs", total=1)
            while not interrupt.is_set():
                for sub in subs.values():
                    storage.fail_dead(sub, db)
                now = tallies(subs)
                for f in families:
                    progress.update(bars[f], completed=sum(t.done for (_, g), t in now.items()
                                                           if g == f),
                                    description=f"trials {f} ({ran[f]} by this process)")
                progress.update(clock, completed=sum(t.seconds for t in now.values()))
                unit = schedule(now, quota, budget)
                if unit is None:
                    break
                if unit == WAIT:
                    time.sleep(POLL_S)
                    continue
                r, family = unit
                # What the unit has left, read from storage at each epoch boundary: other
                # processes' trials of the same unit spend it too.
                seconds_left = (lambda u=unit: budget - tallies({u: subs[u]})[u].seconds
                                ) if budget else None
                objective = _objective(unit, spaces[family], splits[r], device, cfg,
                                       {**prov, "split_hash": hashes[r]}, seconds_left, progress,
                                       epoch_task, interrupt)
                ended.clear()
                try:
                    subs[unit].optimize(objective, n_trials=1,
                                        catch=(TrialFailed, Interrupted),
                                        callbacks=[lambda _, t: ended.append(t)])
                except optuna.exceptions.UpdateFinishedTrialError:
                    # No heartbeat reached the database for GRACE_S seconds: another worker
                    # failed this trial and queued it again.
                    console.print(f"{family} replicate {r}: a trial was taken over by another "
                                  "worker")
                save()  # after every trial, so a killed run loses nothing completed
                mine += [stop_reason(t) for t in ended]
                ran[family] += len(ended)
                check_failures(mine, out)
            progress.update(epoch_task, visible=False)
    except BaseException:
        for p in children:  # stop them at their next epoch boundary too
            p.send_signal(signal.SIGINT)
        raise
    finally:
        for p in children:
            if p.wait() not in (0, 130):  # 130: stopped by a Ctrl-C passed on
                print(f"worker pid {p.pid} ended with status {p.returncode}", file=sys.stderr)
        signal.signal(signal.SIGINT, previous)
        for sub in subs.values():  # a worker that died at the end leaves no RUNNING trial
            storage.fail_dead(sub, db)
        trials, epochs = frames(subs)
        with storage.store_lock(out):
            store.write_study(out, trials, epochs, None if joining else importances(subs))
    console.print(summary_table(trials))
    if line := comparison(trials):
        console.print(line, markup=False)
    print_curves(trials, cfg, console)
    if interrupt.is_set():
        raise KeyboardInterrupt
    return out


def print_curves(trials: pd.DataFrame, cfg: RunConfig, console: Console) -> None:
    """The tuning curves read off at a quarter, half and the full budget, and from which budget
    the families' order holds: seconds for a timed study, trials otherwise."""
    by = "seconds" if cfg.timeout else "trials"
    table = curves.checkpoints(trials, by)
    if table.empty:
        return
    console.print(rich_table(table, "Tuning curves: best validation error so far, median over "
                                    f"{cfg.replicates} replicate(s), per family"))
    if text := curves.describe(curves.holding(trials, by)):
        console.print(text, markup=False)


def _spawn(cfg: RunConfig) -> list[subprocess.Popen]:
    """WORKERS - 1 more processes joining this study (`python -m bench worker`), sharing cores.

    Each gets its own session, so Ctrl-C reaches them once, passed on by this process.
    """
    cmd = [sys.executable, "-m", "bench", "worker", f"NAME={cfg.name}",
           f"SMOKE={int(cfg.smoke)}", f"RESULTS_DIR={cfg.results_dir}"]
    if cfg.storage:
        cmd.append(f"STORAGE={cfg.storage}")
    env = {**os.environ, "OMP_NUM_THREADS": str(host.threads_per_worker(cfg.workers))}
    return [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env, start_new_session=True)
            for _ in range(cfg.workers - 1)]


def splits_by_normalization(raw: data.Raw, val_size: int, seed: int, device: torch.device,
            subset: int | None) -> Callable[[str], data.Split]:
    """The study's one split, in each input normalisation a trial asks for (built on first use:
    the same images and indices, so the split hash is the same for all of them)."""
    made: dict[str, data.Split] = {}

    def split(normalization: str) -> data.Split:
        if normalization not in made:
            made[normalization] = data.train_val(raw, val_size, seed, normalization, device,
                                                 subset)
        return made[normalization]

    return split


def _finished(cfg: RunConfig, units: list[Unit], quota: int, budget: float | None,
              space_hash: str) -> pd.DataFrame | None:
    """The stored trials when a rerun has nothing to do (every replicate of every family has
    used its budget, none running or queued, same settings and search space), read before any
    data is loaded; otherwise None. A folder of other settings is refused here already."""
    journal = cfg.out / "optuna.journal"
    if (cfg.storage is None and not journal.is_file()) or not (
            cfg.out / "trials.parquet").is_file():
        return None
    db = storage.open_storage(cfg.storage, journal)
    _check_folder(db, cfg, units, space_hash)
    names = set(optuna.get_all_study_names(db))
    if any(_unit_name(cfg.out.name, u) not in names for u in units):
        return None
    subs = {u: optuna.load_study(study_name=_unit_name(cfg.out.name, u), storage=db)
            for u in units}
    if schedule(tallies(subs), quota, budget) is not None:
        return None
    return store.read(cfg.out, "trials")


def _warm_up(spaces: Iterable[Space], device: torch.device) -> None:
    """One step of each optimizer first, so the first trial is not charged torch's lazy set-up."""
    for name in dict.fromkeys(o for space in spaces for o in space.optimizers):
        layer = torch.nn.Linear(2, 2).to(device)
        opt = optim.create_optimizer(name, layer.parameters(), lr=1e-3)
        layer(torch.zeros(1, 2, device=device)).sum().backward()
        opt.step()
