"""Optuna study runner: storage, samplers, pruners, objective, equal budgets per family.

A study file declares a `Study`. Each family (a value of the scientific parameter, written as the
Space fields it narrows: `{"optimizers": ("sgd",)}`, `{"archs": ("cnn",)}`) gets its own
Optuna sub-study in one storage (`bench.storage`: a journal under results/<name>/, or a database),
with its own seeded sampler, and the runner hands trials to whichever family has used the smallest
share of its budget, so every family gets the same number of trials or the same seconds. Worker
processes run the same loop against the same storage and take their counts from it, so a study
can be spread over processes and machines without a scheduler. Only `data.load_train` is called
here: a study never opens the test files.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import Progress

from bench import data, host, optim, provenance, storage, store, train
from bench.models import count_params
from bench.outcomes import FAILED, check_failures, counts, frames, importances, stop_reason
from bench.space import Space, SpaceError, narrow
from bench.tables import comparison, config_table, progress_bars, summary_table

SMOKE_SUBSET, SMOKE_VAL, SMOKE_TRIALS = 3000, 600, 6
RUN_KEYS = ("trials", "timeout", "device", "seed", "smoke", "precision", "fast")  # stored, joined
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
    """

    question: str
    families: dict[str, dict[str, Any]]
    space: Space
    cpu_space: Space | None = None
    cpu_families: dict[str, dict[str, Any]] | None = None  # when the CPU asks about other values
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
    )


def space_for(study: Study, cfg: RunConfig) -> Space:
    space = study.cpu_space if cfg.device == "cpu" and study.cpu_space else study.space
    return replace(space, epochs=(1, 2)) if cfg.smoke else space


def families_for(study: Study, device: str) -> dict[str, dict[str, Any]]:
    return study.cpu_families if device == "cpu" and study.cpu_families else study.families


def family_spaces(families: dict[str, dict[str, Any]], space: Space) -> dict[str, Space]:
    """Each family's narrowing of `space`, refused in one line when it cannot be compared."""
    if not isinstance(families, dict) or len(families) < 2:
        raise SpaceError(f"a study compares at least two families; got {families!r}")
    space.validate()
    spaces = {f: narrow(space, f, fields) for f, fields in families.items()}
    seen: dict[str, str] = {}
    for family, narrowed in spaces.items():
        key = json.dumps(asdict(narrowed), sort_keys=True, default=str)
        if key in seen:
            raise SpaceError(f"families {seen[key]!r} and {family!r} are the same space; "
                             "a family must narrow some field to a value of its own")
        seen[key] = family
    return spaces


def validate(study: Study, cfg: RunConfig) -> dict[str, Space]:
    """Everything that can be wrong with a study before any file is written."""
    spaces = family_spaces(families_for(study, cfg.device), space_for(study, cfg))
    if cfg.trials <= 0:
        raise ValueError(f"TRIALS={cfg.trials} must be > 0")
    return spaces


def derive_seed(*parts: object) -> int:
    """A stable seed named by its parts (base seed, family, trial, ...): the same on every run."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def _space_hash(spaces: dict[str, Space], study: Study, precision: str) -> str:
    """What a continued study must share: each family's ranges, the split size and the training
    precision (a study is not continued in another one)."""
    spec = [{f: asdict(s) for f, s in spaces.items()}, study.val_size]
    if precision != "fp32":  # float32 studies keep the hash they had before precision existed
        spec.append(precision)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _objective(family: str, space: Space, splits: Callable[[str], data.Split],
               device: torch.device, cfg: RunConfig, prov: dict, deadline: float | None,
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

        error = ""
        try:  # everything, so that a fault anywhere in the trial is recorded as such
            for k, v in storage.owner().items():  # first: who runs it, for the dead-process check
                trial.set_user_attr(k, v)
            recipe = replace(space.sample(trial), precision=cfg.precision)
            normalization = space.normalization_of(trial)
            split = splits(normalization)
            # A retry reruns the lost trial's seed, so it computes what that trial would have.
            seed = trial.user_attrs.get("seed", derive_seed(cfg.seed, family, trial.number))
            for k, v in {**prov, "arch": recipe.arch, "seed": seed,
                         "normalization": normalization, "recipe": recipe.to_dict()}.items():
                trial.set_user_attr(k, v)
            train.seed_everything(seed)
            model, opt, sched = train.build(recipe, len(split.x_train), device, fast=cfg.fast)
            trial.set_user_attr("params_count", count_params(model))
            progress.reset(epoch_task, total=recipe.epochs,
                           description=f"  {family} #{trial.number} epochs")
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


def _sub_studies(study: Study, spaces: dict[str, Space], cfg: RunConfig,
                 db: optuna.storages.BaseStorage, prov: dict,
                 joining: bool) -> dict[str, optuna.Study]:
    """One sub-study per family, opened (or, unless joining, created) after every check passed.

    Refused before anything is written: a storage holding other studies under this study's
    name, trials of another split or search space, and (joining) a study that does not exist.
    """
    prefix, where = cfg.out.name, _where(cfg)
    names = {f: f"{prefix}.{f}" for f in spaces}
    existing = set(optuna.get_all_study_names(db))
    ours = {n for n in existing if cfg.storage is None or n.split(".")[0] == prefix}
    if other := sorted(ours - set(names.values())):
        raise storage.StorageError(f"{where} holds other studies ({', '.join(other)}), not "
                                   f"{', '.join(names.values())}; choose another RESULTS_DIR")
    for name in ours:
        # Each hash on its own: a trial records them one after the other, so one killed (or
        # still starting) in between holds the first only.
        seen = {(k, t.user_attrs[k]) for t in db.get_all_trials(db.get_study_id_from_name(name),
                                                                   False)
                for k in ("split_hash", "space_hash") if k in t.user_attrs}
        if seen - {("split_hash", prov["split_hash"]), ("space_hash", prov["space_hash"])}:
            raise ValueError(f"{where} holds a study with another split, search space or "
                             "precision (SEED, DEVICE, PRECISION or the study file changed); "
                             "continue it with its own settings or choose another RESULTS_DIR")
    if joining and (missing := sorted(set(names.values()) - existing)):
        raise storage.StorageError(f"no study {missing[0]} in {where}; start it first with "
                                   f"`make study NAME={cfg.name}` and the same settings")
    return {f: optuna.create_study(storage=db, study_name=n, direction="maximize",
                                   load_if_exists=True, pruner=study.pruner(spaces[f].epochs[1]))
            for f, n in names.items()}


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
    firsts = [f"{cfg.out.name}.{next(iter(f))}" for f in (study.families, study.cpu_families)
              if f]
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
    """Run (or continue) the study; returns its results folder.

    `joining`: this process is one more worker of a running study: it creates nothing, and
    failing dead trials left by earlier runs and queueing them again is the study command's job.
    """
    device = torch.device(cfg.device)
    spaces = validate(study, cfg)
    space = space_for(study, cfg)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # outcomes go to the store and table
    families = list(spaces)
    quota = math.ceil(cfg.trials / len(families))
    space_hash = _space_hash(spaces, study, cfg.precision)
    out = cfg.out
    if not joining and (done := _finished(cfg, families, quota, space_hash)) is not None:
        console.print(f"already {quota} trials per family and none running or queued; nothing "
                      "to do (raise TRIALS= to continue)")
        console.print(summary_table(done))
        return out
    if cfg.workers > 1:  # share the cores instead of each worker taking all of them
        torch.set_num_threads(host.threads_per_worker(cfg.workers))
    raw = data.load_train()
    splits = splits_by_normalization(raw, SMOKE_VAL if cfg.smoke else study.val_size, cfg.seed,
                                     device, SMOKE_SUBSET if cfg.smoke else None)
    first = splits(spaces[families[0]].normalization[0])
    prov = {**provenance.collect(device), "data_md5": json.dumps(first.md5, sort_keys=True),
            "split_hash": first.split_hash, "space_hash": space_hash}
    db = db or storage.open_storage(cfg.storage, out / "optuna.journal")
    subs = _sub_studies(study, spaces, cfg, db, prov, joining)
    out.mkdir(parents=True, exist_ok=True)
    console.print(config_table(cfg.public() | {"out": out}, space, prov["device"]))
    for family, sub in subs.items():
        if not joining:
            if n := storage.fail_dead(sub, db):
                console.print(f"{family}: {n} trial(s) of a dead process marked FAIL")
            storage.retry_lost(sub)
            sub.set_user_attr("run", {k: v for k, v in asdict(cfg).items()
                                      if k in RUN_KEYS})
        # Workers that start together must not draw the same configurations.
        seed = (cfg.seed, family, "sampler", len(sub.trials)) + ((os.getpid(),) if joining else ())
        sub.sampler = study.sampler(derive_seed(*seed))

    with (out / "runs.jsonl").open("a") as fh:  # one line per invocation: config + provenance
        fh.write(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "role": "worker" if joining else "study", "config": cfg.public(),
                             "space": asdict(space), "families": study.families,
                             "question": study.question, **prov},
                            default=str) + "\n")

    budget = cfg.timeout / len(families) if cfg.timeout else None
    used = dict.fromkeys(families, 0.0)
    mine: list[str] = []  # how this process's trials ended
    ended: list[optuna.trial.FrozenTrial] = []  # the trial optimize() just ran

    def tally(family: str) -> tuple[int, int, int]:
        """(trials that used up budget, running now, queued retries) of a family, from storage."""
        trials = subs[family].get_trials(deepcopy=False)
        return (sum(map(counts, trials)), sum(t.state == TrialState.RUNNING for t in trials),
                sum(t.state == TrialState.WAITING for t in trials))

    def save() -> None:
        with storage.store_lock(out):  # a snapshot of the whole storage, newest last
            store.write_study(out, *frames(subs))

    if all(tally(f)[0] >= quota for f in families):
        console.print(f"already {quota} trials per family; " + (
            "nothing left for a worker" if joining else "raise TRIALS= to continue"))
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
    began = time.monotonic()
    try:
        with progress_bars(console, transient=False) as progress:
            # One bar per family, counting every process's trials; the label says how many of
            # them this process ran.
            ran = dict.fromkeys(families, 0)
            bars = {f: progress.add_task(f"trials {f}", total=quota) for f in families}
            clock = progress.add_task("budget (s)", total=cfg.timeout, visible=bool(budget))
            epoch_task = progress.add_task("  epochs", total=1)
            while not interrupt.is_set():
                for sub in subs.values():
                    storage.fail_dead(sub, db)
                now = {f: tally(f) for f in families}
                for f in families:
                    progress.update(bars[f], completed=now[f][0],
                                    description=f"trials {f} ({ran[f]} by this process)")
                # A queued retry (the configuration of a trial whose process died) is run even
                # when the quota is reached, so no configuration is dropped.
                left = [f for f in families if (now[f][0] < quota or now[f][2])
                        and (budget is None or used[f] < budget)]
                if not left:
                    # The study command also waits out the other workers' trials: one whose
                    # worker died (a database sees it only GRACE_S later) is failed and its
                    # retry run, instead of being left RUNNING.
                    if joining or not any(n[1] for n in now.values()):
                        break
                    time.sleep(POLL_S)
                    continue
                # Running trials of other workers count as taken, so the study ends with at
                # most WORKERS - 1 trials over its quota (plus the retries of dead workers'
                # trials); a worker with nothing to start waits for them to finish, or to die
                # and be queued again.
                ready = [f for f in left if now[f][0] + now[f][1] < quota or now[f][2]]
                if not ready:
                    if cfg.timeout and time.monotonic() - began > cfg.timeout:
                        break
                    time.sleep(POLL_S)
                    continue
                family = min(ready, key=lambda f: max(
                    (now[f][0] + now[f][1]) / quota, used[f] / budget if budget else 0.0))
                deadline = time.monotonic() + budget - used[family] if budget else None
                objective = _objective(family, spaces[family], splits, device,
                                       cfg, prov, deadline, progress, epoch_task,
                                       interrupt)
                ended.clear()
                start = time.perf_counter()
                try:
                    subs[family].optimize(objective, n_trials=1,
                                          catch=(TrialFailed, Interrupted),
                                          callbacks=[lambda _, t: ended.append(t)])
                except optuna.exceptions.UpdateFinishedTrialError:
                    # No heartbeat reached the database for GRACE_S seconds: another worker
                    # failed this trial and queued it again.
                    console.print(f"{family}: a trial was taken over by another worker")
                used[family] += time.perf_counter() - start
                save()  # after every trial, so a killed run loses nothing completed
                progress.update(clock, completed=sum(used.values()))
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
        console.print(line)
    if interrupt.is_set():
        raise KeyboardInterrupt
    return out


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


def _finished(cfg: RunConfig, families: list[str], quota: int,
              space_hash: str) -> pd.DataFrame | None:
    """The stored trials when a rerun has nothing to do (every family at its quota, none running
    or queued, same search space), read before any data is loaded; otherwise None."""
    journal = cfg.out / "optuna.journal"
    if (cfg.storage is None and not journal.is_file()) or not (
            cfg.out / "trials.parquet").is_file():
        return None
    db = storage.open_storage(cfg.storage, journal)
    names = optuna.get_all_study_names(db)
    for family in families:
        if f"{cfg.out.name}.{family}" not in names:
            return None
        trials = db.get_all_trials(db.get_study_id_from_name(f"{cfg.out.name}.{family}"), False)
        if (sum(map(counts, trials)) < quota
                or any(not t.state.is_finished() for t in trials)
                or {t.user_attrs.get("space_hash") for t in trials} - {None, space_hash}):
            return None
    return store.read(cfg.out, "trials")


def _warm_up(spaces: Iterable[Space], device: torch.device) -> None:
    """One step of each optimizer first, so the first trial is not charged torch's lazy set-up."""
    for name in dict.fromkeys(o for space in spaces for o in space.optimizers):
        layer = torch.nn.Linear(2, 2).to(device)
        opt = optim.create_optimizer(name, layer.parameters(), lr=1e-3)
        layer(torch.zeros(1, 2, device=device)).sum().backward()
        opt.step()
