"""finalize: only the validation-chosen finalists are retrained and scored; every read logged."""

import io
import json

import pandas as pd
import pytest
import torch
from rich.console import Console
from test_study import STUDY, _run, test_file_opens  # noqa: F401 - the fixture

from bench import data, finalists, promote, report, stats, store, train

QUIET = Console(quiet=True)


def _spy(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((args, result))
        return result

    monkeypatch.setattr(module, name, spy)


def test_finalize_scores_only_finalists_logs_each_read_and_reuses_scores(
        tiny_mnist, tmp_path, monkeypatch):
    trials, _, out = _run(tmp_path)
    loads, builds, predictions = [], [], []
    _spy(monkeypatch, data, "load_test", loads)
    _spy(monkeypatch, train, "build", builds)
    _spy(monkeypatch, train, "predict", predictions)

    result = finalists.finalize(STUDY, out, train.resolve_device("cpu"), k=1, seeds=2,
                                refresh=False, console=QUIET)

    done = trials[trials["state"] == "COMPLETE"]
    expected = done.loc[done.groupby("family")["value"].idxmax(), ["family", "number"]]
    assert len(result) == 2 * 2 and set(result["rank"]) == {1}
    assert (set(map(tuple, result[["family", "number"]].drop_duplicates().to_numpy()))
            == set(map(tuple, expected.to_numpy())))
    # Only finalists were trained, each once per seed, and only they were scored on test.
    assert sorted(json.dumps(args[0].to_dict(), sort_keys=True) for args, _ in builds) == sorted(
        result["recipe"])
    assert len(loads) == 1
    test_labels = loads[0][1].labels.data_ptr()
    on_test = [args for args, _ in predictions if args[2].data_ptr() == test_labels]
    finalist_models = [model for _, (model, _, _) in builds]
    assert len(on_test) == len(result)
    assert all(any(args[0] is m for m in finalist_models) for args in on_test)
    assert result["test_acc"].between(0, 1).all() and result["seed"].nunique() == 4
    log = [json.loads(line) for line in (out / "test_access.jsonl").read_text().splitlines()]
    assert len(log) == 1 + len(result)
    assert all(e["code"] == finalists.CODE for e in log)
    scored = [(e["config"]["number"], e["seed"]) for e in log[1:]]
    assert sorted(scored) == sorted(zip(result["number"], result["seed"], strict=True))
    preds = pd.read_parquet(out / "test_predictions.parquet")
    assert len(preds) == len(result) * 200  # the tiny test split has 200 images
    per_run = preds.assign(ok=preds["label"] == preds["pred"]).groupby("seed")["ok"].mean()
    assert per_run.to_dict() == result.set_index("seed")["test_acc"].to_dict()

    again = finalists.finalize(STUDY, out, train.resolve_device("cpu"), k=1, seeds=2,
                               refresh=False, console=QUIET)
    assert len(loads) == 1 and len((out / "test_access.jsonl").read_text().splitlines()) == 5
    pd.testing.assert_frame_equal(again, result)

    finalists.finalize(STUDY, out, train.resolve_device("cpu"), k=1, seeds=2, refresh=True,
                       console=QUIET)
    assert len(loads) == 2 and len((out / "test_access.jsonl").read_text().splitlines()) == 10

    page = report.build(out, "t").read_text()
    assert "Finalists on the held-out test set" in page and "No test numbers yet" not in page
    assert "Family verdict" in page and "Holm-adjusted" in page and "test confusion" in page
    assert page.count("bench.finalists") == 10  # the access log, one row per read


def test_select_ranks_on_validation_only():
    trials = pd.DataFrame({
        "family": ["a", "a", "a", "b"], "number": [0, 1, 2, 0],
        "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"],
        "value": [0.90, 0.95, None, 0.80], "params_count": [1, 1, 1, 1],
        "recipe": ["{}"] * 4, "test_acc": [0.99, 0.10, 0.99, 0.5],  # must be ignored
    })
    chosen = finalists.select(trials, k=2)
    assert chosen[["family", "number", "rank"]].values.tolist() == [
        ["a", 1, 1], ["a", 0, 2], ["b", 0, 1]]


def test_finalists_retrain_in_the_precision_their_study_trained_in(tiny_mnist, tmp_path,
                                                                    monkeypatch):
    _, _, out = _run(tmp_path, trials=2, precision="bf16")
    precisions = []
    real_fit = train.fit

    def fit(*args, **kwargs):
        precisions.append(kwargs.get("precision"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit)
    result = finalists.finalize(STUDY, out, train.resolve_device("cpu"), k=1, seeds=1,
                                refresh=False, console=QUIET)
    assert len(result) == 2 and precisions == ["bf16", "bf16"]
    assert {json.loads(r)["precision"] for r in result["recipe"]} == {"bf16"}


def test_finalize_says_when_a_family_has_fewer_trials_than_k_and_prints_the_verdict(
        tiny_mnist, tmp_path):
    trials, _, out = _run(tmp_path, trials=4)  # 2 per family, some pruned
    done = trials[trials["state"] == "COMPLETE"].groupby("family").size()
    console = Console(record=True, width=200, file=io.StringIO())
    result = finalists.finalize(STUDY, out, train.resolve_device("cpu"), k=3, seeds=1,
                                refresh=False, console=console)
    text = console.export_text()
    for family, n in done.items():
        assert (result["family"] == family).sum() == n
        assert f"{family} replicate 0: only {n} completed trial" in text
        assert "instead of K=3" in text
    # one replicate: the family table is printed, and the answer says it is no family verdict
    assert "Family verdict" in text and "one replicate" in text


def test_finalize_refuses_a_split_that_is_not_the_studys_before_reading_test(
        tiny_mnist, tmp_path, test_file_opens):  # noqa: F811 - the fixture
    _, _, out = _run(tmp_path, trials=2)
    hashes = set(store.read(out, "trials")["split_hash"])
    runs = (out / "runs.jsonl").read_text().splitlines()
    record = json.loads(runs[-1])
    record["config"]["seed"] = 5  # the folder says another seed than its trials were split by
    (out / "runs.jsonl").write_text("\n".join([*runs[:-1], json.dumps(record)]) + "\n")
    with pytest.raises(ValueError, match=r"^the split of replicate 0 rebuilt from .*/runs.jsonl "
                                         r"\(hash [0-9a-f]{16}\) is not the study's "
                                         rf"\['{hashes.pop()}'\]; the study folder is "
                                         "inconsistent; the test split was not read$"):
        finalists.finalize(STUDY, out, train.resolve_device("cpu"), k=1, seeds=1,
                           refresh=False, console=QUIET)
    assert test_file_opens == []
    assert not (out / "test_access.jsonl").exists() and not (out / "finalists.parquet").exists()


def test_a_finalist_that_diverges_keeps_its_rows_unscored_and_is_never_promoted(
        tiny_mnist, tmp_path, monkeypatch):
    _, _, out = _run(tmp_path, trials=4)
    real_fit = train.fit

    def fit(model, *args, **kwargs):  # every CNN finalist's loss goes non-finite
        if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
            raise train.NonFiniteLoss("mean train loss nan")
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(train, "fit", fit)
    console = Console(record=True, width=200, file=io.StringIO())
    result = finalists.finalize(STUDY, out, train.resolve_device("cpu"), k=1, seeds=2,
                                refresh=False, console=console)
    cnn, mlp = result[result["family"] == "cnn"], result[result["family"] == "mlp"]
    assert len(cnn) == len(mlp) == 2
    assert cnn[["val_acc", "test_acc", "test_loss", "train_seconds"]].isna().all().all()
    assert (cnn["epochs"] == 0).all() and mlp["test_acc"].notna().all()
    preds = pd.read_parquet(out / "test_predictions.parquet")
    assert set(preds["family"]) == {"mlp"} and len(preds) == 2 * 200
    log = [json.loads(line) for line in (out / "test_access.jsonl").read_text().splitlines()]
    assert [e["seed"] for e in log[1:]] == list(mlp["seed"])  # only scored runs are logged
    text = console.export_text()
    assert text.count("diverged") >= 2
    verdicts = store.read(out, "verdicts")
    family = verdicts[verdicts["level"] == "family"].iloc[0]
    assert (family["reference"], family["family"], family["verdict"]) == (
        "mlp", "cnn", stats.Verdict.NOT_SEPARABLE.value)
    assert "cnn diverged in replicate 0" in family["note"]
    replicate = verdicts[verdicts["level"] == "replicate"].iloc[0]
    assert replicate["note"] == "cnn diverged on every seed in replicate 0"
    summary = report.finalist_summary(result).set_index("family")
    assert (summary.loc["cnn", "seeds"], summary.loc["cnn", "diverged"]) == (0, 2)
    assert pd.isna(summary.loc["cnn", "test acc mean"]) and summary.loc["mlp", "seeds"] == 2
    assert "Finalists on the held-out test set" in report.build(out, "t").read_text()
    entry = promote.promote("t", tmp_path / "results", tmp_path / "entries")
    assert entry.id == "t-mlp" and entry.claim == round(mlp["test_acc"].mean(), 6)
