"""Optuna study runner: storage, samplers, pruners, objective, equal budgets per family.

A study file declares a `Study`. Each architecture family (the scientific parameter) gets its own
Optuna sub-study in one embedded journal under results/<name>/, with its own seeded sampler, and
the runner hands trials to whichever family has used the smallest share of its budget, so every
family gets the same number of trials or the same seconds. Only `data.load_train` is called here:
a study never opens the test files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import optuna
import pandas as pd
import torch
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import data, optim, provenance, store, train
from bench.models import count_params
from bench.space import Space, SpaceError
from bench.tables import comparison, config_table, summary_table

SMOKE_SUBSET, SMOKE_VAL, SMOKE_TRIALS = 3000, 600, 6


class Interrupted(Exception):
    """Ctrl-C asked the study to stop; the trial ends FAIL and its configuration is retried."""


LOST = ("interrupted", "killed")  # trials that ended without an outcome; retried on resume


@dataclass(frozen=True)
class Study:
    """What a study file declares: its question, families, ranges, budget, sampler and pruner."""

    question: str
    families: dict[str, tuple[str, ...]]
    space: Space
    cpu_space: Space | None = None
    trials: dict[str, int] = field(default_factory=lambda: {"cpu": 100, "cuda": 100})
    timeout: dict[str, float | None] = field(default_factory=lambda: {"cpu": None, "cuda": None})
    sampler: Callable[[int], optuna.samplers.BaseSampler] = (
        lambda seed: optuna.samplers.TPESampler(seed=seed))
    pruner: Callable[[int], optuna.pruners.BasePruner] = (
        lambda max_epochs: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
    val_size: int = 10_000
    normalization: str = "mnist"


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

    @property
    def out(self) -> Path:
        return results_folder(self.results_dir, self.name, self.smoke)


def results_folder(results_dir: Path, name: str, smoke: bool) -> Path:
    """Where a study's store lives; smoke runs keep apart from real ones."""
    return Path(results_dir) / (name + ("-smoke" if smoke else ""))


def resolve(study: Study, name: str, device: torch.device, overrides: dict) -> RunConfig:
    """Study defaults for `device`, then overrides (already type-checked by the CLI)."""
    smoke = overrides.get("smoke", False)
    default_timeout = None if smoke else study.timeout.get(device.type)
    timeout = overrides.get("timeout", default_timeout)
    return RunConfig(
        name=name,
        trials=overrides.get("trials", SMOKE_TRIALS if smoke else study.trials[device.type]),
        timeout=timeout or None,
        device=device.type,
        seed=overrides.get("seed", 0),
        smoke=smoke,
        results_dir=Path(overrides.get("results_dir", "results")),
    )


def space_for(study: Study, cfg: RunConfig) -> Space:
    space = study.cpu_space if cfg.device == "cpu" and study.cpu_space else study.space
    return replace(space, epochs=(1, 2)) if cfg.smoke else space


def validate(study: Study, cfg: RunConfig) -> Space:
    """Everything that can be wrong with a study before any file is written."""
    space = space_for(study, cfg)
    for family, archs in study.families.items():
        if not archs:
            raise SpaceError(f"family {family!r} has no architectures")
    space.validate(tuple(a for archs in study.families.values() for a in archs))
    data.check_normalization(study.normalization)
    if cfg.trials <= 0:
        raise ValueError(f"TRIALS={cfg.trials} must be > 0")
    return space


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _space_hash(space: Space, study: Study) -> str:
    """What a continued study must share: ranges, families, normalisation and split size."""
    spec = [asdict(space), study.families, study.normalization, study.val_size]
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fail_orphans(sub: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Mark RUNNING trials of dead processes on this host FAIL, so a rerun resumes cleanly."""
    host, n = socket.gethostname(), 0
    for t in sub.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            storage.set_trial_user_attr(t._trial_id, "stop_reason", "killed")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            n += 1
    return n


def _retry_interrupted(sub: optuna.Study) -> None:
    """Queue the configuration of every interrupted or killed trial once more."""
    trials = sub.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.number not in retried and _stop_reason(t) in LOST:
            sub.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial used up budget: it ran to an outcome (a divergence is one)."""
    return t.state.is_finished() and _stop_reason(t) not in LOST


def _stop_reason(t: optuna.trial.FrozenTrial) -> str:
    """The objective records why a trial stopped; a FAIL without a record never reached it."""
    if t.state == TrialState.FAIL and "stop_reason" not in t.user_attrs:
        return "interrupted"
    return t.user_attrs.get("stop_reason", "")


def frames(subs: dict[str, optuna.Study]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Optuna trials -> the store's trials and epochs tables."""
    rows, epochs = [], []
    for family, sub in subs.items():
        for t in sub.get_trials(deepcopy=False):
            ua, hist = t.user_attrs, t.user_attrs.get("epochs", [])
            stop = _stop_reason(t)
            rows.append({
                "family": family, "number": t.number, "state": t.state.name,
                "arch": ua.get("arch"), "value": t.value,
                "best_val_acc": max((h["val_acc"] for h in hist), default=math.nan),
                "final_val_acc": hist[-1]["val_acc"] if hist else math.nan,
                "final_val_loss": hist[-1]["val_loss"] if hist else math.nan,
                "epochs_planned": t.params.get("epochs"), "epochs_run": len(hist),
                "pruned_at": hist[-1]["epoch"] if hist and stop in ("pruned", "budget") else None,
                "stop_reason": stop,
                **{k: ua.get(k) for k in ("wall_seconds", "params_count", "seed", "device",
                                          "threads", "git_sha", "versions", "data_md5",
                                          "split_hash", "space_hash")},
                "datetime_start": t.datetime_start,
                "recipe": json.dumps(ua["recipe"], sort_keys=True) if "recipe" in ua else None,
                **{f"param_{k}": v for k, v in t.params.items()},
            })
            epochs += [{"family": family, "number": t.number, **h} for h in hist]
    trials = pd.DataFrame(rows, columns=list(store.TRIAL_COLUMNS) if not rows else None)
    trials["pruned_at"] = trials["pruned_at"].astype("Int64")
    # Parameters absent from some trials (conditional ones) would turn ints into floats and
    # bools into objects; the distributions say what each column really holds.
    dists = {name: dist for sub in subs.values() for t in sub.get_trials(deepcopy=False)
             for name, dist in t.distributions.items()}
    for name, dist in dists.items():
        if isinstance(dist, optuna.distributions.IntDistribution):
            trials[f"param_{name}"] = trials[f"param_{name}"].astype("Int64")
        elif isinstance(dist, optuna.distributions.CategoricalDistribution) and all(
                isinstance(c, bool) for c in dist.choices):
            trials[f"param_{name}"] = trials[f"param_{name}"].astype("boolean")
    return trials, pd.DataFrame(epochs, columns=list(store.EPOCH_COLUMNS))


def importances(subs: dict[str, optuna.Study]) -> pd.DataFrame:
    """Optuna's default evaluator per family, on completed trials' validation objective."""
    rows = []
    for family, sub in subs.items():
        if len(sub.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
            continue
        try:
            with warnings.catch_warnings():  # small studies trigger accuracy warnings per param
                warnings.simplefilter("ignore")
                found = optuna.importance.get_param_importances(sub)
        except (ValueError, RuntimeError):  # e.g. no parameter varies across complete trials
            continue
        rows += [{"family": family, "param": p, "importance": v} for p, v in found.items()]
    return pd.DataFrame(rows, columns=list(store.IMPORTANCE_COLUMNS))


def _objective(family: str, archs: tuple[str, ...], space: Space, split: data.Split,
               device: torch.device, base_seed: int, prov: dict, deadline: float | None,
               progress: Progress, epoch_task,
               interrupt: threading.Event) -> Callable[[optuna.Trial], float]:
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
            elif deadline is not None and time.monotonic() > deadline and epoch < last:
                stop = "budget"
            return bool(stop)

        try:  # everything, so that an interrupt anywhere in the trial is recorded as such
            recipe = space.sample(trial, archs)
            seed = _seed(base_seed, family, trial.number)
            for k, v in {**prov, "arch": recipe.arch, "seed": seed, "pid": os.getpid(),
                         "host": socket.gethostname(), "recipe": recipe.to_dict()}.items():
                trial.set_user_attr(k, v)
            train.seed_everything(seed)
            model, opt, sched = train.build(recipe, len(split.x_train), device)
            trial.set_user_attr("params_count", count_params(model))
            progress.reset(epoch_task, total=recipe.epochs,
                           description=f"  {family} #{trial.number} epochs")
            train.fit(model, opt, sched, split, recipe.batch_size, recipe.epochs, seed, on_epoch)
        except train.NonFiniteLoss:
            stop = "nonfinite"
            raise
        except KeyboardInterrupt:
            stop = "interrupted"
            raise
        finally:
            trial.set_user_attr("epochs", history)
            trial.set_user_attr("wall_seconds", time.perf_counter() - start)
            trial.set_user_attr("stop_reason", stop)
        if stop == "interrupted":
            raise Interrupted(f"interrupted after epoch {history[-1]['epoch']}")
        if stop:
            raise optuna.TrialPruned(f"{stop} after epoch {history[-1]['epoch']}")
        return history[-1]["val_acc"]

    return objective


def run(study: Study, cfg: RunConfig, console: Console) -> Path:
    """Run (or continue) the study; returns its results folder."""
    device = torch.device(cfg.device)
    space = validate(study, cfg)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # outcomes go to the store and table
    families = list(study.families)
    raw = data.load_train()
    split = data.train_val(raw, SMOKE_VAL if cfg.smoke else study.val_size, cfg.seed,
                           study.normalization, device, SMOKE_SUBSET if cfg.smoke else None)
    prov = {**provenance.collect(device), "data_md5": json.dumps(split.md5, sort_keys=True),
            "split_hash": split.split_hash, "space_hash": _space_hash(space, study)}
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    existing = set(optuna.get_all_study_names(storage))
    for name in existing & {f"{cfg.name}.{f}" for f in families}:  # check all before writing
        seen = {(t.user_attrs.get("split_hash"), t.user_attrs.get("space_hash"))
                for t in storage.get_all_trials(storage.get_study_id_from_name(name), False)}
        if seen - {(None, None), (prov["split_hash"], prov["space_hash"])}:
            raise ValueError(f"{out} holds a study with another split or search space (SEED, "
                             "DEVICE or the study file changed); continue it with its own "
                             "settings or choose another RESULTS_DIR")
    console.print(config_table(cfg, space, prov["device"]))
    subs: dict[str, optuna.Study] = {}
    for family in families:
        sub = optuna.create_study(storage=storage, study_name=f"{cfg.name}.{family}",
                                  direction="maximize", load_if_exists=True,
                                  pruner=study.pruner(space.epochs[1]))
        if n := _fail_orphans(sub, storage):
            console.print(f"{family}: {n} trial(s) of a killed run marked FAIL")
        _retry_interrupted(sub)
        sub.sampler = study.sampler(_seed(cfg.seed, family, "sampler", len(sub.trials)))
        subs[family] = sub

    with (out / "runs.jsonl").open("a") as fh:  # one line per invocation: config + provenance
        fh.write(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "config": asdict(cfg), "space": asdict(space),
                             "question": study.question, **prov}, default=str) + "\n")

    quota = math.ceil(cfg.trials / len(families))
    budget = cfg.timeout / len(families) if cfg.timeout else None
    used = dict.fromkeys(families, 0.0)

    def finished(family: str) -> int:
        return sum(_counts(t) for t in subs[family].get_trials(deepcopy=False))

    def share(family: str) -> float:
        return max(finished(family) / quota, used[family] / budget if budget else 0.0)

    def save() -> None:
        store.write_study(out, *frames(subs))

    todo = sum(max(quota - finished(f), 0) for f in families)
    if todo == 0:
        console.print(f"already {quota} trials per family; raise TRIALS= to continue")
    _warm_up(space, device)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    # The first Ctrl-C stops at the next epoch boundary, so no journal write is cut in half;
    # a second one stops at once.
    interrupt = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if interrupt.is_set():
            raise KeyboardInterrupt
        interrupt.set()
        console.print("stopping after this epoch (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            trial_task = progress.add_task("trials", total=todo)
            clock = progress.add_task("budget (s)", total=cfg.timeout, visible=bool(budget))
            epoch_task = progress.add_task("  epochs", total=1)
            while live := [f for f in families if share(f) < 1.0]:
                family = min(live, key=share)
                deadline = time.monotonic() + budget - used[family] if budget else None
                objective = _objective(family, study.families[family], space, split, device,
                                       cfg.seed, prov, deadline, progress, epoch_task,
                                       interrupt)
                progress.update(trial_task, description=f"trials ({family})")
                start = time.perf_counter()
                subs[family].optimize(objective, n_trials=1,
                                      catch=(train.NonFiniteLoss, Interrupted))
                used[family] += time.perf_counter() - start
                save()  # after every trial, so a killed run loses nothing completed
                progress.advance(trial_task)
                progress.update(clock, completed=sum(used.values()))
                if interrupt.is_set():
                    break
            progress.update(epoch_task, visible=False)
    finally:
        signal.signal(signal.SIGINT, previous)
        trials, epochs = frames(subs)
        store.write_study(out, trials, epochs, importances(subs))
    console.print(summary_table(trials))
    if line := comparison(trials):
        console.print(line)
    if interrupt.is_set():
        raise KeyboardInterrupt
    return out


def _warm_up(space: Space, device: torch.device) -> None:
    """One step of each optimizer first, so the first trial is not charged torch's lazy set-up."""
    for name in space.optimizers:
        layer = torch.nn.Linear(2, 2).to(device)
        opt = optim.create_optimizer(name, layer.parameters(), lr=1e-3)
        layer(torch.zeros(1, 2, device=device)).sum().backward()
        opt.step()
