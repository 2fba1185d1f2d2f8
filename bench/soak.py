"""`make soak`: a study under repeated SIGKILLs, then a check that nothing was lost.

Each crash path has a test of its own that kills once; a soak shows that they hold when kills
come at random moments, over and over, on workers and on the study command itself (Jepsen-style).

1. Chaos, MINUTES long: the smoke-sized `mlp_vs_cnn` study (`SMOKE=1`, a trial count it cannot
   reach) runs as one study command (`WORKERS=1`) and WORKERS - 1 `bench worker` processes, all
   started here. Every few seconds a seeded RNG picks one of them, mostly a worker and now and
   then the study command, to SIGKILL by its pid; it is started again at once, so the study keeps
   its worker count. After each kill the completed trials' values are noted.
2. End: every process still running is killed too.
3. Finish: the study command is run once more, as a user would after a crash, with TRIALS set to
   the trials already counted (equal shares per family) and WORKERS workers of its own: it fails
   the dead trials, runs every queued retry and ends. Its exit status must be 0.
4. Check: the storage, the Parquet store and (journal) a fresh replay of the log against the
   invariants in `check`; one table, and exit 0 only when every one holds. A soak whose kills
   tested nothing (no dead trial, no retry run, or none whose dead trial had a seed to compare)
   is "inconclusive" and exits non-zero too: every other row would read "0 of 0" and pass.

Only processes this module started are ever signalled, by pid. The trial-count bound is checked
for the finish run (whose TRIALS is what was counted at the end of the chaos); during the chaos
the trial count is unbounded by design.
"""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import optuna
import pandas as pd
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from bench import host, outcomes, storage, store

STUDY = "mlp_vs_cnn"  # run as SMOKE=1: a subset of MNIST, 1-2 epochs a trial
ENDLESS = 100_000  # trials the chaos phase asks for: more than any soak runs
KILL_EVERY_S = (2.0, 8.0)  # uniform; a process needs several seconds to start and load MNIST
STUDY_KILL_P = 0.2  # share of kills aimed at the study command rather than a worker
START_TIMEOUT_S = 300  # for the first study command to create the study
FINISH_TIMEOUT_S = 900  # for the finish run (PostgreSQL waits GRACE_S for a dead trial)


class SoakFailed(RuntimeError):
    """An invariant did not hold, or the study could not be run; the table says which."""


@dataclass(frozen=True)
class Config:
    storage: str | None
    minutes: float
    workers: int
    seed: int
    results_dir: Path


@dataclass(frozen=True)
class Check:
    name: str
    shown: str
    ok: bool


Trials = dict[str, list[FrozenTrial]]  # unit `r<replicate>.<family>` -> its trials
REPLICATES = 2  # the soak's study runs two replicates, so kills land across them too


def read_trials(db: optuna.storages.BaseStorage) -> Trials:
    """Every trial of the storage by unit, `r<replicate>.<family>` (the sub-study name after the
    study's own)."""
    return {s.study_name.split(".", 1)[1]: db.get_all_trials(s._study_id, deepcopy=False)
            for s in db.get_all_studies()}


def units_of(parquet: pd.DataFrame) -> pd.DataFrame:
    """trials.parquet with `family` as the storage's unit name, `r<replicate>.<family>`."""
    if "replicate" not in parquet or parquet.empty:
        return parquet
    return parquet.assign(family="r" + parquet["replicate"].astype(str) + "."
                          + parquet["family"].astype(str))


def completed_values(trials: Trials) -> dict[tuple[str, int], float]:
    return {(f, t.number): t.value for f, ts in trials.items() for t in ts
            if t.state == TrialState.COMPLETE}


def _store_view(trials: Trials) -> pd.DataFrame:
    """What trials.parquet must hold: every trial that ran (not the queued ones)."""
    rows = [(f, t.number, t.state.name, t.value, outcomes.stop_reason(t))
            for f, ts in trials.items() for t in ts if t.state != TrialState.WAITING]
    return _canonical(pd.DataFrame(rows, columns=["family", "number", "state", "value",
                                                  "stop_reason"]))


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    df = df[["family", "number", "state", "value", "stop_reason"]].copy()
    df["number"] = df["number"].astype("int64")
    df["value"] = df["value"].astype("float64")
    df = df.astype({"family": "object", "state": "object", "stop_reason": "object"})
    return df.sort_values(["family", "number"]).reset_index(drop=True)


def check(trials: Trials, parquet: pd.DataFrame, seen: dict[tuple[str, int], float],
          trials_asked: int, workers: int) -> list[Check]:
    """The invariants over the end state: storage `trials`, the Parquet store, and `seen`, the
    completed values noted after each kill. `trials_asked`: the finish run's TRIALS."""
    everything = [(f, t) for f, ts in trials.items() for t in ts]
    by_key = {(f, t.number): t for f, t in everything}
    dead = [(f, t) for f, t in everything if outcomes.stop_reason(t) == "killed"]
    retries = Counter((f, t.user_attrs["retry_of"]) for f, t in everything
                      if "retry_of" in t.user_attrs)
    due = [(f, t) for f, t in dead if t.user_attrs.get("attempt", 1) < storage.MAX_ATTEMPTS]
    rerun = [(f, t) for f, t in due if any(
        r.user_attrs.get("retry_of") == t.number and r.state != TrialState.WAITING
        for r in trials[f])]
    compared = Counter(_same_run(by_key.get((f, r.user_attrs["retry_of"])), r)
                       for f, r in everything if "retry_of" in r.user_attrs)
    ran = sum("retry_of" in t.user_attrs and t.state != TrialState.WAITING for _, t in everything)
    changed = [k for k, v in seen.items() if k not in by_key
               or by_key[k].state != TrialState.COMPLETE or by_key[k].value != v]
    numbers = Counter((f, t.number) for f, t in everything)
    store_dupes = int(parquet.duplicated(["family", "number"]).sum())
    view = _store_view(trials)
    same_store = store_dupes == 0 and view.equals(_canonical(parquet))
    counted = sum(outcomes.counts(t) for _, t in everything)
    # TRIALS is per replicate and split between the families: each unit's quota
    families = max(len({u.rsplit(".", 1)[-1] for u in trials}), 1)
    shares = len(trials) * math.ceil(trials_asked / families)
    bound = shares + workers - 1 + sum(retries.values())
    least = min((sum(map(outcomes.counts, ts)) for ts in trials.values()), default=0)
    running = sum(t.state == TrialState.RUNNING for _, t in everything)
    waiting = sum(t.state == TrialState.WAITING for _, t in everything)
    twice = sum(n > 1 for n in retries.values())
    evidence = compared[SAME] + compared[DIFFERENT]  # retries whose dead trial had a seed
    return [
        Check(CONCLUSIVE, f"{len(dead)} dead, {ran} retries run, {evidence} with a seed to "
                          "compare", bool(dead) and ran > 0 and evidence > 0),
        Check("trials left RUNNING", str(running), running == 0),
        Check("queued retries never run (WAITING left)", str(waiting), waiting == 0),
        Check("killed trials run again (below the retry limit)", f"{len(rerun)} of {len(due)}",
              len(rerun) == len(due)),
        Check("dead trials queued more than once", str(twice), twice == 0),
        Check("retries with their dead trial's configuration and seed",
              f"{compared[SAME]} of {evidence}"
              + (f" ({compared[NOTHING]} more killed before their seed was set: nothing to "
                 "compare)" if compared[NOTHING] else ""),
              compared[DIFFERENT] == 0),
        Check("duplicate trial numbers within a family",
              str(sum(n > 1 for n in numbers.values()) + store_dupes),
              max(numbers.values(), default=1) == 1 and store_dupes == 0),
        Check("completed trials whose value changed after a kill",
              f"{len(changed)} of {len(seen)}", not changed),
        Check("trials.parquet rows = storage rows", f"{len(parquet)} / {len(view)}",
              same_store),
        Check(f"counted trials <= TRIALS {shares} + WORKERS {workers} - 1 + retries "
              f"{sum(retries.values())}, each family >= {shares // max(len(trials), 1)}",
              f"{counted} <= {bound}, least {least}",
              counted <= bound and least >= shares // max(len(trials), 1)),
    ]


CONCLUSIVE = "kills that left dead trials, retried (else inconclusive)"
SAME, DIFFERENT, NOTHING = "same", "different", "nothing to compare"


def _same_run(dead: FrozenTrial | None, retry: FrozenTrial) -> str:
    """SAME when a retry reruns its dead trial's configuration with its seed; DIFFERENT when
    either differs (or the dead trial is missing); NOTHING when the dead trial was killed before
    its seed was set: a match then proves nothing, so it is counted apart. Whatever part of the
    configuration it had sampled must still be the retry's (the retry samples the rest)."""
    if dead is None or any(retry.params.get(k) != v for k, v in dead.params.items()):
        return DIFFERENT
    if "seed" not in dead.user_attrs:
        return NOTHING
    return SAME if dead.user_attrs["seed"] == retry.user_attrs.get("seed") else DIFFERENT


def replay(journal: Path) -> Check:
    """A fresh process's replay of the whole journal, as the next run would read it."""
    try:
        data = journal.read_bytes()
        n = sum(len(ts) for ts in read_trials(JournalStorage(JournalFileBackend(
            str(journal)))).values())
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return Check("journal replays", f"{type(exc).__name__}: {exc}"[:80], False)
    lines, whole = data.count(b"\n"), data.endswith(b"\n")
    return Check("journal replays", f"{n} trials, {lines} lines"
                 + ("" if whole else ", a half-written last line"), whole)


class Chaos:
    """The soak's own processes: one study command and WORKERS - 1 workers, by pid."""

    def __init__(self, cfg: Config, out: Path, log: IO[str]) -> None:
        self.cfg, self.out, self.log = cfg, out, log
        self.procs: dict[str, subprocess.Popen] = {}
        self.kills: list[dict] = []
        self.own_exits: list[dict] = []  # processes that ended without being killed

    def command(self, role: str, trials: int = ENDLESS, workers: int = 1) -> list[str]:
        cmd = [sys.executable, "-m", "bench", role, f"NAME={STUDY}", "SMOKE=1",
               f"RESULTS_DIR={self.out}"]
        if role == "study":
            cmd += ["DEVICE=cpu", f"TRIALS={trials}", "TIMEOUT=0", f"WORKERS={workers}",
                    f"REPLICATES={REPLICATES}",
                    f"SEED={self.cfg.seed}"]
        if self.cfg.storage:
            cmd.append(f"STORAGE={self.cfg.storage}")
        return cmd

    def start(self, slot: str) -> None:
        role = "study" if slot == "study" else "worker"
        self.procs[slot] = subprocess.Popen(
            self.command(role), stdout=subprocess.DEVNULL, stderr=self.log,
            env=host.child_env(), start_new_session=True)

    def kill(self, slot: str, phase: str) -> None:
        proc = self.procs[slot]
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            self.kills.append({"kind": "study" if slot == "study" else "worker",
                               "pid": proc.pid, "phase": phase, "at": time.time()})

    def restart_exited(self) -> None:
        """A process that ended by itself (an error: the study cannot finish) is noted, then
        started again like a killed one."""
        for slot, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.own_exits.append({"slot": slot, "pid": proc.pid, "status": proc.returncode})
                self.start(slot)

    def stop_all(self) -> None:
        for slot in list(self.procs):
            self.kill(slot, "end")


def _wait_for_study(db: optuna.storages.BaseStorage, chaos: Chaos) -> None:
    """Until the study command has created the sub-studies and stored its settings."""
    until = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < until:
        studies = db.get_all_studies()
        if studies and all("run" in s.user_attrs for s in studies):
            return
        if chaos.procs["study"].poll() is not None:
            raise SoakFailed(f"the study command ended with status "
                             f"{chaos.procs['study'].returncode} before creating the study; "
                             f"see {chaos.log.name}")
        time.sleep(0.5)
    raise SoakFailed(f"no study after {START_TIMEOUT_S} s; see {chaos.log.name}")


def run(cfg: Config, console: Console) -> Path:
    """Chaos, end, finish, check; writes soak.json beside the study. Raises SoakFailed."""
    started = datetime.now(timezone.utc)
    kind = "postgresql" if cfg.storage else "journal"
    out = cfg.results_dir / "soak" / f"{started:%Y%m%dT%H%M%SZ}-{kind}"
    folder = out / f"{STUDY}-smoke"
    journal = folder / "optuna.journal"
    db = storage.open_storage(cfg.storage, journal) if cfg.storage else None
    if db is not None and (names := optuna.get_all_study_names(db)):
        raise storage.StorageError(f"STORAGE={storage.masked(cfg.storage)} already holds "
                                   f"studies ({', '.join(names)}); a soak needs an empty "
                                   "database")
    folder.mkdir(parents=True)
    rng = random.Random(cfg.seed)
    seen: dict[tuple[str, int], float] = {}
    with (out / "children.log").open("a") as log:
        chaos = Chaos(cfg, out, log)
        try:
            chaos.start("study")
            while db is None and not journal.is_file():
                if chaos.procs["study"].poll() is not None:
                    break
                time.sleep(0.5)
            db = db or storage.open_storage(None, journal)
            _wait_for_study(db, chaos)
            for i in range(1, cfg.workers):
                chaos.start(f"worker{i}")
            console.print(f"soak: {cfg.workers} processes on {kind}, kills for "
                          f"{cfg.minutes:g} min (seed {cfg.seed}); study in {folder}",
                          markup=False)
            began = time.monotonic()
            end = began + cfg.minutes * 60
            while (now := time.monotonic()) < end:
                time.sleep(min(rng.uniform(*KILL_EVERY_S), end - now))
                if time.monotonic() >= end:
                    break
                chaos.restart_exited()
                workers = [s for s in chaos.procs if s != "study"]
                slot = "study" if not workers or rng.random() < STUDY_KILL_P else \
                    rng.choice(workers)
                chaos.kill(slot, "chaos")
                chaos.start(slot)
                seen = {**completed_values(read_trials(db)), **seen}
            chaos.restart_exited()
            chaos.stop_all()
            minutes = (time.monotonic() - began) / 60
        finally:
            chaos.stop_all()  # on any error too: nothing this soak started is left running
        seen = {**completed_values(read_trials(db)), **seen}
        trials = read_trials(db)
        families = len({u.rsplit(".", 1)[-1] for u in trials})
        asked = families * max([1, *(sum(map(outcomes.counts, ts)) for ts in trials.values())])
        console.print(f"chaos over: {len(chaos.kills)} kills in {minutes:.1f} min; finishing "
                      f"with TRIALS={asked} WORKERS={cfg.workers}")
        status = _finish(chaos.command("study", trials=asked, workers=cfg.workers), log)
    trials = read_trials(db)
    found = folder / "trials.parquet"
    parquet = units_of(pd.read_parquet(found)) if found.is_file() else pd.DataFrame(
        columns=["family", "number", "state", "value", "stop_reason"])
    checks = [Check("finish run's exit status", str(status), status == 0),
              Check("processes that ended without being killed", str(len(chaos.own_exits)),
                    not chaos.own_exits),
              *check(trials, parquet, seen, asked, cfg.workers)]
    if not cfg.storage:
        checks.append(replay(journal))
    states = Counter(t.state.name for ts in trials.values() for t in ts)
    summary = {
        "storage": storage.masked(cfg.storage) if cfg.storage else str(journal),
        "minutes": round(minutes, 2), "workers": cfg.workers, "seed": cfg.seed,
        "kills": dict(Counter(k["kind"] for k in chaos.kills)),
        "kills_at_end": sum(k["phase"] == "end" for k in chaos.kills),
        "finished": states["COMPLETE"], "pruned": states["PRUNED"],
        "failed_killed": sum(outcomes.stop_reason(t) == "killed"
                             for ts in trials.values() for t in ts),
        "retried": sum("retry_of" in t.user_attrs for ts in trials.values() for t in ts),
        "given_up": sum(outcomes.stop_reason(t) == "killed" and t.user_attrs.get("attempt", 1)
                        >= storage.MAX_ATTEMPTS for ts in trials.values() for t in ts),
        "checks": [vars(c) for c in checks], "ok": all(c.ok for c in checks),
        "verdict": verdict(checks),
        "kill_log": chaos.kills, "own_exits": chaos.own_exits, "command": _command(cfg),
    }
    store.write_json(out / "soak.json", summary)
    console.print(table(summary))
    if summary["verdict"] == "inconclusive":
        raise SoakFailed(f"soak inconclusive: its {len(chaos.kills)} kills left no dead trial "
                         "that was retried with a seed to compare, so recovery went untested; "
                         f"run it longer (MINUTES=) or with more WORKERS=; see {out}/soak.json")
    if not summary["ok"]:
        raise SoakFailed(f"{sum(not c.ok for c in checks)} invariant(s) broken; see the table "
                         f"and {out}/soak.json")
    return out


def verdict(checks: list[Check]) -> str:
    """passed; failed when an invariant broke; inconclusive when none broke but the kills
    never produced a dead trial and its retry to check them on."""
    broken = {c.name for c in checks if not c.ok}
    if not broken:
        return "passed"
    return "inconclusive" if broken == {CONCLUSIVE} else "failed"


def _finish(cmd: list[str], log: IO[str]) -> int:
    """Run the finish study command; past FINISH_TIMEOUT_S (or on Ctrl-C here) it gets a Ctrl-C,
    which it passes on to the workers it started, and its status is what it returns then."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=host.child_env())
    try:
        return proc.wait(timeout=FINISH_TIMEOUT_S)
    except BaseException as exc:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise SoakFailed(f"the finish run did not end within {FINISH_TIMEOUT_S} s; see "
                             f"{log.name}") from None
        raise


def _command(cfg: Config) -> str:
    parts = ["make soak", f"MINUTES={cfg.minutes:g}", f"WORKERS={cfg.workers}",
             f"SEED={cfg.seed}"]
    if cfg.storage:
        parts.append(f"STORAGE={storage.masked(cfg.storage)}")
    return " ".join(parts)


def table(summary: dict) -> Table:
    kills = ", ".join(f"{k} {v}" for k, v in sorted(summary["kills"].items())) or "none"
    out = Table(title=f"soak on {summary['storage']}: {summary['minutes']:.1f} min, "
                      f"{summary['workers']} processes", title_justify="left")
    for col in ("", "value", "ok"):
        out.add_column(col, justify="right" if col == "value" else "left")
    out.add_row("kills by kind", f"{kills} ({summary['kills_at_end']} at the end)", "")
    out.add_row("trials finished / pruned / failed-killed / retried / given up after "
                f"{storage.MAX_ATTEMPTS} runs",
                f"{summary['finished']} / {summary['pruned']} / {summary['failed_killed']} / "
                f"{summary['retried']} / {summary['given_up']}", "")
    for c in summary["checks"]:
        out.add_row(c["name"], c["shown"], "yes" if c["ok"] else "NO")
    if "verdict" in summary:
        out.add_row("soak", summary["verdict"], "")
    return out
