"""Each figure on small hand-made store frames; the page from a study store."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from bench import report, stats


def _trials() -> pd.DataFrame:
    rows = [  # family, number, state, value/last val acc, seconds, params, stop, optimizer, lr
        ("mlp", 0, "COMPLETE", 0.95, 2.0, 1000, "", "adam", 1e-3),
        ("mlp", 1, "PRUNED", 0.80, 1.0, 2000, "pruned", "sgd", 1e-2),
        ("mlp", 2, "COMPLETE", 0.97, 4.0, 3000, "", "adam", 3e-3),
        ("cnn", 0, "COMPLETE", 0.96, 8.0, 500, "", "sgd", 1e-2),
        ("cnn", 1, "PRUNED", 0.90, 3.0, 800, "budget", "adam", 1e-3),
        ("cnn", 2, "COMPLETE", 0.99, 16.0, 900, "", "adam", 2e-3),
    ]
    df = pd.DataFrame(rows, columns=["family", "number", "state", "final_val_acc",
                                     "wall_seconds", "params_count", "stop_reason",
                                     "param_optimizer", "param_lr"])
    df["value"] = df["final_val_acc"].where(df["state"] == "COMPLETE")
    df["best_val_acc"] = df["final_val_acc"]
    df["final_val_loss"] = 0.1
    df["epochs_run"] = [3, 1, 3, 3, 2, 3]
    df["param_batch_size"] = 64
    df["param_mlp.width1"] = [32, 16, np.nan, np.nan, np.nan, np.nan]  # conditional
    df["datetime_start"] = pd.Timestamp("2026-01-01") + pd.to_timedelta(df.index * 10, "s")
    return df


def _epochs(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for t in trials.itertuples():
        for e in range(1, t.epochs_run + 1):
            rows.append({"family": t.family, "number": t.number, "epoch": e,
                         "val_acc": t.final_val_acc - 0.01 * (t.epochs_run - e)})
    return pd.DataFrame(rows)


def test_history_has_points_and_monotone_best_so_far_per_family():
    fig = report.history_figure(_trials())
    assert len(fig.data) == 2 * 3 * 2  # families x (completed, stopped, best) x 2 axes
    best = [t for t in fig.data if t.name == "cnn best so far"]
    assert [list(t.y) for t in best] == [pytest.approx([4.0, 4.0, 1.0])] * 2  # error, %
    assert all(ax.type == "log" for ax in (fig.layout.yaxis, fig.layout.yaxis2))
    assert list(best[1].x) == [8.0, 11.0, 27.0]  # cumulative family seconds
    stopped = next(t for t in fig.data if t.name == "mlp stopped early (last val acc)")
    assert list(stopped.x) == [1] and list(stopped.y) == pytest.approx([20.0])
    assert fig.layout.xaxis.title.text == "trial number"
    assert fig.layout.xaxis2.title.text == "seconds"


def test_curves_mark_where_stopped_trials_were_cut():
    trials = _trials()
    fig = report.curves_figure(trials, _epochs(trials), top=1)
    cut = [t for t in fig.data if t.line.color == report.CUT]
    assert len(cut) == 2  # the pruned mlp trial and the budget-cut cnn trial
    cnn_cut = next(t for t in cut if t.hovertext == "cnn #1")
    assert list(cnn_cut.marker.symbol) == ["circle", "x"]
    top = [t.name for t in fig.data if t.line.color != report.CUT]
    assert top == ["mlp #2 (rank 1)", "cnn #2 (rank 1)"]


def test_pareto_front_keeps_only_undominated_points():
    cost = pd.Series([1.0, 2.0, 3.0, 4.0, 2.0])
    acc = pd.Series([0.90, 0.95, 0.93, 0.97, 0.94])
    assert report.pareto_front(cost, acc).tolist() == [True, True, False, True, False]


def test_cost_figure_draws_the_front_on_both_costs():
    fig = report.cost_figure(_trials())
    fronts = [t for t in fig.data if t.name == "Pareto front"]
    assert len(fronts) == 2
    # by seconds: mlp#0 (2 s, .95), mlp#2 (4 s, .97), cnn#2 (16 s, .99); cnn#0 (8 s, .96) loses
    assert list(fronts[0].x) == [2.0, 4.0, 16.0]
    # by parameters: cnn#0 (500, .96), cnn#2 (900, .99)
    assert list(fronts[1].x) == [500, 900] and list(fronts[1].y) == pytest.approx([4.0, 1.0])
    assert fig.layout.xaxis.type == "log"


def test_importance_and_parallel_coordinates():
    imp = pd.DataFrame({"family": ["mlp", "mlp", "cnn"], "param": ["lr", "optimizer", "lr"],
                        "importance": [0.7, 0.3, 1.0]})
    fig = report.importance_figure(imp)
    assert [t.name for t in fig.data] == ["mlp", "cnn"]
    assert list(fig.data[0].y) == ["optimizer", "lr"]  # ascending, largest on top
    par = report.parallel_figure(_trials(), "mlp").data[0]
    labels = [d.label for d in par.dimensions]
    assert labels == ["log10 lr", "val acc"]  # optimizer does not vary; width1 is conditional
    par = report.parallel_figure(_trials(), "cnn").data[0]
    dims = {d.label: d for d in par.dimensions}
    assert list(dims["optimizer"].ticktext) == ["adam", "sgd"]
    assert list(dims["val acc"].values) == [0.96, 0.99]


def _finalists() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, preds = [], []
    labels = np.arange(100) % 10
    for family, wrong in (("cnn", [1, 2]), ("mlp", [1, 2, 3, 4, 5, 6])):
        for seed in (10, 11, 12):
            pred = labels.copy()
            pred[wrong] = (labels[wrong] + 1) % 10
            preds.append(pd.DataFrame({"family": family, "rank": 1, "seed": seed,
                                       "index": np.arange(100), "label": labels, "pred": pred}))
            rows.append({"family": family, "rank": 1, "number": 3, "arch": family, "seed": seed,
                         "params_count": 10, "trial_val_acc": 0.9, "val_acc": 0.9,
                         "test_acc": (pred == labels).mean(), "device": "cpu"})
    return pd.DataFrame(rows), pd.concat(preds)


def test_finalist_summary_confusion_and_winner():
    finalists, preds = _finalists()
    summary = report.finalist_summary(finalists).set_index("family")
    assert summary.loc["cnn", "test acc mean"] == pytest.approx(0.98)
    assert summary.loc["mlp", "test acc mean"] == pytest.approx(0.94)
    assert summary.loc["cnn", "seeds"] == 3 and summary.loc["cnn", "test acc std"] == 0
    assert stats.reference_family(stats.replicate_scores(finalists.assign(
        val_acc=finalists["family"].map({"cnn": 0.9, "mlp": 0.95})))) == "mlp"  # never test
    assert stats.correctness(preds, "cnn").shape == (3, 100)
    z = np.array(report.confusion_figure(preds, "cnn").data[0].z)
    assert z.sum() == 300 and np.trace(z) == 294 and z[1, 2] == 3


def test_misclassified_grid_titles_true_and_predicted():
    mis = pd.DataFrame({"family": "cnn", "index": [7, 9], "label": [3, 5], "pred": [8, 6],
                        "pixels": [[0] * 784, [255] * 784]})
    fig = report.misclassified_figure(mis, "cnn")
    assert len(fig.data) == 2 and fig.data[1].z[0][0] == 255
    assert [a.text for a in fig.layout.annotations] == ["3→8", "5→6"]


def test_page_escapes_strings_and_inlines_plotly(tmp_path):
    trials = _trials()
    trials["recipe"] = None
    trials.to_parquet(tmp_path / "trials.parquet")
    _epochs(trials).to_parquet(tmp_path / "epochs.parquet")
    run = {"question": "Is <script>alert(1)</script> escaped?", "config": {"trials": 6},
           "git_sha": "abc", "device": "cpu"}
    (tmp_path / "runs.jsonl").write_text(json.dumps(run) + "\n")
    page = report.build(tmp_path, "x&y").read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "x&amp;y" in page
    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js inlined: opens offline
    # history, curves, cost; no parallel coordinates with only 2 completed trials per family
    # the answer at a glance, history, curves, cost; importances, parallel coordinates need more
    assert page.count("Plotly.newPlot") == 4
    assert "No test numbers yet" in page


def test_scientific_axis_is_numeric_when_every_family_fixes_one_number():
    numeric = {"64": {"batch_size": [64]}, "256": {"batch_size": [256]}, "1024": {
        "batch_size": [1024]}}
    assert report.scientific_axis(numeric, ["64", "256", "1024"]) == (
        "batch size", {"64": 64, "256": 256, "1024": 1024})
    named = {"sgd": {"optimizers": ["sgd"]}, "adam": {"optimizers": ["adam"]}}
    assert report.scientific_axis(named, ["sgd", "adam"]) == (
        "family", {"sgd": "sgd", "adam": "adam"})
    mixed = {"a": {"batch_size": [64]}, "b": {"batch_size": [128], "lr": [1e-3, 1e-2]}}
    assert report.scientific_axis(mixed, ["a", "b"])[0] == "family"
    assert report.scientific_axis(None, ["a"]) == ("family", {"a": "a"})


def _bs_trials():
    rows = []
    for bs, best_lr in ((64, 0.01), (256, 0.04), (1024, 0.16)):  # exactly linear scaling
        for i, (lr, acc) in enumerate(((best_lr, 0.98), (best_lr / 10, 0.95))):
            rows.append({"family": str(bs), "number": i, "state": "COMPLETE", "value": acc,
                         "param_lr": lr, "wall_seconds": 1.0, "params_count": 10})
    rows.append({"family": "64", "number": 2, "state": "PRUNED", "value": np.nan,
                 "param_lr": 1.0, "wall_seconds": 1.0, "params_count": 10})
    return pd.DataFrame(rows)


def test_scientific_figure_draws_validation_and_test_error_on_a_numeric_axis():
    trials = _bs_trials()
    finalists = pd.DataFrame({"family": ["64", "64", "1024", "1024"], "rank": 1,
                              "test_acc": [0.97, 0.99, 0.96, 0.96]})
    x = {"64": 64, "256": 256, "1024": 1024}
    fig = report.scientific_figure(trials, finalists, "batch size", x)
    val, test = fig.data
    assert list(val.x) == [64, 256, 1024] and list(val.y) == pytest.approx([2.0, 2.0, 2.0])
    assert list(test.x) == [64, 1024] and list(test.y) == pytest.approx([2.0, 4.0])
    assert list(test.error_y.array) == pytest.approx([np.std([97, 99], ddof=1), 0.0])
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    only_val = report.scientific_figure(trials, None, "family", {f: f for f in x})
    assert len(only_val.data) == 1 and list(only_val.data[0].x) == ["64", "256", "1024"]


def test_lr_scaling_slope_is_fitted_on_each_batch_size_best_trial():
    fig, slope = report.lr_scaling_figure(_bs_trials(), {"64": 64, "256": 256, "1024": 1024})
    assert slope == pytest.approx(1.0)
    assert list(fig.data[1].y) == pytest.approx([0.01, 0.04, 0.16])


def test_importances_are_hidden_below_the_stated_minimum():
    trials = pd.DataFrame({"family": ["a"] * 12 + ["b"] * 3, "state": "COMPLETE"})
    imp = pd.DataFrame({"family": ["a", "a", "b"], "param": ["lr", "epochs", "lr"],
                        "importance": [0.7, 0.3, 1.0]})
    note, fig = report.importance_parts(imp, trials)
    assert "a 12, b 3" in note and f"fewer than {report.MIN_IMPORTANCE_TRIALS}" in note
    assert {t.name for t in fig.data} == {"a"}
    assert len(report.importance_parts(imp, trials[trials["family"] == "b"])) == 1
