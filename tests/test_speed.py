"""`make bench`: the tutorial pipeline's data, one row per pipeline, the table and the store."""

import gzip
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import cli, data, host, models, speed, store, throughput, train


@pytest.fixture
def keep_threads(monkeypatch):
    """Rows tune this process (threads, allocator); give the other tests torch's threads back."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tutorial_root_holds_the_training_files_byte_for_byte(tiny_mnist, tmp_path):
    raw = data.load_train()
    root = speed.tutorial_root(raw, tmp_path / "tv")
    files = sorted(p.name for p in (root / "MNIST" / "raw").iterdir())
    assert files == sorted(data.TRAIN_FILES)  # never the test files
    for name in data.TRAIN_FILES:
        original = gzip.decompress((tiny_mnist / f"{name}.gz").read_bytes())
        assert (root / "MNIST" / "raw" / name).read_bytes() == original
    (root / "MNIST" / "raw" / data.TRAIN_FILES[1]).write_bytes(b"stale")
    speed.tutorial_root(raw, tmp_path / "tv")  # a stale copy is rewritten
    assert hashlib.md5((root / "MNIST" / "raw" / data.TRAIN_FILES[1]).read_bytes()).hexdigest() \
        == raw.md5[data.TRAIN_FILES[1]]


@pytest.mark.parametrize("model", list(speed.CASES))
def test_every_pipeline_trains_the_same_split_to_comparable_accuracy(tiny_mnist, tmp_path,
                                                                     keep_threads, model):
    raw = data.load_train()
    root = speed.tutorial_root(raw, tmp_path / "tv")
    rows = {p: speed.run_row({"model": model, "pipeline": p, "device": "cpu", "epochs": 2,
                              "seed": 0, "root": str(root), "md5": raw.md5})
            for p in speed.ROWS}
    assert {r["split_hash"] for r in rows.values()} == {rows["fast"]["split_hash"]}
    for r in rows.values():
        assert r["final_val_acc"] > 0.9, r  # the synthetic classes are easy
        assert len(json.loads(r["epoch_seconds"])) == 2
        assert r["cuda_graph"] is False and r["device"].startswith("cpu")
    # comparable: the same model, seed, split and optimizer end within one validation image of
    # each other (the tutorial draws its batches in another order) ...
    accs = [r["final_val_acc"] for r in rows.values()]
    assert max(accs) - min(accs) <= 1 / speed.val_size(1200), accs
    # ... and where the harness's fast path changes no arithmetic (float32; channels-last is a
    # memory layout) it computes exactly what the plain one does
    plain, fast = rows["plain"], rows["fast"]
    if fast["precision"] == "fp32":
        assert fast["final_val_acc"] == plain["final_val_acc"]
        assert fast["final_val_loss"] == pytest.approx(plain["final_val_loss"],
                                                       rel=1e-5 if fast["channels_last"] else 0)
    # like with like: the default rows all run at the harness's threads (issue 21)
    assert {r["threads"] for r in rows.values()} == {host.default_threads()}
    assert rows["fast"]["channels_last"] == (model == "cnn-conv32")
    assert not rows["plain"]["channels_last"] and not rows["plain"]["malloc_keep"]
    assert rows["tutorial"]["precision"] == rows["plain"]["precision"] == "fp32"
    kind = models.get_model(model).kind
    assert rows["fast"]["precision"] == train.resolve_precision("auto", torch.device("cpu"),
                                                                kind)


def test_frame_and_table_put_each_row_against_its_models_tutorial_at_the_same_threads():
    rows = [{"model": m, "pipeline": p, "seconds_per_epoch": s, "final_val_acc": 0.97,
             "cuda_graph": False, "device": "cpu: test", "epochs": 3, "batch_size": 64,
             "precision": "bf16" if p == "fast" else "fp32", "threads": threads}
            for m, p, s, threads in [("a", "tutorial", 10.0, 1), ("a", "fast", 2.0, 1),
                                     ("a", "fast-torch-threads", 1.5, 2),
                                     ("b", "tutorial", 3.0, 1), ("b", "plain", 6.0, 1)]]
    df = speed.frame(rows)
    assert df["speedup"].tolist()[:2] == [1.0, 5.0] and df["speedup"].tolist()[3:] == [1.0, 0.5]
    assert pd.isna(df["speedup"].iloc[2])  # 2 threads against a 1-thread tutorial: no ratio
    table = speed.table(df)
    assert [c.header for c in table.columns] == ["model", "pipeline", "threads", "precision",
                                                 "s/epoch", "val acc", "vs tutorial"]
    assert list(table.columns[6].cells) == ["1.0x", "5.0x", "—", "1.0x", "0.5x"]
    assert list(table.columns[1].cells) == ["tutorial", "fast", "fast-torch-threads",
                                            "tutorial", "plain"]
    assert list(table.columns[2].cells) == ["1", "1", "2", "1", "1"]
    assert list(table.columns[3].cells) == ["fp32", "bf16", "fp32", "fp32", "fp32"]
    assert "same threads" in table.caption


def test_the_default_rows_share_one_thread_setting():
    # Issue 21: `plain` ran torch's default threads (2 on a 2-core machine), `fast` the harness's
    # 1, so the MLP's fast row looked slower than plain. Only the ablation differs now.
    differ = {name for name, p in speed.PIPELINES.items() if not p.threads}
    assert differ == {"fast-torch-threads"}
    assert not differ & set(speed.ROWS)


def test_auto_precision_keeps_fp32_for_the_kind_bf16_made_slower(monkeypatch):
    # Issue 21, on a CPU with bf16 (AMX): the MLP 1.51 s/epoch in bf16 vs 1.42 in fp32, the CNN
    # 4.59 vs 5.63. So `auto` is bf16 for convolutions and fp32 for MLPs.
    cpu = torch.device("cpu")
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    assert train.resolve_precision("auto", cpu, models.get_model("mlp-400-200-100").kind) == (
        "fp32")
    assert train.resolve_precision("auto", cpu, models.get_model("cnn-conv32").kind) == "bf16"
    assert train.resolve_precision("auto", cpu) == "bf16"  # trials of several kinds: as before
    assert train.resolve_precision("bf16", cpu, "mlp") == "bf16"  # asked for: honoured
    assert train.resolve_precision("auto", torch.device("cuda"), "cnn") == "fp32"
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    assert train.resolve_precision("auto", cpu, "cnn") == "fp32"


@pytest.mark.slow  # seconds a run: `make test-full` (keeps `make test` under 5 minutes)
def test_bench_command_writes_one_row_per_model_and_pipeline(tiny_mnist, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.chdir(tmp_path)  # .data/tutorial goes here
    assert cli.main(["bench", "QUICK=1", "MODELS=mlp-400-200-100", "DEVICE=cpu",
                     f"RESULTS_DIR={tmp_path / 'r'}"]) == 0
    (path,) = (tmp_path / "r" / "bench").glob("*-cpu.parquet")
    df = pd.read_parquet(path)
    assert df[["model", "pipeline"]].values.tolist() == [
        ["mlp-400-200-100", p] for p in speed.ROWS]
    assert {"git_sha", "versions", "device", "threads", "data_md5", "load_before"} <= set(df)
    out = capsys.readouterr().out
    assert "vs tutorial" in out and "results: " in out


@pytest.mark.parametrize(("args", "message"), [
    (["EPOCH=3"], "error: unknown setting 'EPOCH'; valid: DEVICE, EPOCHS, QUICK, MODELS, ROWS, "
                  "SEED, RESULTS_DIR"),
    (["ROWS=tutorial,turbo"], "error: ROWS='tutorial,turbo' is not valid: expected a "
                              "comma-separated list of tutorial, plain, fast, fast-nchw, "
                              "fast-torch-threads, fast-glibc-malloc, fast-fp32"),
    (["EPOCHS=0"], "error: EPOCHS='0' is not valid: expected a positive integer"),
    (["QUICK=yes"], "error: QUICK='yes' is not valid: expected 0 or 1"),
    (["QUICK=1", "EPOCHS=2"], "error: QUICK=1 means EPOCHS=1; give one of them"),
    (["MODELS=mlp,cnn-conv32"], "error: MODELS='mlp,cnn-conv32' is not valid: expected a "
                                "comma-separated list of mlp-400-200-100, cnn-conv32"),
    (["DEVICE=tpu"], "error: DEVICE='tpu' is not valid: expected auto or cpu or cuda"),
])
def test_bad_bench_settings_are_one_line_and_write_nothing(args, message, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", *args, f"RESULTS_DIR={tmp_path / 'r'}"]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bench_on_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "DEVICE=cuda"]) == 2
    err = capsys.readouterr().err
    assert "error: device 'cuda' requested but torch sees no CUDA device" in err
    assert not any(tmp_path.iterdir())


def test_bench_study_times_each_worker_count_on_the_same_trial_count(tiny_cli, tmp_path,
                                                                     monkeypatch, capsys):
    for key, value in tiny_cli.env.items():  # the tiny study, for the study commands it starts
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(cli, "STUDIES_DIR", tiny_cli.site / "studies")
    # the study commands' wall times, as the clock reads them: 30 s, then 60 s
    readings = iter([1000.0, 1030.0, 2000.0, 2060.0])
    monkeypatch.setattr(throughput, "time", type("Clock", (), {
        "perf_counter": staticmethod(lambda: next(readings))}))
    assert cli.main(["bench-study", "tiny", "TRIALS=4", "WORKERS=1,2", "DEVICE=cpu",
                     f"RESULTS_DIR={tmp_path / 'r'}"]) == 0
    out = capsys.readouterr().out
    assert "bench-study: tiny, 4 trials on cpu with WORKERS=1, 2, one study command each" in out
    (path,) = (tmp_path / "r" / "bench").glob("*-study-tiny.parquet")
    assert f"results: {path}" in out
    df = pd.read_parquet(path)
    assert df["workers"].tolist() == [1, 2] and df["wall_seconds"].tolist() == [30.0, 60.0]
    second = df["trials"].iloc[1]
    assert df["trials"].iloc[0] == 4 and second in (4, 5)  # WORKERS - 1 over, at most
    assert df["trials_per_minute"].tolist() == [8.0, float(second)]
    assert df["epochs_per_minute"].tolist() == [24.0, 3.0 * second]  # 3 epochs a tiny trial
    assert df["speedup"].tolist() == [1.0, second / 8]
    for best, folder in zip(df["best_val_acc"], df["folder"], strict=True):
        trials = pd.read_parquet(Path(folder) / "trials.parquet")
        done = trials[trials["state"] == "COMPLETE"]
        assert json.loads(best) == pytest.approx(done.groupby("family")["value"].max().to_dict())
    roles = [[r["role"] for r in store.read_jsonl(Path(f) / "runs.jsonl")] for f in df["folder"]]
    assert roles == [["study"], ["study", "worker"]]  # the second really ran two processes
    assert set(df["precision"]) == {train.resolve_precision("auto", torch.device("cpu"))}
