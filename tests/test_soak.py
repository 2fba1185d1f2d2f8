"""make soak: the invariant check on planted faults (fast), and a one-minute soak (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from rich.console import Console

from bench import outcomes, soak

ROOT = Path(__file__).resolve().parents[1]

LR = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}


def trial(number: int, state: TrialState, lr: float = 0.01, value: float | None = None,
          **attrs: object) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(state=state, params={"lr": lr}, distributions=LR, value=value,
                                  user_attrs={"seed": 100 + number, **attrs})
    t.number = number
    return t


def healthy() -> soak.Trials:
    """mlp: #1 killed and retried as #2; cnn: two completed trials; TRIALS=4, 2 workers."""
    return {
        "mlp": [trial(0, TrialState.COMPLETE, value=0.9, stop_reason=""),
                trial(1, TrialState.FAIL, lr=0.05, stop_reason="killed"),
                trial(2, TrialState.COMPLETE, lr=0.05, value=0.8, stop_reason="", retry_of=1,
                      attempt=2, seed=101)],
        "cnn": [trial(0, TrialState.COMPLETE, value=0.95, stop_reason=""),
                trial(1, TrialState.PRUNED, stop_reason="pruned")],
    }


def as_store(trials: soak.Trials) -> pd.DataFrame:
    """The columns of trials.parquet the soak compares, as the study writes them."""
    return pd.DataFrame([(f, t.number, t.state.name, t.value, outcomes.stop_reason(t))
                         for f, ts in trials.items() for t in ts
                         if t.state != TrialState.WAITING],
                        columns=["family", "number", "state", "value", "stop_reason"])


def broken(trials: soak.Trials, parquet: pd.DataFrame | None = None,
           seen: dict | None = None) -> list[str]:
    checks = soak.check(trials, as_store(trials) if parquet is None else parquet,
                        seen or {("mlp", 0): 0.9}, trials_asked=4, workers=2)
    return [c.name for c in checks if not c.ok]


def test_a_healthy_end_state_passes_every_invariant():
    assert broken(healthy()) == []


def test_each_planted_fault_breaks_its_invariant():
    never_queued = healthy()  # #2 is a new trial, not the retry of #1
    never_queued["mlp"][2] = trial(2, TrialState.COMPLETE, value=0.8, stop_reason="")
    assert broken(never_queued) == [soak.CONCLUSIVE,  # nothing was retried: nothing tested
                                    "killed trials run again (below the retry limit)"]

    assert broken(healthy(), seen={("mlp", 0): 0.91}) == [  # a completed value overwritten
        "completed trials whose value changed after a kill"]

    other_seed = healthy()
    other_seed["mlp"][2] = trial(2, TrialState.COMPLETE, lr=0.05, value=0.8, stop_reason="",
                                 retry_of=1, attempt=2, seed=7)
    assert broken(other_seed) == ["retries with their dead trial's configuration and seed"]

    left = healthy()
    left["cnn"].append(trial(2, TrialState.RUNNING))
    left["cnn"].append(trial(3, TrialState.WAITING))
    assert broken(left) == ["trials left RUNNING", "queued retries never run (WAITING left)"]

    queued_twice = healthy()
    queued_twice["mlp"].append(trial(3, TrialState.COMPLETE, lr=0.05, value=0.8,
                                     stop_reason="", retry_of=1, attempt=2, seed=101))
    assert broken(queued_twice) == ["dead trials queued more than once"]

    twice = healthy()
    twice["cnn"][1] = trial(0, TrialState.PRUNED, stop_reason="pruned")
    assert broken(twice, parquet=as_store(healthy())) == [
        "duplicate trial numbers within a family", "trials.parquet rows = storage rows"]

    stale = as_store(healthy())
    stale.loc[0, "value"] = 0.5
    assert broken(healthy(), parquet=stale) == ["trials.parquet rows = storage rows"]

    too_many = healthy()
    too_many["cnn"] += [trial(n, TrialState.COMPLETE, value=0.9, stop_reason="")
                        for n in (2, 3, 4, 5)]
    found, = broken(too_many)  # 6 counted trials > TRIALS 4 + WORKERS 2 - 1 + 1 retry
    assert found.startswith("counted trials <= TRIALS 4 + WORKERS 2 - 1 + retries 1")


def test_a_dead_trial_at_the_retry_limit_is_not_owed_a_retry():
    trials = healthy()
    trials["mlp"][2] = trial(2, TrialState.FAIL, lr=0.05, stop_reason="killed", retry_of=1,
                             attempt=soak.storage.MAX_ATTEMPTS, seed=101)
    assert "killed trials run again (below the retry limit)" not in broken(trials)


def test_make_soak_hands_its_variables_to_the_cli(tmp_path):
    proc = subprocess.run(["make", "-s", "soak", "MINUTE=1", f"RESULTS_DIR={tmp_path}",
                           f"PYTHON={sys.executable}"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "error: unknown setting 'MINUTE'; valid: STORAGE, MINUTES" in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_one_minute_soak_on_the_journal_loses_nothing(real_mnist, tmp_path):
    proc = subprocess.run(["make", "soak", "MINUTES=1", f"PYTHON={sys.executable}",
                           f"RESULTS_DIR={tmp_path}"], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found, = (tmp_path / "soak").glob("*-journal/soak.json")
    summary = json.loads(found.read_text())
    assert summary["ok"] and all(c["ok"] for c in summary["checks"])
    checks = {c["name"]: c["shown"] for c in summary["checks"]}
    assert checks["trials left RUNNING"] == "0" and checks["finish run's exit status"] == "0"
    assert checks["journal replays"].endswith("lines")
    assert sum(summary["kills"].values()) >= 5  # a kill every 2-8 s for a minute
    assert summary["finished"] + summary["pruned"] > 0
    assert "trials left RUNNING" in proc.stdout and "soak passed" in proc.stdout


def _verdict(trials: soak.Trials, asked: int = 4) -> tuple[str, dict[str, str]]:
    checks = soak.check(trials, as_store(trials), {}, trials_asked=asked, workers=2)
    return soak.verdict(checks), {c.name: c.shown for c in checks}


def test_a_soak_whose_kills_never_landed_is_inconclusive_not_passed():
    # Issue 21: with no kill landing on a trial every row read "0 of 0 ... ok" and the soak passed.
    quiet = {"mlp": [trial(0, TrialState.COMPLETE, value=0.9, stop_reason="")],
             "cnn": [trial(0, TrialState.COMPLETE, value=0.95, stop_reason="")]}
    found, shown = _verdict(quiet, asked=2)
    assert found == "inconclusive"
    assert shown[soak.CONCLUSIVE] == "0 dead, 0 retries run, 0 with a seed to compare"
    assert soak.verdict(soak.check(healthy(), as_store(healthy()), {}, 4, 2)) == "passed"
    # dead trials whose retries never ran: a broken invariant, so failed rather than inconclusive
    unretried = healthy()
    del unretried["mlp"][2]
    assert _verdict(unretried)[0] == "failed"


def test_a_retry_of_a_trial_killed_before_its_seed_is_counted_apart_not_matched():
    # Issue 21: _same_run counted such a retry as matched, although there was nothing to compare.
    vacuous = healthy()
    vacuous["mlp"][1] = optuna.trial.create_trial(state=TrialState.FAIL, params={},
                                                  distributions={},
                                                  user_attrs={"stop_reason": "killed"})
    vacuous["mlp"][1].number = 1
    assert soak._same_run(vacuous["mlp"][1], vacuous["mlp"][2]) == soak.NOTHING
    found, shown = _verdict(vacuous)
    assert found == "inconclusive"  # the only retry tested nothing
    assert shown["retries with their dead trial's configuration and seed"] == (
        "0 of 0 (1 more killed before their seed was set: nothing to compare)")
    assert _verdict(healthy())[1]["retries with their dead trial's configuration and seed"] == (
        "1 of 1")
    partial = healthy()  # killed while sampling: the lr it had drawn must still be the retry's
    partial["mlp"][1] = trial(1, TrialState.FAIL, lr=0.02, stop_reason="killed")
    partial["mlp"][1].user_attrs.pop("seed")
    assert soak._same_run(partial["mlp"][1], partial["mlp"][2]) == soak.DIFFERENT


def test_an_inconclusive_soak_is_its_own_verdict_in_the_table():
    checks = [soak.Check(soak.CONCLUSIVE, "0 dead, 0 retries run, 0 with a seed to compare",
                         False), soak.Check("trials left RUNNING", "0", True)]
    assert soak.verdict(checks) == "inconclusive"
    assert soak.verdict([*checks, soak.Check("journal replays", "x", False)]) == "failed"
    summary = {"storage": "j", "minutes": 1.0, "workers": 2, "kills": {}, "kills_at_end": 0,
               "finished": 1, "pruned": 0, "failed_killed": 0, "retried": 0, "given_up": 0,
               "checks": [vars(c) for c in checks], "verdict": "inconclusive"}
    console = Console(record=True, width=200)
    console.print(soak.table(summary))
    assert "inconclusive" in console.export_text()
