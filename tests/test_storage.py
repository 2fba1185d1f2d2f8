import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from bench import outcomes, storage

PASSWORD = "s3cret-pw"


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://bench:pw@db.lan:5432/studies", "postgresql://bench:***@db.lan:5432/studies"),
    ("postgresql://bench@db.lan/studies", "postgresql://bench@db.lan/studies"),
    ("not a url", "not a url"),
])
def test_storage_passwords_are_masked(url, shown):
    assert storage.masked(url) == shown


@pytest.mark.parametrize("url", ["redis://localhost/0", "sqlite:///x.db", "db.lan/studies",
                                 "postgresql:///studies", "mysql://u:p@h/db"])
def test_unsupported_storage_urls_are_refused(url):
    with pytest.raises(ValueError, match=r"a postgresql://user@host\[:port\]/database URL"):
        storage.check_url(url)


def test_unreachable_database_is_one_line_without_the_password():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://bench:{PASSWORD}@127.0.0.1:{port}/studies"
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("needs psycopg: pip install -e '.[postgres]'")
    with pytest.raises(storage.StorageError) as err:
        storage.open_storage(url, Path("unused"))
    message = str(err.value)
    assert message.startswith(f"cannot open STORAGE=postgresql://bench:***@127.0.0.1:{port}/")
    assert PASSWORD not in message and "\n" not in message


def test_a_half_written_last_line_is_cut_before_anything_is_appended(tmp_path):
    journal = tmp_path / "optuna.journal"
    db = storage.open_storage(None, journal)
    sub = optuna.create_study(storage=db, study_name="t.mlp")
    sub.tell(sub.ask(), 1.0)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "user_a')
    db = storage.open_storage(None, journal)  # as a resumed run opens it
    assert journal.read_bytes() == whole
    sub = optuna.load_study(study_name="t.mlp", storage=db)
    sub.tell(sub.ask(), 2.0)
    again = storage.open_storage(None, journal)  # the appended operations still read back
    assert [t.value for t in optuna.load_study(study_name="t.mlp", storage=again).trials] == [
        1.0, 2.0]


def test_a_file_that_is_not_a_journal_is_refused_untouched(tmp_path):
    journal = tmp_path / "optuna.journal"
    journal.write_text("id,value\n1,2\n")
    with pytest.raises(storage.StorageError, match="is not an Optuna journal"):
        storage.open_storage(None, journal)
    assert journal.read_text() == "id,value\n1,2\n"


def test_trials_of_dead_processes_are_failed_once_and_queued_again(tmp_path, monkeypatch):
    db = storage.open_storage(None, tmp_path / "optuna.journal")
    sub = optuna.create_study(storage=db, study_name="t.mlp", direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    zombie_attrs = {**storage.owner(), "pid": zombie.pid}
    zombie_attrs["pid_start"] = storage._stat(zombie.pid)[1]
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # it exits; nobody reaps it yet
    me = storage.owner()
    owners = [{"host": me["host"], "pid": dead.pid, "seed": 7},  # its process is gone
              me,  # a live worker's trial must be left alone
              {**me, "pid_start": "1"},  # the pid lives, but it is another process now
              {**me, "host": "elsewhere", "pid": dead.pid},  # cannot be judged from here
              zombie_attrs,  # killed, and its parent has not reaped it
              {}]  # its process died before it could say whose it is
    for attrs in owners:
        trial = sub.ask({"lr": lr})
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
    assert storage.fail_dead(sub, db) == 3  # the ownerless one is young: it may be starting
    monkeypatch.setattr(storage, "ORPHAN_S", 0)
    assert storage.fail_dead(sub, db) == 1
    assert storage.fail_dead(sub, db) == 0  # a second look (another worker) fails nothing again
    zombie.wait()
    trials = sub.get_trials()
    assert [t.state.name for t in trials[:6]] == [
        "FAIL", "RUNNING", "FAIL", "RUNNING", "FAIL", "FAIL"]
    assert {trials[i].user_attrs["stop_reason"] for i in (0, 2, 4, 5)} == {"killed"}
    queued = sub.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["retry_of"] for t in queued] == [0, 2, 4, 5]
    assert queued[0].user_attrs["seed"] == 7  # the retry reruns the lost trial's seed
    assert [t.system_attrs["fixed_params"]["lr"] for t in queued] == [
        trials[i].params["lr"] for i in (0, 2, 4, 5)]
    storage.retry_lost(sub)  # a resume's catch-up does not queue them a second time
    assert len(sub.get_trials(states=(TrialState.WAITING,))) == 4


def _server_binary(name: str) -> str | None:
    """Debian keeps the server's programs in /usr/lib/postgresql/<version>/bin, off PATH."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 that wants a password; yields its URL.

    initdb refuses to run as root, so under root the server runs as the `postgres` user in a
    temporary data directory it owns.
    """
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if not (initdb and pg_ctl and importlib.util.find_spec("psycopg")):
        reason = "needs PostgreSQL's initdb and pg_ctl and psycopg (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    (root / "pw").write_text(PASSWORD + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "bench", f"--pwfile={root / 'pw'}",
                    "--auth-local=trust", "--auth-host=scram-sha-256"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://bench:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql_one_killed_nothing_lost(tiny_cli, postgres, tmp_path):
    db = optuna.storages.RDBStorage(postgres.replace("postgresql://", "postgresql+psycopg://"))
    early = subprocess.run(tiny_cli.cmd("worker", "tiny", f"STORAGE={postgres}"),
                           env=tiny_cli.env, capture_output=True, text=True, timeout=120)
    assert early.returncode == 2  # a worker joins a study; it never creates one
    assert early.stderr.strip().startswith(
        "error: no study tiny.r0.mlp in postgresql://bench:***@127.0.0.1:")
    assert optuna.get_all_study_names(db) == [] and not tiny_cli.results.exists()
    # Each process's first trial waits for the other's (BENCH_TEST_BARRIER): the study cannot
    # end before the worker has a trial to be killed in.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**tiny_cli.env, "BENCH_TEST_BARRIER": f"{barrier}:2"}
    first = subprocess.Popen(tiny_cli.cmd("study", "tiny", "DEVICE=cpu", "TRIALS=24",
                                          "WORKERS=1", f"STORAGE={postgres}"), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while first.poll() is None and not (  # the study exists and records its settings
            "tiny.r0.mlp" in optuna.get_all_study_names(db)
            and "run" in db.get_study_user_attrs(db.get_study_id_from_name("tiny.r0.mlp"))):
        time.sleep(0.1)
    # The worker kills itself (BENCH_TEST_KILL) right after reporting the first of its first
    # trial's 3 epochs: the victim is known, with no polling race against the trial's end.
    marker = tmp_path / "killed"
    second = subprocess.run(tiny_cli.cmd("worker", "tiny", f"STORAGE={postgres}"),
                            env={**env, "BENCH_TEST_KILL": f"{marker}:1"},
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == -9, second.stderr
    second_err, killed = second.stderr, int(marker.read_text())
    # The victim is what the kill left RUNNING (the other process fails it only after 8 s).
    victims = [(s.study_name, t.number) for s in db.get_all_studies()
               for t in db.get_all_trials(s._study_id, deepcopy=False)
               if t.user_attrs.get("pid") == killed and t.state == TrialState.RUNNING]
    assert len(victims) == 1, second_err
    victim = victims[0]
    assert list(db.get_trial(db.get_trial_id_from_study_id_trial_number(
        db.get_study_id_from_name(victim[0]), victim[1])).intermediate_values) == [1]
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    trials = {(s.study_name, t.number): t for s in db.get_all_studies()
              for t in db.get_all_trials(s._study_id, deepcopy=False)}
    assert not [k for k, t in trials.items() if t.state == TrialState.RUNNING]
    lost = trials[victim]
    assert lost.state == TrialState.FAIL  # failed by the heartbeat check, then run again:
    retry, = [t for (name, _), t in trials.items()
              if name == victim[0] and t.user_attrs.get("retry_of") == victim[1]]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert retry.user_attrs["seed"] == lost.user_attrs["seed"]
    assert retry.user_attrs["pid"] == first.pid
    store = pd.read_parquet(tiny_cli.results / "tiny" / "trials.parquet")
    assert set(store.loc[store["state"] == "FAIL", "stop_reason"]) == {"killed"}
    counted = store[store["stop_reason"] != "killed"]
    assert 24 <= len(counted) <= 24 + 2 - 1 and counted.groupby("family").size().min() >= 12
    assert not store.duplicated(["family", "number"]).any()
    assert len(store) == len(trials)
    assert "bench:***@127.0.0.1" in out
    written = [p.read_bytes() for p in tiny_cli.results.rglob("*") if p.is_file()]
    for text in (early.stderr, out, err, second_err, *written):  # never shown, never stored
        assert PASSWORD not in (text if isinstance(text, str) else text.decode("latin-1"))


def test_a_fail_without_a_reason_counts_as_killed():
    def trial(state, **attrs):
        return optuna.trial.create_trial(
            state=state, user_attrs=attrs, params={}, distributions={},
            value=0.5 if state == TrialState.COMPLETE else None)

    assert outcomes.stop_reason(trial(TrialState.FAIL)) == "killed"
    # the objective recorded a clean finish, then a silent heartbeat let another worker fail it
    assert outcomes.stop_reason(trial(TrialState.FAIL, stop_reason="")) == "killed"
    assert outcomes.stop_reason(trial(TrialState.FAIL, stop_reason="oom")) == "oom"
    assert outcomes.stop_reason(trial(TrialState.COMPLETE, stop_reason="")) == ""
