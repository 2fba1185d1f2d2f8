"""Optuna study runner: storage, samplers, pruners, objective, equal budgets per family.

A study file declares a `Study`. Each architecture family (the scientific parameter) gets its own
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import Progress

from bench import data, host, optim, provenance, storage, store, train
from bench.models import count_params
from bench.outcomes import FAILED, check_failures, counts, frames, importances, stop_reason
from bench.space import Space, SpaceError
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


def derive_seed(*parts: object) -> int:
    """A stable seed named by its parts (base seed, family, trial, ...): the same on every run."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def _space_hash(space: Space, study: Study, precision: str) -> str:
    """What a continued study must share: ranges, families, normalisation, split size and the
    training precision (a study is not continued in another one)."""
    spec = [asdict(space), study.families, study.normalization, study.val_size]
    if precision != "fp32":  # float32 studies keep the hash they had before precision existed
        spec.append(precision)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _objective(family: str, archs: tuple[str, ...], space: Space, split: data.Split,
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
            recipe = replace(space.sample(trial, archs), precision=cfg.precision)
            # A retry reruns the lost trial's seed, so it computes what that trial would have.
            seed = trial.user_attrs.get("seed", derive_seed(cfg.seed, family, trial.number))
            for k, v in {**prov, "arch": recipe.arch, "seed": seed,
                         "recipe": recipe.to_dict()}.items():
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


def _sub_studies(study: Study, cfg: RunConfig, db: optuna.storages.BaseStorage, prov: dict,
                 joining: bool) -> dict[str, optuna.Study]:
    """One sub-study per family, opened (or, unless joining, created) after every check passed.

    Refused before anything is written: a storage holding other studies under this study's
    name, trials of another split or search space, and (joining) a study that does not exist.
    """
    prefix, where = cfg.out.name, _where(cfg)
    names = {f: f"{prefix}.{f}" for f in study.families}
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
                                   load_if_exists=True, pruner=study.pruner(
                                       space_for(study, cfg).epochs[1]))
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
    first = f"{cfg.out.name}.{next(iter(study.families))}"
    if first not in optuna.get_all_study_names(db):
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
    space = validate(study, cfg)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # outcomes go to the store and table
    families = list(study.families)
    if cfg.workers > 1:  # share the cores instead of each worker taking all of them
        torch.set_num_threads(host.threads_per_worker(cfg.workers))
    raw = data.load_train()
    split = data.train_val(raw, SMOKE_VAL if cfg.smoke else study.val_size, cfg.seed,
                           study.normalization, device, SMOKE_SUBSET if cfg.smoke else None)
    prov = {**provenance.collect(device), "data_md5": json.dumps(split.md5, sort_keys=True),
            "split_hash": split.split_hash, "space_hash": _space_hash(space, study, cfg.precision)}
    out = cfg.out
    db = db or storage.open_storage(cfg.storage, out / "optuna.journal")
    subs = _sub_studies(study, cfg, db, prov, joining)
    out.mkdir(parents=True, exist_ok=True)
    console.print(config_table(cfg, space, prov["device"]))
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
                             "space": asdict(space), "question": study.question, **prov},
                            default=str) + "\n")

    quota = math.ceil(cfg.trials / len(families))
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

    before = sum(tally(f)[0] for f in families)
    todo = sum(max(quota - tally(f)[0], 0) for f in families)
    if todo == 0:
        console.print(f"already {quota} trials per family; " + (
            "nothing left for a worker" if joining else "raise TRIALS= to continue"))
    _warm_up(space, device)
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
            trial_task = progress.add_task("trials", total=todo)
            clock = progress.add_task("budget (s)", total=cfg.timeout, visible=bool(budget))
            epoch_task = progress.add_task("  epochs", total=1)
            while not interrupt.is_set():
                for sub in subs.values():
                    storage.fail_dead(sub, db)
                now = {f: tally(f) for f in families}
                progress.update(trial_task, completed=sum(n[0] for n in now.values()) - before)
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
                objective = _objective(family, study.families[family], space, split, device,
                                       cfg, prov, deadline, progress, epoch_task,
                                       interrupt)
                progress.update(trial_task, description=f"trials ({family})")
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


def _warm_up(space: Space, device: torch.device) -> None:
    """One step of each optimizer first, so the first trial is not charged torch's lazy set-up."""
    for name in space.optimizers:
        layer = torch.nn.Linear(2, 2).to(device)
        opt = optim.create_optimizer(name, layer.parameters(), lr=1e-3)
        layer(torch.zeros(1, 2, device=device)).sum().backward()
        opt.step()
