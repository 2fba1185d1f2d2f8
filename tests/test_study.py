import io
import json
import re
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from rich.console import Console

from bench import (
    cli,
    data,
    finalists,
    host,
    outcomes,
    promote,
    stats,
    storage,
    store,
    study,
    tables,
    train,
)
from bench.space import Space

SPACE = Space(
    batch_size=(64,), lr=(1e-3, 1e-2), epochs=(2, 3), optimizers=("adam", "sgd"),
    schedules=("constant", "cosine"),
    arch_ranges={"mlp": {"depth": (1, 1), "width": (16, 32)},
                 "cnn": {"blocks": (1, 1), "channels": (4, 4), "convs": (1, 1),
                         "hidden": (16, 16)}},
)
STUDY = study.Study(
    question="test study", families={"mlp": {"archs": ("mlp",)}, "cnn": {"archs": ("cnn",)}},
    space=SPACE,
    trials={"cpu": 8, "cuda": 8}, val_size=200,
    sampler=lambda seed: optuna.samplers.RandomSampler(seed=seed),
    pruner=lambda max_epochs: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
)

MLP_WIDTHS = {"w16": {"arch_ranges": {"mlp": {"width": (16, 16)}}},
              "w32": {"arch_ranges": {"mlp": {"width": (32, 32)}}}}


def _run(tmp_path, definition=STUDY, **overrides):
    cfg = study.RunConfig(name="t", trials=overrides.pop("trials", definition.trials["cpu"]),
                          timeout=overrides.pop("timeout", None), device="cpu",
                          seed=overrides.pop("seed", 0),
                          smoke=False, results_dir=tmp_path / "results", **overrides)
    out = study.run(definition, cfg, Console(quiet=True))
    return store.read(out, "trials"), store.read(out, "epochs"), out


def test_study_writes_documented_store_with_pruned_trials(tiny_mnist, tmp_path):
    trials, epochs, out = _run(tmp_path)
    assert list(trials.columns[:len(store.TRIAL_COLUMNS)]) == list(store.TRIAL_COLUMNS)
    assert {"param_lr", "param_batch_size", "param_mlp.width0", "param_cnn.channels"} <= set(
        trials.columns)
    assert list(epochs.columns) == list(store.EPOCH_COLUMNS)
    assert trials.groupby("family").size().to_dict() == {"mlp": 4, "cnn": 4}  # equal budget
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    pruned = trials[trials["state"] == "PRUNED"]
    assert len(pruned) >= 1
    assert (pruned["stop_reason"] == "pruned").all()
    assert (pruned["pruned_at"] == pruned["epochs_run"]).all()
    assert (pruned["epochs_run"] < pruned["epochs_planned"]).all()
    assert trials["pruned_at"].isna().sum() == (trials["state"] == "COMPLETE").sum()
    assert len(epochs) == trials["epochs_run"].sum()
    merged = epochs.groupby(["family", "number"])["val_acc"].max().rename("from_epochs")
    check = trials.set_index(["family", "number"]).join(merged)
    assert (check["best_val_acc"] == check["from_epochs"]).all()
    assert trials["split_hash"].nunique() == 1 and trials["git_sha"].notna().all()
    assert (trials["params_count"] > 0).all()
    assert str(trials["param_mlp.width0"].dtype) == "Int64"  # NA for cnn trials, still ints
    assert str(trials["param_cnn.channels"].dtype) == "Int64"
    assert (out / "optuna.journal").is_file() and (out / "runs.jsonl").is_file()
    importances = store.read(out, "importances")
    assert not importances.empty and set(importances["family"]) <= {"mlp", "cnn"}
    assert (importances["importance"] >= 0).all()


@pytest.fixture
def test_file_opens():
    """Paths of MNIST test files opened while the fixture is active (an audit hook sees them)."""
    opened: list[str] = []
    active = [True]

    def hook(event, args):
        if active[0] and event == "open" and "t10k" in str(args[0]):
            opened.append(str(args[0]))

    sys.addaudithook(hook)  # hooks cannot be removed; the flag switches it off
    yield opened
    active[0] = False


def test_a_whole_study_never_reads_the_test_split(tiny_mnist, tmp_path, test_file_opens):
    trials, _, _ = _run(tmp_path, trials=4)
    assert len(trials) == 4
    assert test_file_opens == []
    data.load_test()  # the hook does see a read of the test split
    assert test_file_opens and all("t10k" in p for p in test_file_opens)


def _log_lines(log: Path) -> list[tuple[str, int, str]]:
    """BENCH_TEST_LOG's lines: ("start", pid, "") and ("open", pid, path)."""
    return [(what, int(pid), rest[0] if rest else "")
            for what, pid, *rest in (line.split(" ", 2) for line in log.read_text().splitlines())]


def test_a_study_with_workers_never_reads_the_test_split_then_finalize_does(
        tiny_cli, tmp_path, monkeypatch, capsys):
    """Through the CLI as a CPU study runs by default, with a worker process (`python -m bench
    worker`): the audit hook is installed in every process (BENCH_TEST_LOG), each process trains
    (BENCH_TEST_BARRIER), and none opens a test file. `make finalize` then does, and the same
    hook sees it; report and promote follow on the same folder (the commands' success paths)."""
    log, barrier = tmp_path / "processes.log", tmp_path / "barrier"
    barrier.mkdir()
    env = {**tiny_cli.env, "BENCH_TEST_LOG": str(log), "BENCH_TEST_BARRIER": f"{barrier}:2",
           "COLUMNS": "400"}
    ran = subprocess.run(tiny_cli.cmd("study", "tiny", "DEVICE=cpu", "TRIALS=4", "WORKERS=2"),
                         env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    out = tiny_cli.results / "tiny"
    trained = {t.user_attrs["pid"] for t in _journal_trials(out / "optuna.journal").values()}
    hooked = {pid for what, pid, _ in _log_lines(log) if what == "start"}
    assert len(trained) == 2 and trained <= hooked  # both processes trained under the hook
    assert [line for line in _log_lines(log) if line[0] == "open"] == []
    roles = [json.loads(line)["role"] for line in (out / "runs.jsonl").read_text().splitlines()]
    assert roles == ["study", "worker"]
    assert f"report (validation only): {out / 'report.html'}" in ran.stdout

    env.pop("BENCH_TEST_BARRIER")
    final = subprocess.run(tiny_cli.cmd("finalize", "tiny", "DEVICE=cpu", "SEEDS=1"), env=env,
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    finalizer = {pid for what, pid, _ in _log_lines(log) if what == "start"} - hooked
    opened = [(pid, Path(path).name) for what, pid, path in _log_lines(log) if what == "open"]
    assert len(finalizer) == 1 and {pid for pid, _ in opened} == finalizer
    assert {name for _, name in opened} == {f"{f}.gz" for f in data.TEST_FILES}
    assert (f"finalists: {out}/finalists.parquet; test reads logged in "
            f"{out}/test_access.jsonl") in final.stdout
    assert f"report: {out / 'report.html'}" in final.stdout

    monkeypatch.setattr(cli, "STUDIES_DIR", tiny_cli.site / "studies")
    monkeypatch.setattr(promote, "ENTRIES_DIR", tmp_path / "entries")
    monkeypatch.setenv("COLUMNS", "400")
    (out / "report.html").unlink()
    assert cli.main(["report", "tiny", f"RESULTS_DIR={tiny_cli.results}"]) == 0
    assert f"report: {out / 'report.html'} (" in capsys.readouterr().out
    assert "Finalists on the held-out test set" in (out / "report.html").read_text()
    assert cli.main(["promote", "tiny", f"RESULTS_DIR={tiny_cli.results}"]) == 0
    said = capsys.readouterr().out
    scored = pd.read_parquet(out / "finalists.parquet")
    best = scored.groupby("family")["val_acc"].mean().idxmax()  # chosen on validation
    entry = json.loads((tmp_path / "entries" / f"tiny-{best}.json").read_text())
    assert entry["claim"] == round(scored.loc[scored["family"] == best, "test_acc"].mean(), 6)
    assert f"promoted tiny-{best} (" in said and f"make reproduce ENTRY=tiny-{best}" in said


def test_rerun_continues_the_same_study(tiny_mnist, tmp_path):
    first, _, _ = _run(tmp_path, trials=4)
    second, _, _ = _run(tmp_path, trials=8)
    assert second.groupby("family")["number"].apply(sorted).to_dict() == {
        "mlp": [0, 1, 2, 3], "cnn": [0, 1, 2, 3]}
    keep = ["family", "number", "value", "param_lr"]
    pd.testing.assert_frame_equal(
        first[keep].sort_values(keep[:2]).reset_index(drop=True),
        second[second["number"] < 2][keep].sort_values(keep[:2]).reset_index(drop=True))
    # The resumed sampler is seeded afresh, so it does not replay the first run's suggestions.
    assert second["param_lr"].nunique() == len(second)


def test_resuming_on_another_split_is_refused(tiny_mnist, tmp_path):
    _run(tmp_path, trials=2)
    with pytest.raises(ValueError, match=r"with other settings \(SEED 0 → 1\)"):
        _run(tmp_path, trials=4, seed=1)
    wider = replace(STUDY, space=replace(SPACE, lr=(1e-4, 1e-2)))
    with pytest.raises(ValueError, match=r"another search space.*\(the study file changed\)"):
        _run(tmp_path, definition=wider, trials=4)
    assert len(store.read(tmp_path / "results" / "t", "trials")) == 2


def test_a_trial_killed_between_its_two_hashes_does_not_block_the_study(tiny_mnist, tmp_path):
    """make soak found it: a worker refused the study after a kill landed between the writes."""
    _, _, out = _run(tmp_path, trials=2)
    db = storage.open_storage(None, out / "optuna.journal")
    first = db.get_all_trials(db.get_study_id_from_name("t.r0.mlp"))[0]
    sub = optuna.load_study(study_name="t.r0.mlp", storage=db)

    def killed(**hashes: str) -> None:
        sub.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs=hashes))

    killed(split_hash=first.user_attrs["split_hash"])
    trials, _, _ = _run(tmp_path, trials=4)  # continued, not refused
    assert len(trials[trials["stop_reason"] != "killed"]) >= 4
    killed(split_hash=first.user_attrs["split_hash"], space_hash="another")
    with pytest.raises(ValueError, match="another search space"):
        _run(tmp_path, trials=6)


def test_hyperband_with_trials_of_different_lengths(tiny_mnist, tmp_path):
    hyperband = replace(
        STUDY, space=replace(SPACE, epochs=(1, 4)), trials=16,
        pruner=lambda max_epochs: optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max_epochs, reduction_factor=2))
    trials, epochs, _ = _run(tmp_path, definition=hyperband)
    assert trials["epochs_planned"].nunique() > 1
    pruned = trials[trials["state"] == "PRUNED"]
    done = trials[trials["state"] == "COMPLETE"]
    assert len(pruned) >= 1 and len(done) >= 1
    assert (pruned["epochs_run"] < pruned["epochs_planned"]).all()  # never at the last epoch
    assert (done["epochs_run"] == done["epochs_planned"]).all()
    steps = epochs.groupby(["family", "number"])["epoch"].apply(list)
    assert all(s == list(range(1, len(s) + 1)) for s in steps)  # reported at epochs 1, 2, ...


def test_diverging_trial_fails_with_reason_and_study_goes_on(tiny_mnist, tmp_path):
    mlp_only = {"mlp": SPACE.arch_ranges["mlp"]}
    bad = replace(STUDY, space=replace(SPACE, archs=("mlp",), lr=(1e6, 1e7), optimizers=("sgd",),
                                       arch_ranges=mlp_only), families=MLP_WIDTHS,
                  trials=4)
    trials, _, _ = _run(tmp_path, definition=bad)
    assert len(trials) == 4
    assert (trials["state"] == "FAIL").all() and (trials["stop_reason"] == "nonfinite").all()


@pytest.mark.slow  # seconds a run: `make test-full` (keeps `make test` under 5 minutes)
def test_smoke_study_on_real_mnist_through_the_cli(real_mnist, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "study", "mlp_vs_cnn", "SMOKE=1", "DEVICE=cpu",
         f"RESULTS_DIR={tmp_path}"], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    trials = pd.read_parquet(tmp_path / "mlp_vs_cnn-smoke" / "trials.parquet")
    workers = study.default_workers(torch.device("cpu"))  # the default: one per core
    runs = [json.loads(line) for line in
            (tmp_path / "mlp_vs_cnn-smoke" / "runs.jsonl").read_text().splitlines()]
    assert [r["role"] for r in runs] == ["study"] + ["worker"] * (workers - 1)
    assert runs[0]["config"]["workers"] == workers
    # The study's default: 3 replicates on a CPU, each family's quota in each, plus overshoot.
    per_unit = trials.groupby(["family", "replicate"]).size()
    assert set(per_unit.index) == {(f, r) for f in ("mlp", "cnn") for r in range(3)}
    assert per_unit.between(3, 3 + workers - 1).all()
    assert trials.groupby("replicate")["split_hash"].nunique().eq(1).all()
    assert trials["split_hash"].nunique() == 3  # each replicate its own split
    assert "Best trial per family" in proc.stdout


def test_comparison_line_ranks_every_family_with_its_gap_to_the_best():
    trials = pd.DataFrame({
        "family": ["mlp", "mlp", "cnn", "cnn", "lin"],
        "state": ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"],
        "value": [0.97, 0.98, 0.991, 0.995, 0.9], "wall_seconds": [1.0, 2.0, 10.0, 1.0, 0.333],
        "params_count": [100, 200, 3000, 10, 7850]})
    assert tables.comparison(trials) == (
        "validation, best trial per family (one replicate: a family verdict needs "
        "REPLICATES>=3), best first: cnn 99.10% [best in 1 of 1, 11 s per replicate]; "
        "mlp 98.00% (1.10 pp behind) [best in 0 of 1, 3 s per replicate]; "
        "lin 90.00% (9.10 pp behind) [best in 0 of 1, 0.333 s per replicate]")
    assert tables.comparison(trials[trials["family"] == "mlp"]) == ""


def test_comparison_line_takes_the_median_over_replicates():
    """cnn has the single best trial (99.5%), but mlp is better in two of three replicates."""
    trials = pd.DataFrame({
        "family": ["mlp"] * 3 + ["cnn"] * 3, "replicate": [0, 1, 2] * 2,
        "state": ["COMPLETE"] * 6, "value": [0.98, 0.97, 0.96, 0.995, 0.95, 0.94],
        "wall_seconds": [10.0] * 6, "params_count": [1] * 6})
    assert tables.comparison(trials) == (
        "validation, best trial per family (median over 3 replicates), best first: "
        "mlp 97.00% [best in 2 of 3, 10 s per replicate]; "
        "cnn 95.00% (2.00 pp behind) [best in 1 of 3, 10 s per replicate]")


@pytest.mark.slow  # seconds a run: `make test-full` (keeps `make test` under 5 minutes)
def test_ctrl_c_keeps_completed_trials_and_the_rerun_continues(real_mnist, tmp_path):
    cmd = [sys.executable, "-m", "bench", "study", "mlp_vs_cnn", "SMOKE=1", "DEVICE=cpu",
           "REPLICATES=1",
           "WORKERS=1", f"RESULTS_DIR={tmp_path}"]
    store_file = tmp_path / "mlp_vs_cnn-smoke" / "trials.parquet"
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while not store_file.exists() and proc.poll() is None:  # the store appears after trial 1
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "completed trials are kept" in err
    first = pd.read_parquet(store_file)
    assert (first["state"] == "COMPLETE").sum() + (first["state"] == "PRUNED").sum() >= 1
    assert "RUNNING" not in set(first["state"])
    assert (first.loc[first["state"] == "FAIL", "stop_reason"] == "interrupted").all()
    rerun = subprocess.run(cmd, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    second = pd.read_parquet(store_file)
    outcome = second[~second["stop_reason"].isin(["interrupted", "killed"])]
    assert outcome.groupby("family").size().to_dict() == {"mlp": 3, "cnn": 3}
    for _, lost in first[first["stop_reason"] == "interrupted"].iterrows():  # retried as-is
        same = second[(second["family"] == lost["family"]) & (second["number"] > lost["number"])]
        assert (same["param_lr"] == lost["param_lr"]).any()
    kept = first[first["state"] == "COMPLETE"].set_index(["family", "number"])["value"]
    assert second.set_index(["family", "number"]).loc[kept.index, "value"].equals(kept)


def _journal_trials(journal: Path) -> dict[tuple[str, int], optuna.trial.FrozenTrial]:
    """Every trial in a journal by (family, number), read as another process would."""
    db = storage.open_storage(None, journal)
    return {(s.study_name.split(".", 1)[1], t.number): t for s in db.get_all_studies()
            for t in db.get_all_trials(s._study_id, deepcopy=False)}


def test_kill_9_mid_trial_then_the_same_command_resumes(tiny_cli, tmp_path):
    """A replicated study, killed mid-trial, then rerun: nothing completed is lost, in any
    replicate, and the killed trial's configuration is run again in its own replicate. The
    trial kills its own process (BENCH_TEST_KILL) after reporting the first epoch of the
    8th trial, the second of replicate 1: no polling, no race with the trial's end."""
    cmd = tiny_cli.cmd("study", "tiny", "DEVICE=cpu", "TRIALS=6", "WORKERS=1", "REPLICATES=2")
    journal = tiny_cli.results / "tiny" / "optuna.journal"
    marker = tmp_path / "killed"
    proc = subprocess.run(cmd, env={**tiny_cli.env, "BENCH_TEST_KILL": f"{marker}:8"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    before = _journal_trials(journal)
    running = [k for k, t in before.items() if t.state == TrialState.RUNNING]
    assert len(running) == 1 and running[0][0].startswith("r1.")
    assert list(before[running[0]].intermediate_values) == [1]  # killed after epoch 1 of 3
    assert before[running[0]].user_attrs["pid"] == int(marker.read_text())
    assert sum(t.state == TrialState.COMPLETE for t in before.values()) == 7
    rerun = subprocess.run(cmd, env=tiny_cli.env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 trial(s) of a dead process marked FAIL" in rerun.stdout
    after = _journal_trials(journal)
    trials = pd.read_parquet(tiny_cli.results / "tiny" / "trials.parquet")
    trials["unit"] = "r" + trials["replicate"].astype(str) + "." + trials["family"]
    assert sorted(zip(trials["unit"], trials["number"], strict=True)) == sorted(after)
    assert "RUNNING" not in set(trials["state"])
    (family, number), = running
    lost = trials.set_index(["unit", "number"]).loc[(family, number)]
    assert lost["state"] == "FAIL" and lost["stop_reason"] == "killed"
    retry, = [t for (f, _), t in after.items() if f == family
              and t.user_attrs.get("retry_of") == number]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == before[(family, number)].params
    assert retry.user_attrs["seed"] == before[(family, number)].user_attrs["seed"]
    for key, t in before.items():  # every trial completed before the kill is kept as it was
        if t.state == TrialState.COMPLETE:
            assert after[key].value == t.value
    counted = trials[~trials["stop_reason"].isin(["interrupted", "killed"])]
    assert counted.groupby("unit").size().to_dict() == {"r0.mlp": 3, "r0.cnn": 3,
                                                        "r1.mlp": 3, "r1.cnn": 3}


def test_parallel_workers_share_one_journal(tiny_cli, tmp_path):
    # Each process's first trial waits until all 4 have started one (BENCH_TEST_BARRIER): the
    # study command cannot finish the study while its workers are still importing torch.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    proc = subprocess.run(tiny_cli.cmd("study", "tiny", "DEVICE=cpu", "TRIALS=16", "WORKERS=4"),
                          env={**tiny_cli.env, "BENCH_TEST_BARRIER": f"{barrier}:4"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "locked" not in proc.stderr and "error" not in proc.stderr
    trials = pd.read_parquet(tiny_cli.results / "tiny" / "trials.parquet")
    # a process reads the count, then starts its trial: up to WORKERS - 1 start on one reading
    assert 16 <= len(trials) <= 16 + 4 - 1
    assert trials.groupby("family").size().min() >= 8
    assert not trials.duplicated(["replicate", "family", "number"]).any()
    assert set(trials["state"]) == {"COMPLETE"}
    ran = _journal_trials(tiny_cli.results / "tiny" / "optuna.journal")
    pids = {int(p.name) for p in barrier.iterdir()}
    assert len(pids) == 4 and {t.user_attrs["pid"] for t in ran.values()} == pids  # all 4 ran
    runs = [json.loads(line) for line in
            (tiny_cli.results / "tiny" / "runs.jsonl").read_text().splitlines()]
    assert [r["role"] for r in runs] == ["study"] + ["worker"] * 3


@pytest.mark.parametrize(("fault", "reason", "error"), [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom",
     "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    (ValueError("boom\nsecond line"), "error", "ValueError: boom"),
])
def test_a_fault_inside_a_trial_fails_that_trial_frees_it_and_the_study_goes_on(
        tiny_mnist, tmp_path, monkeypatch, fault, reason, error):
    real_fit, models, freed_before_next = train.fit, [], []

    def fit(model, *args, **kwargs):
        if models:  # the next trial starts: nothing may still hold the failed trial's model
            freed_before_next.append(models[0]() is None)
            return real_fit(model, *args, **kwargs)
        models.append(weakref.ref(model))
        raise fault

    monkeypatch.setattr(train, "fit", fit)
    trials, _, _ = _run(tmp_path, trials=4)
    assert len(trials) == 4
    failed = trials[trials["state"] == "FAIL"]
    assert failed[["stop_reason", "error"]].values.tolist() == [[reason, error]]
    assert set(trials.loc[trials["state"] != "FAIL", "error"]) == {""}
    assert freed_before_next and all(freed_before_next)


def test_a_study_whose_trials_mostly_fail_stops_with_a_clear_message(tiny_mnist, tmp_path):
    mlp_only = {"mlp": SPACE.arch_ranges["mlp"]}
    bad = replace(STUDY, space=replace(SPACE, archs=("mlp",), lr=(1e6, 1e7), optimizers=("sgd",),
                                       arch_ranges=mlp_only), families=MLP_WIDTHS,
                  trials=40)
    with pytest.raises(outcomes.StudyFailing, match=r"^5 of the 5 trials run so far failed "
                                                 r"\(nonfinite 5\); stopped instead of"):
        _run(tmp_path, definition=bad)
    trials = store.read(tmp_path / "results" / "t", "trials")  # written before stopping
    assert len(trials) == outcomes.FAIL_MIN and (trials["stop_reason"] == "nonfinite").all()


def test_a_minority_of_failed_trials_lets_the_study_go_on(tiny_mnist, tmp_path, monkeypatch):
    real_fit, calls = train.fit, []

    def fit(*args, **kwargs):  # trials 2, 4 and 6 diverge: after 6 trials half failed
        calls.append(len(calls) + 1)
        if calls[-1] in (2, 4, 6):
            raise train.NonFiniteLoss("mean train loss nan")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit)
    short = replace(STUDY, space=replace(SPACE, epochs=(1, 1)))
    trials, _, _ = _run(tmp_path, definition=short, trials=8)  # half is not most: it goes on
    assert len(trials) == 8 and len(calls) == 8
    assert (trials["state"] == "FAIL").sum() == 3
    assert set(trials.loc[trials["state"] == "FAIL", "stop_reason"]) == {"nonfinite"}


def test_a_rerun_of_a_finished_study_returns_before_loading_any_data(tiny_mnist, tmp_path,
                                                                     monkeypatch):
    _, _, out = _run(tmp_path, trials=2)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def load_train(*args, **kwargs):
        raise AssertionError("a finished study loaded its data")

    monkeypatch.setattr(data, "load_train", load_train)
    console = Console(record=True, width=300, file=io.StringIO())
    cfg = study.RunConfig(name="t", trials=2, timeout=None, device="cpu", seed=0, smoke=False,
                          results_dir=tmp_path / "results")
    assert study.run(STUDY, cfg, console) == out
    assert ("all 1 replicate(s) of every family have used their budget and none is running or "
            "queued; nothing to do (raise TRIALS=, TIMEOUT= or REPLICATES= to continue)") in (
        " ".join(console.export_text().split()))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_config_table_shows_values_as_text_and_masks_the_storage_password():
    cfg = study.RunConfig(name="t", trials=1, timeout=None, device="cpu", seed=0, smoke=False,
                          results_dir=Path("[red]runs[/red]"),
                          storage="postgresql://bench:hunter2@db.lan/studies")
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(tables.config_table(cfg.public(), SPACE, "cpu"))
    text = console.export_text()
    assert "[red]runs[/red]" in text
    assert "postgresql://bench:***@db.lan/studies" in text and "hunter2" not in text
    assert "│ timeout " in text and "None" not in text  # unset settings read `none`


def test_precision_and_fast_reach_every_trial_and_are_stored_for_workers(tiny_mnist, tmp_path,
                                                                         monkeypatch):
    calls = []
    real_build, real_fit = train.build, train.fit

    def build(*args, **kwargs):
        calls.append(("build", kwargs.get("fast")))
        return real_build(*args, **kwargs)

    def fit(*args, **kwargs):
        calls.append(("fit", kwargs.get("graph"), kwargs.get("precision")))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "build", build)
    monkeypatch.setattr(train, "fit", fit)
    trials, _, out = _run(tmp_path, trials=2, precision="bf16", fast=False)
    assert len(trials) == 2 and set(calls) == {("build", False), ("fit", False, "bf16")}
    assert {json.loads(r)["precision"] for r in trials["recipe"]} == {"bf16"}  # finalize reads it
    config = json.loads((out / "runs.jsonl").read_text().splitlines()[-1])["config"]
    assert (config["precision"], config["fast"]) == ("bf16", False)
    db = storage.open_storage(None, out / "optuna.journal")
    stored = optuna.load_study(study_name="t.r0.mlp", storage=db).user_attrs["run"]
    assert (stored["precision"], stored["fast"]) == ("bf16", False)  # what `make worker` takes

    calls.clear()
    _run(tmp_path / "default", trials=2)
    assert set(calls) == {("build", True), ("fit", None, "fp32")}


def test_default_workers_one_per_usable_core_capped(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for cores, expected in ((1, 1), (2, 2), (6, 6), (64, study.AUTO_WORKERS)):
        monkeypatch.setattr(host, "cores", lambda cores=cores: cores)
        assert study.default_workers(cpu) == expected
        assert study.default_workers(cuda) == 1
    monkeypatch.setattr(host, "cores", lambda: 64)
    assert study.resolve(STUDY, "t", cpu, {"smoke": True}).workers == study.SMOKE_TRIALS
    assert study.resolve(STUDY, "t", cpu, {"trials": 3}).workers == 3
    assert study.resolve(STUDY, "t", cpu, {"trials": 30, "workers": 1}).workers == 1
    assert host.threads_per_worker(8) == 8  # 64 cores shared by 8 processes


def test_a_study_is_not_continued_in_another_precision(tiny_mnist, tmp_path):
    _run(tmp_path, trials=2)
    with pytest.raises(ValueError, match=r"other settings \(PRECISION fp32 → bf16\)"):
        _run(tmp_path, trials=4, precision="bf16")
    trials, _, _ = _run(tmp_path, trials=4)  # the same precision continues
    assert len(trials) == 4


FIVE = {"mlp-adam": {"archs": ("mlp",), "optimizers": ("adam",)},
        "mlp-sgd": {"archs": ("mlp",), "optimizers": ("sgd",)},
        "cnn": {"archs": ("cnn",)},
        "mlp-cosine": {"archs": ("mlp",), "schedules": ("cosine",)},
        "mlp-half": {"archs": ("mlp",), "normalization": ("half",)}}


def test_five_families_get_equal_budgets_and_a_holm_adjusted_test_verdict(tiny_mnist, tmp_path):
    five = replace(STUDY, families=FIVE, space=replace(SPACE, epochs=(1, 1),
                                                       normalization=("mnist", "half")))
    trials, _, out = _run(tmp_path, definition=five, trials=10)
    assert trials.groupby("family").size().to_dict() == dict.fromkeys(FIVE, 2)
    by = trials.set_index("family")
    assert set(by.loc["cnn", "arch"]) == {"cnn"} and set(by.loc["mlp-sgd", "arch"]) == {"mlp"}
    assert set(by.loc["mlp-sgd", "param_optimizer"]) == {"sgd"}
    assert set(by.loc["mlp-cosine", "param_schedule"]) == {"cosine"}
    assert set(by.loc["mlp-half", "normalization"]) == {"half"}
    assert set(trials["normalization"]) <= {"mnist", "half"}
    run = json.loads((out / "runs.jsonl").read_text().splitlines()[0])
    assert list(run["families"]) == list(FIVE)
    result = finalists.finalize(five, out, torch.device("cpu"), k=1, seeds=2, refresh=False,
                                console=Console(quiet=True))
    assert set(result.loc[result["family"] == "mlp-half", "normalization"]) == {"half"}
    verdicts = store.read(out, "verdicts")
    reference = stats.reference_family(stats.replicate_scores(result))
    family = verdicts[verdicts["level"] == "family"]
    assert sorted(family["family"]) == sorted(set(FIVE) - {reference})  # no family vanishes
    assert (family["reference"] == reference).all()
    # one replicate: no family verdict, and the answer says so
    assert (family["verdict"] == "not separable").all()
    assert "one replicate" in stats.answer(verdicts, 1)
    diagnostic = verdicts[verdicts["level"] == "replicate"]
    assert len(diagnostic) == 4 and diagnostic["p_adjusted"].notna().all()


def test_mlp_vs_cnn_asks_what_it_asked_before():
    definition = cli.load_study("mlp_vs_cnn")
    cfg = study.resolve(definition, "mlp_vs_cnn", torch.device("cpu"), {})
    spaces = study.validate(definition, cfg)
    assert {f: s.archs for f, s in spaces.items()} == {"mlp": ("mlp",), "cnn": ("cnn",)}
    for family, space in spaces.items():  # the same knobs as before families were spaces
        sub = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = sub.ask()
        assert space.sample(trial).arch == family
        assert "arch" not in trial.params and "normalization" not in trial.params
        assert space.normalization_of(trial) == "mnist"


def test_the_docs_example_study_loads_and_validates(tmp_path, monkeypatch):
    page = (Path(__file__).parents[1] / "docs" / "writing-studies.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "adam_vs_sgd.py").write_text(code)
    monkeypatch.setattr(cli, "STUDIES_DIR", tmp_path)
    definition = cli.load_study("adam_vs_sgd")
    cfg = study.resolve(definition, "adam_vs_sgd", torch.device("cpu"), {})
    spaces = study.validate(definition, cfg)
    assert {f: s.optimizers for f, s in spaces.items()} == {"sgd": ("sgd",), "adam": ("adam",)}
    assert cfg.timeout == 240


def test_numbers_are_formatted_for_people():
    df = pd.DataFrame({"family": ["mlp"], "best val acc": [0.98091], "params": [345908],
                       "total s": [0.333], "trial s": [7.71], "lr": [0.0031234],
                       "val loss": [0.12345], "gap pp": [-0.5], "p Holm": [0.0123]})
    assert tables.human(df).iloc[0].to_dict() == {
        "family": "mlp", "best val acc": "98.09%", "params": "345,908", "total s": "0.333",
        "trial s": "7.71", "lr": "0.0031", "val loss": "0.1235", "gap pp": "-0.50",
        "p Holm": "0.012"}
    assert tables.seconds(840.4) == "840" and tables.seconds(1234.0) == "1,234"
    assert tables.human(pd.DataFrame({"test acc": [float("nan")]})).iloc[0, 0] == "–"


def test_progress_bars_count_each_family_and_say_which_trials_are_this_process(tiny_mnist,
                                                                               tmp_path):
    console = Console(record=True, width=150, file=io.StringIO())
    cfg = study.RunConfig(name="t", trials=4, timeout=None, device="cpu", seed=0, smoke=False,
                          results_dir=tmp_path / "results")
    study.run(replace(STUDY, space=replace(SPACE, epochs=(1, 1))), cfg, console)
    text = console.export_text()
    assert re.search(r"trials mlp \(2 by this process\) .* 2/2", text)
    assert re.search(r"trials cnn \(2 by this process\) .* 2/2", text)


# --- replicates and the scheduler ---------------------------------------------------------------

M, C = (0, "mlp"), (0, "cnn")


def test_schedule_gives_every_family_the_same_trials_and_fills_replicates_in_order():
    t = study.Tally
    assert study.schedule({M: t(done=2), C: t(done=1)}, quota=3, budget=None) == C
    assert study.schedule({M: t(done=1, running=1), C: t(done=1)}, 3, None) == C
    # replicate 0 is taken (done + running reach the quota): replicate 1 starts
    assert study.schedule({M: t(done=2, running=1), C: t(done=3), (1, "mlp"): t(),
                           (1, "cnn"): t()}, 3, None) == (1, "mlp")
    # nothing to start: wait while a trial runs (it may die and be queued again), else done
    assert study.schedule({M: t(done=2, running=1), C: t(done=3)}, 3, None) == study.WAIT
    assert study.schedule({M: t(done=3), C: t(done=4)}, 3, None) is None


def test_schedule_splits_seconds_equally_and_never_starts_an_epoch_that_cannot_fit():
    t = study.Tally
    # the family with the smaller share of its seconds goes next, whatever its trial count
    assert study.schedule({M: t(done=9, seconds=20), C: t(done=2, seconds=40)}, 1000, 60) == M
    # 57 of 60 s used and an epoch takes 4 s: the trial would overrun, so it is not started
    assert study.schedule({M: t(done=9, seconds=57, epoch_s=4), C: t(done=2, seconds=60)},
                          1000, 60) is None
    assert study.schedule({M: t(done=9, seconds=55, epoch_s=4), C: t(seconds=60)}, 1000,
                          60) == M


def test_schedule_runs_a_queued_retry_even_when_the_budget_is_spent():
    """A retry reruns a lost trial's configuration; skipping it would leave a WAITING trial."""
    t = study.Tally
    assert study.schedule({M: t(done=3, seconds=90), C: t(done=3, seconds=61, queued=1)},
                          1000, 60) == C
    assert study.schedule({M: t(done=3), C: t(done=3, queued=1)}, 3, None) == C


class VirtualClock:
    """bench.study's clocks (`time.perf_counter`, `datetime.now`) and the journal's (which stamps
    a trial's start) plus seconds the test adds: an epoch or a trial's set-up costs exactly what
    the test says, and the real work around them is noise far below the margins left."""

    def __init__(self):
        self.offset = 0.0

    def __getattr__(self, name):  # sleep, strftime, ...: the real ones
        return getattr(time, name)

    def perf_counter(self):
        return time.perf_counter() + self.offset

    def datetime(self):
        clock = self

        class Now(datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.now(tz) + timedelta(seconds=clock.offset)

        return Now


EPOCH_S, SETUP_S = 100.0, 15.0  # a trial's set-up is charged but no epoch estimate sees it


def test_a_timed_study_charges_every_second_and_leaves_nothing_waiting(tiny_mnist, tmp_path,
                                                                      monkeypatch):
    """Every epoch takes 100 virtual seconds and every trial's set-up 15: what the budget rule
    does is then known exactly, trial by trial, however loaded the machine is (every decision
    is at least 5 s from its boundary; a trial's real work adds well under a second)."""
    clock = VirtualClock()
    monkeypatch.setattr(study, "time", clock)
    monkeypatch.setattr(study, "datetime", clock.datetime())
    # the journal stamps a trial's start, which a running trial's charge is counted from
    monkeypatch.setattr(optuna.storages.journal._storage, "datetime", clock.datetime())
    real_build = train.build

    def build(*args, **kwargs):
        clock.offset += SETUP_S
        return real_build(*args, **kwargs)

    def fit(model, opt, sched, split, batch_size, epochs, seed, on_epoch=None, **kwargs):
        history = []
        for epoch in range(1, epochs + 1):
            clock.offset += EPOCH_S
            history.append({"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0,
                            "val_acc": 0.5 + epoch / 100, "lr": 1e-3, "seconds": EPOCH_S})
            if on_epoch(epoch, history[-1]):
                break
        return history

    monkeypatch.setattr(train, "build", build)
    monkeypatch.setattr(train, "fit", fit)
    timed = replace(STUDY, space=replace(SPACE, epochs=(1, 4)),
                    pruner=lambda max_epochs: optuna.pruners.NopPruner())
    budget = 750.0  # per family
    trials, _, out = _run(tmp_path, definition=timed, trials=1000, timeout=2 * budget)
    stops, ends = [], []
    for family, ts in trials.sort_values("number").groupby("family"):
        left = budget
        for t in ts.itertuples():
            # a trial starts only while an epoch fits in what is left; it trains an epoch only
            # if that epoch ends inside the budget, except its first (the set-up overruns)
            assert left > EPOCH_S, (family, t.number)
            runs = min(t.epochs_planned, max(1, int((left - SETUP_S) // EPOCH_S)))
            assert (t.epochs_run, t.stop_reason) == (
                runs, "budget" if runs < t.epochs_planned else ""), (family, t.number, left)
            assert t.wall_seconds == pytest.approx(SETUP_S + runs * EPOCH_S, abs=2)
            left -= SETUP_S + runs * EPOCH_S
            stops.append(t.stop_reason)
        assert -SETUP_S <= left <= EPOCH_S  # it stops only once no epoch fits, and overruns by
        ends.append(left)  # at most one trial's set-up
    assert "budget" in stops and min(ends) < 0  # the stop rule and the set-up overrun happened
    db = storage.open_storage(None, out / "optuna.journal")
    waiting = [t for s in db.get_all_studies() for t in db.get_all_trials(s._study_id)
               if t.state == TrialState.WAITING]
    assert not waiting
    assert "s per replicate" in tables.family_summary(trials)


def test_tallies_charge_finished_trials_their_wall_time_and_running_ones_their_time_so_far(
        monkeypatch):
    a, b = optuna.create_study(), optuna.create_study()

    def add(sub, state, wall=None, epochs=(), **attrs):
        attrs["epochs"] = [{"seconds": s} for s in epochs]
        if wall is not None:
            attrs["wall_seconds"] = wall
        sub.add_trial(optuna.trial.create_trial(
            state=state, value=0.5 if state == TrialState.COMPLETE else None,
            user_attrs=attrs, params={}, distributions={}))

    add(a, TrialState.COMPLETE, wall=12.0, epochs=(3.0, 5.0))
    add(a, TrialState.PRUNED, wall=4.0, epochs=(4.0,), stop_reason="budget")
    add(a, TrialState.FAIL, wall=7.0, epochs=(9.0,), stop_reason="nonfinite")  # charged
    add(a, TrialState.FAIL, wall=30.0, stop_reason="killed")  # lost: retried, not charged
    add(a, TrialState.WAITING, retry_of=3)
    add(b, TrialState.COMPLETE, wall=6.0, epochs=(6.0,))
    running = b.ask()  # started now, in some process: charged what it has run so far, and at
    started = b.trials[running.number].datetime_start  # least the family's longest epoch

    def at(seconds):
        class Later(datetime):
            @classmethod
            def now(cls, tz=None):
                return started + timedelta(seconds=seconds)

        monkeypatch.setattr(study, "datetime", Later)
        return study.tallies({(0, "a"): a, (1, "a"): b})

    got = at(25)
    # epoch time: the family's longest over both replicates' epochs (3, 4, 5, 6 and 9 s)
    assert got[(0, "a")] == study.Tally(done=3, running=0, queued=1, seconds=23.0, epoch_s=9.0)
    assert got[(1, "a")] == study.Tally(done=1, running=1, queued=0, seconds=31.0, epoch_s=9.0)
    assert at(4)[(1, "a")].seconds == 6.0 + 9.0  # 4 s in: charged one whole epoch already


def test_replicates_run_the_whole_study_again_on_their_own_split_and_seeds(tiny_mnist, tmp_path):
    trials, epochs, out = _run(tmp_path, trials=4, replicates=2)
    assert trials.groupby(["replicate", "family"]).size().to_dict() == {
        (0, "cnn"): 2, (0, "mlp"): 2, (1, "cnn"): 2, (1, "mlp"): 2}
    hashes = trials.groupby("replicate")["split_hash"].unique()
    assert len(hashes[0]) == len(hashes[1]) == 1 and hashes[0][0] != hashes[1][0]
    seeds = trials.set_index(["replicate", "family", "number"])["seed"]
    assert seeds.loc[0, "mlp", 0] != seeds.loc[1, "mlp", 0]
    assert seeds.loc[1, "mlp", 0] == study.derive_seed(1, "mlp", 0)  # study seed SEED + 1
    assert set(epochs["replicate"]) == {0, 1}
    db = storage.open_storage(None, out / "optuna.journal")
    assert sorted(optuna.get_all_study_names(db)) == ["t.r0.cnn", "t.r0.mlp", "t.r1.cnn",
                                                      "t.r1.mlp"]
    run = json.loads((out / "runs.jsonl").read_text().splitlines()[0])
    assert run["split_hashes"] == {"0": hashes[0][0], "1": hashes[1][0]}
    assert run["config"]["replicates"] == 2


def test_more_replicates_keep_the_finished_ones(tiny_mnist, tmp_path):
    first, _, _ = _run(tmp_path, trials=4, replicates=1)
    second, _, _ = _run(tmp_path, trials=4, replicates=3)
    keep = ["replicate", "family", "number", "value", "param_lr", "seed"]
    pd.testing.assert_frame_equal(
        first[keep].sort_values(keep[:3]).reset_index(drop=True),
        second[second["replicate"] == 0][keep].sort_values(keep[:3]).reset_index(drop=True))
    assert second.groupby("replicate").size().to_dict() == {0: 4, 1: 4, 2: 4}


def test_a_finished_study_is_not_shown_for_another_seed(tiny_mnist, tmp_path):
    """A rerun with another SEED used to print the old seed's table and 'nothing to do'."""
    _run(tmp_path, trials=2)
    with pytest.raises(ValueError, match=r"other settings \(SEED 0 → 5\)"):
        _run(tmp_path, trials=2, seed=5)


def test_finalize_over_replicates_writes_the_family_verdict(tiny_mnist, tmp_path):
    _, _, out = _run(tmp_path, trials=4, replicates=2)
    result = finalists.finalize(STUDY, out, torch.device("cpu"), k=1, seeds=2, refresh=False,
                                console=Console(quiet=True))
    assert result.groupby(["replicate", "family"]).size().to_dict() == {
        (0, "cnn"): 2, (0, "mlp"): 2, (1, "cnn"): 2, (1, "mlp"): 2}
    trials = store.read(out, "trials")
    for r in (0, 1):  # each replicate's finalists retrain on that replicate's own split
        assert set(result.loc[result["replicate"] == r, "split_hash"]) == set(
            trials.loc[trials["replicate"] == r, "split_hash"])
    predictions = store.read(out, "test_predictions")
    assert set(predictions["replicate"]) == {0, 1}
    verdicts = store.read(out, "verdicts")
    assert list(verdicts.columns) == list(stats.VERDICT_COLUMNS)
    family = verdicts[verdicts["level"] == "family"]
    assert len(family) == 1 and family["n"].iloc[0] == 2 and family["replicate"].isna().all()
    assert family["verdict"].iloc[0] in {"better", "worse", "not separable"}
    assert set(verdicts.loc[verdicts["level"] == "replicate", "replicate"]) == {0, 1}


def test_finalize_refuses_a_study_with_a_family_that_has_no_finalist(tiny_mnist, tmp_path,
                                                                      test_file_opens):
    _, _, out = _run(tmp_path, trials=4, replicates=2)
    trials = store.read(out, "trials")
    trials.loc[(trials["family"] == "cnn") & (trials["replicate"] == 1), "state"] = "FAIL"
    store.write_parquet(out / "trials.parquet", trials)
    with pytest.raises(ValueError, match=r"no completed trial for cnn \(replicate 1\) in .*: "
                                         r"the study cannot compare its families; the test "
                                         r"split was not read"):
        finalists.finalize(STUDY, out, torch.device("cpu"), k=1, seeds=1, refresh=False,
                           console=Console(quiet=True))
    assert not (out / "test_access.jsonl").exists() and not (out / "finalists.parquet").exists()
    assert not test_file_opens


def test_finalize_refuses_a_study_that_is_still_running(tiny_mnist, tmp_path, test_file_opens):
    """Found on a real run: a finalize started while the study's last replicate ran scored four
    replicates of five."""
    _, _, out = _run(tmp_path, trials=4)
    trials = store.read(out, "trials")
    trials.loc[trials.index[-1], "state"] = "RUNNING"
    store.write_parquet(out / "trials.parquet", trials)
    with pytest.raises(ValueError, match=r"has 1 trial\(s\) RUNNING: the study is still "
                                         r"running .* the test split was not read"):
        finalists.finalize(STUDY, out, torch.device("cpu"), k=1, seeds=1, refresh=False,
                           console=Console(quiet=True))
    assert not (out / "test_access.jsonl").exists() and not test_file_opens


def test_runs_jsonl_records_the_families_the_cpu_ran(tiny_mnist, tmp_path):
    """A CPU run of a study with cpu_families used to record the GPU families, so the report's
    scientific axis found no overlap with the trials."""
    two = replace(STUDY, cpu_families=MLP_WIDTHS, cpu_space=replace(
        SPACE, archs=("mlp",), arch_ranges={"mlp": {"depth": (1, 1), "width": (16, 32)}}))
    trials, _, out = _run(tmp_path, definition=two, trials=2)
    run = json.loads((out / "runs.jsonl").read_text().splitlines()[0])
    assert set(run["families"]) == set(MLP_WIDTHS) == set(trials["family"])
