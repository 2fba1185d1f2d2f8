"""Reproducing entries end to end on tiny MNIST files: tables, test-access log, checkpoints."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

from bench import cli, data, leaderboard, reproduce, store, train

E = {e.id: e for e in leaderboard.RECIPES}
CPU = torch.device("cpu")


def _entries():
    """A test-scored entry and a validation-scored one, both small enough for tiny data."""
    cnn = replace(E["cnn-conv32-adam"], recipe=replace(E["cnn-conv32-adam"].recipe, epochs=1))
    mlp = replace(E["mlp-128-128-adam"], val_size=200,
                  recipe=replace(E["mlp-128-128-adam"].recipe, epochs=2))
    return cnn, mlp


pytestmark = pytest.mark.usefixtures("one_thread")  # also restores what `reproduce` sets


def _run(entries, n_seeds, out, save=False):
    return reproduce.reproduce(list(entries), n_seeds, CPU, out, save, Console(quiet=True),
                               threads=1)


def test_reproduce_writes_rows_epochs_and_logs_test_access(tiny_mnist, tmp_path, monkeypatch):
    cnn, mlp = _entries()
    log = tmp_path / "leaderboard" / "test_access.jsonl"
    reads = []
    real_load_test = data.load_test

    def load_test(*args, **kwargs):  # the log line must exist before the files are opened
        reads.append(log.read_text().count("\n"))
        return real_load_test(*args, **kwargs)

    monkeypatch.setattr(data, "load_test", load_test)
    rows = _run([cnn, mlp], 2, tmp_path)
    assert reads == [1]
    stored = pd.read_parquet(tmp_path / "leaderboard.parquet")
    assert list(stored.columns) == list(reproduce.ROW_COLUMNS)
    assert stored[["entry", "seed"]].values.tolist() == [[cnn.id, 0], [cnn.id, 1],
                                                         [mlp.id, 0], [mlp.id, 1]]
    assert stored["acc"].tolist() == rows["acc"].tolist()
    assert stored["acc"].between(0.5, 1).all()  # the synthetic classes are easy
    assert (stored["eval_on"] == ["test", "test", "val", "val"]).all()
    assert stored["git_sha"].str.len().min() >= 7
    assert stored["device"].str.startswith("cpu").all() and (stored["threads"] == 1).all()
    assert (stored["seconds_per_epoch"] > 0).all() and set(stored["claim"]) == {
        "[0.975, 0.985]", "null"}
    assert set(stored["claim_unit"]) == {"accuracy"}
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["code"], x["seed"]) for x in lines] == [
        ("bench.reproduce.reproduce", None), ("bench.reproduce.train_entry", 0),
        ("bench.reproduce.train_entry", 1)]  # the validation-scored entry never touches test
    assert lines[1]["config"]["id"] == cnn.id
    epochs = pd.read_parquet(tmp_path / "leaderboard" / "epochs.parquet")
    assert len(epochs) == 2 * 1 + 2 * 2
    scored = epochs[epochs["entry"] == mlp.id]["eval_acc"]
    assert scored.notna().all()  # scored after every epoch, as that recipe does


def test_rerunning_an_entry_replaces_only_its_rows(tiny_mnist, tmp_path):
    cnn, mlp = _entries()
    _run([cnn, mlp], 2, tmp_path)
    first = pd.read_parquet(tmp_path / "leaderboard.parquet")
    _run([mlp], 1, tmp_path)
    again = pd.read_parquet(tmp_path / "leaderboard.parquet")
    assert again[["entry", "seed"]].values.tolist() == [[cnn.id, 0], [cnn.id, 1], [mlp.id, 0]]
    pd.testing.assert_frame_equal(again[again["entry"] == cnn.id], first[first["entry"] == cnn.id])
    # same seed, same data, same code: the same number
    assert again.iloc[2]["acc"] == first.iloc[2]["acc"]


def test_a_validation_only_run_never_reads_test(tiny_mnist, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("test split read")

    monkeypatch.setattr(data, "load_test", refuse)
    _run([_entries()[1]], 1, tmp_path)
    assert not (tmp_path / "leaderboard" / "test_access.jsonl").exists()


def test_checkpoint_reloads_with_weights_only(tiny_mnist, tmp_path):
    cnn = _entries()[0]
    row = _run([cnn], 1, tmp_path, save=True).iloc[0]
    path = tmp_path / "leaderboard" / "checkpoints" / cnn.id / "seed0.pt"
    assert row["checkpoint"] == str(path)
    model = reproduce.load_checkpoint(cnn, path, CPU)
    test = data.load_test()
    x = data.to_inputs(test.images, cnn.normalization, CPU)
    _, acc = train.evaluate(model, x, test.labels, cnn.eval_batch_size)
    assert acc == pytest.approx(row["acc"])
    torch.save({"weights": torch.zeros(1), "code": print}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        reproduce.load_checkpoint(cnn, tmp_path / "evil.pt", CPU)


def test_unknown_results_dir_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no leaderboard results at .*run make reproduce first"):
        reproduce.read_rows(tmp_path)


ROOT = Path(__file__).resolve().parents[1]


def _committed_board(results: Path) -> tuple[list[str], list[dict]]:
    """A leaderboard as a fresh clone has it: hand-made runs of every entry summarised by the
    command, then leaderboard.parquet gone (results/ is not committed, the table is)."""
    entries = leaderboard.all_entries()
    rows = pd.DataFrame([{
        "entry": e.id, "seed": s, "acc": 0.95 + 0.001 * i + 0.002 * s, "eval_on": e.eval_on,
        "metric": e.metric, "claim": json.dumps(e.claim), "claim_unit": e.claim_unit,
        "seconds_per_epoch": 1.0 + i, "device": "cpu: committed", "git_sha": "c0ffee",
        "versions": "torch=x", "threads": 1, "entry_hash": e.digest,
        "datetime_start": pd.Timestamp("2026-01-01", tz="UTC")}
        for i, e in enumerate(entries.values()) for s in range(3)])
    store.write_parquet(results / "leaderboard.parquet", rows)
    assert cli.main(["leaderboard", f"RESULTS_DIR={results}"]) == 0
    (results / "leaderboard.parquet").unlink()
    return ((results / "leaderboard.md").read_text().splitlines(),
            json.loads((results / "leaderboard.json").read_text()))


def _table_rows(lines: list[str]) -> dict[str, str]:
    return {line.split(" | ")[0][2:]: line for line in lines
            if line.startswith("| ") and not line.startswith("| entry |")}


def test_make_leaderboard_after_one_entry_keeps_every_other_committed_row(
        tiny_mnist, tmp_path, one_thread):
    results = tmp_path / "results"
    before_md, before_json = _committed_board(results)
    assert len(_table_rows(before_md)) == len(leaderboard.all_entries())
    assert cli.main(["reproduce", "ENTRY=cnn-conv32-adam", "N_SEEDS=1", "DEVICE=cpu",
                     f"RESULTS_DIR={results}"]) == 0
    proc = subprocess.run(["make", "-s", "leaderboard", f"RESULTS_DIR={results}",
                           f"PYTHON={sys.executable}"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "updated from leaderboard.parquet: cnn-conv32-adam" in proc.stdout
    assert "kept as committed: " in proc.stdout
    after_md = (results / "leaderboard.md").read_text().splitlines()
    old, new = _table_rows(before_md), _table_rows(after_md)
    assert old.keys() == new.keys()
    assert {k for k in old if old[k] != new[k]} == {"cnn-conv32-adam"}
    assert "| 1 | [97.5%, 98.5%) accuracy |" in new["cnn-conv32-adam"]
    after_json = json.loads((results / "leaderboard.json").read_text())
    changed = [a["entry"] for a, b in zip(before_json, after_json, strict=False) if a != b]
    assert len(after_json) == len(before_json) and "cnn-conv32-adam" in changed
    keep = {r["entry"]: r for r in before_json if r["entry"] != "cnn-conv32-adam"}
    assert keep == {r["entry"]: r for r in after_json if r["entry"] != "cnn-conv32-adam"}
    assert any(line.startswith("- cnn-conv32-adam: device: cpu") for line in after_md)
    assert any("device: cpu: committed" in line for line in after_md)  # the kept rows' runs


def test_a_table_without_its_records_is_refused_not_wiped(tiny_mnist, tmp_path, one_thread,
                                                          capsys):
    results = tmp_path / "results"
    results.mkdir()
    old = "# Leaderboard\n\n| mlp-400-200-100-sgd | test (accuracy) | 98.21% | 1 |\n"
    (results / "leaderboard.md").write_text(old)
    assert cli.main(["reproduce", "ENTRY=cnn-conv32-adam", "N_SEEDS=1", "DEVICE=cpu",
                     f"RESULTS_DIR={results}"]) == 0
    capsys.readouterr()
    assert cli.main(["leaderboard", f"RESULTS_DIR={results}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {results}/leaderboard.md has no leaderboard.json beside it")
    assert err.count("\n") == 1 and "mlp-400-200-100-sgd" in err
    assert (results / "leaderboard.md").read_text() == old
    assert not (results / "leaderboard.json").exists()


@pytest.mark.slow
def test_mlp_128_128_reproduces_on_real_mnist(real_mnist, tmp_path):
    entry = E["mlp-128-128-adam"]
    rows = _run([entry], 1, tmp_path)
    assert rows.iloc[0]["eval_on"] == "val" and rows.iloc[0]["acc"] > 0.95
    assert json.loads(rows.iloc[0]["data_md5"]) == {
        k: v for k, v in data.MNIST_MD5.items() if k in data.TRAIN_FILES}
    assert not (tmp_path / "leaderboard" / "test_access.jsonl").exists()


@pytest.mark.gpu
def test_reproduce_on_cuda(tiny_mnist, tmp_path):
    cnn, mlp = _entries()
    cuda = torch.device("cuda")
    rows = reproduce.reproduce([cnn, mlp], 1, cuda, tmp_path, True, Console(quiet=True))
    assert rows["acc"].between(0.5, 1).all() and not rows["device"].str.startswith("cpu").any()
    model = reproduce.load_checkpoint(cnn, tmp_path / "leaderboard" / "checkpoints" / cnn.id /
                                      "seed0.pt", cuda)
    assert next(model.parameters()).is_cuda
