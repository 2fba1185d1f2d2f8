"""Where a study's trials live, and how the trials of dead processes are failed and retried.

One machine: Optuna's JournalStorage on a file, `results/<name>/optuna.journal`. Each process
appends its operations to one log under a lock file and replays the log, so any number of worker
processes can share it: there is no "database is locked" as with SQLite, whose single writer lock
makes busy processes time out, and trial numbers follow the order of the log, so two workers never
get the same one. A journal has no heartbeat, so every trial records its host, pid and the pid's
start time; a RUNNING trial whose process on this host is gone is failed (`killed`) by the next
process that looks, and its configuration is queued again. A live worker's trial is never touched.

Many machines: `STORAGE=postgresql://...` puts the study on Optuna's RDBStorage with heartbeats.
A running trial beats every HEARTBEAT_S seconds; one silent for GRACE_S seconds (its machine died)
is failed by the next worker that asks for a trial, and `retry` queues its configuration again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from bench import outcomes

HEARTBEAT_S, GRACE_S = 10, 60
# A trial that records no owner this long after it started lost its process between Optuna's
# ask() and the objective's first write, where neither the pid check nor a heartbeat can see it.
ORPHAN_S = 120
MAX_ATTEMPTS = 3  # runs of one configuration lost to kills before it is given up
DRIVERS = {"postgresql": "postgresql+psycopg", "postgresql+psycopg": "postgresql+psycopg"}
URL_FORM = "postgresql://user@host[:port]/database"


class StorageError(ValueError):
    """A storage that cannot be opened or does not hold what it should; one line for users."""


def masked(url: str) -> str:
    """`url` with its password replaced by ***: the only form that is printed or stored."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return url
    return url.replace(f":{password}@", ":***@") if password else url


def check_url(url: str) -> str:
    """A supported RDB URL, or ValueError naming the valid form (for the CLI's STORAGE=)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in DRIVERS or not urlsplit(url).hostname:
        raise ValueError(f"a {URL_FORM} URL (or no STORAGE: the journal in the results folder)")
    return url


def open_storage(url: str | None, journal: Path) -> optuna.storages.BaseStorage:
    """The journal file at `journal` when `url` is None, else the database at `url`."""
    if url is None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        _check_journal(journal)
        return JournalStorage(JournalFileBackend(str(journal)))
    scheme, rest = url.split("://", 1)
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                f"{DRIVERS[scheme]}://{rest}", heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S, heartbeat_stale_trial_callback=retry,
                engine_kwargs={"connect_args": {"connect_timeout": 10}})
    except ModuleNotFoundError as exc:
        raise StorageError(f"STORAGE={masked(url)} needs the PostgreSQL driver ({exc.name}): "
                           "pip install -e '.[postgres]'") from None
    except Exception as exc:  # noqa: BLE001 - the driver's own errors vary; one line for users
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if password := urlsplit(url).password:
            reason = reason.replace(password, "***")
        raise StorageError(f"cannot open STORAGE={masked(url)}: {reason}") from None


def _check_journal(path: Path) -> None:
    """Refuse a file that is not a journal; cut a last line a killed process left half-written.

    Optuna skips an unterminated last line, but the next append would glue a whole operation to
    it and make the file unreadable; the cut is made under the journal's own lock.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as fh:
        first = fh.readline(1 << 20)
    try:
        ok = "op_code" in json.loads(first)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise StorageError(f"{path} is not an Optuna journal; move it away or choose another "
                           "RESULTS_DIR")
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with path.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.seek(0)
                fh.truncate(fh.read().rfind(b"\n") + 1)
    finally:
        lock.release()


def _stat(pid: int) -> tuple[str, str] | None:
    """A process's state and start time (clock ticks since boot) from /proc, on Linux.

    The start time tells a reused pid apart; state Z is a killed child its parent has not reaped.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def owner() -> dict[str, object]:
    """What identifies this process in a trial's user attributes."""
    stat = _stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": stat and stat[1]}


def gone(attrs: dict) -> bool:
    """True only for a trial of a process on this host that no longer runs."""
    pid = attrs.get("pid")
    if attrs.get("host") != socket.gethostname() or pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process has that pid now
        pass
    stat = _stat(pid)
    if stat is None:  # no /proc: the pid exists, and that is all that can be known
        return False
    state, start = stat
    return state in "ZX" or attrs.get("pid_start") not in (None, start)


def fail_dead(sub: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Fail (and retry) RUNNING trials whose process is gone; returns how many this call failed.

    Journal: by pid on this host. Database: by heartbeat, through Optuna's own check. Both: a
    trial with no owner ORPHAN_S seconds after it started. Failing is the lock: only the process
    whose FAIL lands first queues the retry.
    """
    n = 0
    heartbeat = isinstance(storage, optuna.storages.RDBStorage)
    if heartbeat:
        running = {t._trial_id for t in sub.get_trials(False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(sub)
        n = len(running - {t._trial_id for t in
                           sub.get_trials(False, states=(TrialState.RUNNING,))})
    for t in sub.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not (_unowned(t) or not heartbeat and gone(t.user_attrs)):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "stop_reason", "killed")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first and retries it
        retry(sub, storage.get_trial(t._trial_id))
        n += 1
    return n


def _unowned(t: FrozenTrial) -> bool:
    started = t.datetime_start
    return ("pid" not in t.user_attrs and started is not None
            and (datetime.now() - started).total_seconds() > ORPHAN_S)


def retry(sub: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a lost trial's configuration and seed once more, up to MAX_ATTEMPTS runs in all.

    Also the database's heartbeat callback. Optuna's RetryHeartbeatStaleTrialCallback is not used
    because it copies the dead trial's user attributes, host and pid included, so the retry would
    look like the dead process's trial until it overwrote them.
    """
    attempt = trial.user_attrs.get("attempt", 1)
    if attempt >= MAX_ATTEMPTS:
        return
    attrs = {"retry_of": trial.number, "attempt": attempt + 1}
    if "seed" in trial.user_attrs:
        attrs["seed"] = trial.user_attrs["seed"]
    sub.enqueue_trial(trial.params, user_attrs=attrs)


def retry_lost(sub: optuna.Study) -> None:
    """Queue once more every interrupted or killed trial that nothing has queued yet."""
    trials = sub.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.number not in retried and outcomes.stop_reason(t) in outcomes.LOST:
            retry(sub, t)


@contextmanager
def store_lock(out: Path) -> Iterator[None]:
    """One writer of the Parquet store at a time, so the newest snapshot is the one left."""
    with (out / ".store.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
