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
    best = [t for t in fig.data if t.name == "cnn best so far (one line a replicate)"]
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
    top = [t.hovertext for t in fig.data if t.line.color != report.CUT]
    assert top == ["mlp #2, rank 1", "cnn #2, rank 1"]


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
    assert labels == ["lr (log)", "val error"]  # optimizer fixed; width1 conditional
    par = report.parallel_figure(_trials(), "cnn").data[0]
    dims = {d.label: d for d in par.dimensions}
    assert list(dims["optimizer"].ticktext) == ["adam", "sgd"]
    assert list(dims["val error"].values) == pytest.approx(np.log10([4.0, 1.0]))


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
    # the answer at a glance, tuning curves, history, learning curves, cost; importances and
    # parallel coordinates need more trials; no expected-best curves for a TPE study
    assert page.count("Plotly.newPlot") == 5
    assert "Tuning curves" in page and "Expected best after n" not in page
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
                              "val_acc": 0.9, "test_acc": [0.97, 0.99, 0.96, 0.96]})
    x = {"64": 64, "256": 256, "1024": 1024}
    fig = report.scientific_figure(trials, finalists, "batch size", x)
    val, test = fig.data
    assert list(val.x) == [64, 256, 1024] and list(val.y) == pytest.approx([2.0, 2.0, 2.0])
    assert list(test.x) == [64, 1024] and list(test.y) == pytest.approx([2.0, 4.0])
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


# --- readable figures (issue 22): major ticks, every point inside, integers, categories ---------

def _log_axes(fig):
    return [ax for name, ax in fig.layout.to_plotly_json().items()
            if name.startswith(("xaxis", "yaxis")) and ax.get("type") == "log"]


def _major(v: float) -> bool:
    mantissa = v / 10 ** np.floor(np.log10(v) + 1e-9)
    return any(np.isclose(mantissa, m) for m in (1, 2, 5))


@pytest.mark.parametrize("values", [[0.8, 1.3], [7.0, 60.0], [0.01, 100.0], [3.0, 3.0],
                                    [5.0, 10.0]])
def test_log_axis_labels_major_ticks_around_every_value(values):
    axis = report.log_axis(values)
    assert all(_major(t) for t in axis["tickvals"]) and len(axis["tickvals"]) >= 2
    assert axis["ticktext"] == [f"{t:g}%" for t in axis["tickvals"]]
    lo, hi = (10 ** r for r in axis["range"])
    # a labelled tick at or below the smallest value and at or above the largest, with margin
    assert axis["tickvals"][0] <= min(values) and axis["tickvals"][-1] >= max(values)
    assert lo < axis["tickvals"][0] and hi > axis["tickvals"][-1]


def test_every_log_axis_holds_its_points_and_labels_only_major_ticks():
    trials = _trials()
    figs = [report.history_figure(trials), report.curves_figure(trials, _epochs(trials)),
            report.cost_figure(trials)]
    for fig in figs:
        axes = _log_axes(fig)
        assert axes
        for ax in axes:
            assert all(_major(t) for t in ax["tickvals"]), ax
        ys = [y for t in fig.data for y in t.y if y is not None]
        lo, hi = (10 ** r for r in fig.layout.yaxis.range)
        assert lo < min(ys) and max(ys) < hi
        assert all(text.endswith("%") for text in fig.layout.yaxis.ticktext)


def test_integer_quantities_get_integer_ticks():
    trials = _trials()
    history = report.history_figure(trials)
    assert history.layout.xaxis.dtick == 1 and history.layout.xaxis.tickformat == "d"
    curves = report.curves_figure(trials, _epochs(trials))
    assert all(ax.dtick == 1 for ax in (curves.layout.xaxis, curves.layout.xaxis2))
    assert report.integer_axis(range(0, 200))["dtick"] == 50


def test_confusion_matrix_labels_all_ten_digits():
    _, preds = _finalists()
    fig = report.confusion_figure(preds, "cnn")
    assert list(fig.layout.xaxis.tickvals) == list(range(10))
    assert list(fig.layout.yaxis.tickvals) == list(range(10))


def test_parallel_coordinates_show_choices_integers_and_error_on_a_log_scale():
    trials = _trials()
    trials["param_batch_size"] = [128, 256, 256, 128, 128, 256]
    trials["param_epochs"] = [1, 2, 3, 1, 2, 3]
    trials["param_mlp.dropout"] = [0.1, 0.2, 0.3, 0.1, 0.2, 0.3]
    dims = {d.label: d for d in report.parallel_figure(trials, "mlp").data[0].dimensions}
    assert list(dims["batch size"].ticktext) == ["128", "256"]  # a choice: two categories
    assert list(dims["batch size"].tickvals) == [0, 1]
    assert list(dims["epochs"].tickvals) == [1, 3]  # mlp's completed trials: #0 and #2
    err = dims["val error"]
    assert all(t.endswith("%") for t in err.ticktext)
    line = report.parallel_figure(_trials(), "cnn").data[0].line
    # colours span the best trial to the median one, so the good trials differ
    assert line.cmin == pytest.approx(np.log10(1.0)) and line.cmax == pytest.approx(
        np.median(np.log10([4.0, 1.0])))


def test_the_answer_at_a_glance_draws_each_bar_from_the_worst_to_the_best_replicate():
    rows = [{"family": f, "replicate": r, "number": 0, "state": "COMPLETE", "value": acc,
             "wall_seconds": 1.0, "params_count": 1}
            for f, accs in (("a", (0.90, 0.80, 0.60)), ("b", (0.95, 0.95, 0.95)))
            for r, acc in enumerate(accs)]
    fig = report.scientific_figure(pd.DataFrame(rows), None, "family", {"a": "a", "b": "b"})
    val = fig.data[0]
    assert list(val.y) == pytest.approx([20.0, 5.0])  # median error over replicates
    assert list(val.error_y.array) == pytest.approx([20.0, 0.0])  # up to the worst: 40%
    assert list(val.error_y.arrayminus) == pytest.approx([10.0, 0.0])  # down to the best: 10%
    lo, hi = (10 ** r for r in fig.layout.yaxis.range)
    assert lo < 5.0 and hi > 40.0


def test_access_log_reads_as_a_table_of_values():
    config = {"arch": "cnn", "arch_kwargs": {"blocks": 1, "dropout": 0.0105107},
              "lr": 0.00099525076, "number": 3, "optimizer": "adamw",
              "optimizer_kwargs": {"beta1": 0.857144}, "batch_size": 256}
    access = [{"when": "2026-12-07T22:11:55+00:00", "code": "bench.finalists",
               "why": "load the test split to score finalists ['cnn#0 (replicate 0)', "
                      "'mlp#1 (replicate 0)']", "seed": None, "config": {"k": 1},
               "pid": 12345},
              *({"when": "2026-12-07T22:11:59+00:00", "code": "bench.finalists",
                 "why": "score finalist cnn replicate 0 rank 1", "seed": seed,
                 "config": config, "pid": 12345} for seed in (2128370651, 165374797))]
    df = report.access_table(access)
    assert list(df["seed"]) == ["–", "2128370651", "165374797"]  # identifiers: no 2,128,...
    assert list(df["pid"]) == ["12345"] * 3
    assert df["why"][0] == ("load the test split to score finalists cnn#0 (replicate 0), "
                            "mlp#1 (replicate 0)")
    assert df["configuration"][1] == ("arch cnn (blocks 1, dropout 0.0105), lr 0.000995, "
                                      "trial 3, optimizer adamw (beta1 0.857), batch size 256")
    assert list(df["configuration"])[::2] == ["k 1", "as above"]
    assert df["when"][1] == "2026-12-07 22:11:59"
    html = report._table(df)
    assert "2,128,370,651" not in html and "12,345" not in html


def test_provenance_gives_small_training_times_in_seconds_not_zero():
    trials = _trials().assign(replicate=0, wall_seconds=0.4)
    table = report.provenance_table({"config": {"trials": 6, "timeout": None}}, trials)
    row = dict(zip(table[""], table["value"], strict=True))
    assert row["training seconds per family and replicate"] == "mlp r0 1.2 s, cnn r0 1.2 s"
    assert row["budget"] == "1 replicate(s), each 6 trials, split equally between the families"
    assert "none" not in row["budget"]


def test_a_smoke_report_says_so_and_the_answer_lines_say_which_selection(tmp_path):
    trials = _trials()
    trials["recipe"] = None
    trials.to_parquet(tmp_path / "trials.parquet")
    _epochs(trials).to_parquet(tmp_path / "epochs.parquet")
    run = {"question": "q", "config": {"trials": 6, "smoke": True}}
    (tmp_path / "runs.jsonl").write_text(json.dumps(run) + "\n")
    page = report.build(tmp_path, "s").read_text()
    assert "<title>mnist-bench · s (smoke run)</title>" in page
    assert f"<p class='smoke'>{report.SMOKE_LINE}</p>" in page
    assert "(the best trial on validation):" in page


def test_the_report_says_when_the_answer_line_and_the_verdict_name_different_families():
    trials = _trials()  # cnn has the best trial on validation (0.99)
    finalists, _ = _finalists()  # retrained, mlp is best on validation: 0.95 against 0.9
    finalists["val_acc"] = finalists["family"].map({"cnn": 0.9, "mlp": 0.95})
    note = report.selection_note(trials, finalists)
    assert note == ("The two lines name different families: cnn has the best trial on "
                    "validation, but retrained over seeds mlp's finalist is best on validation, "
                    "so the test verdict compares every family with mlp.")
    finalists["val_acc"] = finalists["family"].map({"cnn": 0.95, "mlp": 0.9})
    assert report.selection_note(trials, finalists) == ""
    assert report.selection_note(trials, None) == ""


def _replicated(sampler: str) -> tuple[pd.DataFrame, dict]:
    """Two replicates of `_trials`, the second a little worse, from a study run with `sampler`."""
    first, second = _trials(), _trials()
    second["value"] = second["value"] - 0.01
    trials = pd.concat([first.assign(replicate=0), second.assign(replicate=1)],
                       ignore_index=True)
    return trials, {"config": {"timeout": None, "sampler": sampler},
                    "families": {"mlp": {"archs": ["mlp"]}, "cnn": {"archs": ["cnn"]}}}


def test_tuning_curves_draw_the_median_and_band_over_replicates():
    trials, run = _replicated("tpe")
    fig = report.tuning_figure(trials, "trials")
    names = [d.name for d in fig.data]
    assert names == ["mlp: lowest–highest replicate", "mlp: median over replicates",
                     "cnn: lowest–highest replicate", "cnn: median over replicates"]
    cnn = fig.data[3]
    # trials 1..3: cnn's best so far 0.96, 0.96, 0.99 (replicate 0) and 0.95, 0.95, 0.98
    # (replicate 1): medians 0.955, 0.955, 0.985 -> errors 4.5%, 4.5%, 1.5%
    assert list(cnn.x) == [1, 2, 3] and np.allclose(cnn.y, [4.5, 4.5, 1.5])
    assert fig.layout.yaxis.type == "log" and all("%" in t for t in fig.layout.yaxis.ticktext)
    parts, line = report.tuning_parts(trials, run)
    assert len(parts) == 2 and line.startswith("tuning curves (median best-so-far validation "
                                                "error over 2 replicates): cnn")


def test_expected_best_is_drawn_for_iid_samplers_only():
    for sampler, drawn in (("tpe", False), ("random", True), ("qmc", True)):
        trials, run = _replicated(sampler)
        parts, _ = report.tuning_parts(trials, run)
        titles = [p.layout.title.text for p in parts if not isinstance(p, str)]
        assert any(t.startswith("Expected best after n") for t in titles) == drawn, sampler
        assert any("Probability that each family" in p for p in parts
                   if isinstance(p, str)) == drawn
    # a study whose families name their samplers: only the i.i.d. ones get the curve
    trials, run = _replicated("tpe")
    run["families"] = {"mlp": {"sampler": "random"}, "cnn": {"sampler": "tpe"}}
    parts, _ = report.tuning_parts(trials, run)
    figure = next(p for p in parts if not isinstance(p, str)
                  and p.layout.title.text.startswith("Expected best"))
    assert {d.legendgroup for d in figure.data} == {"mlp"}
    # and a family left on the run's random SAMPLER, beside one that names TPE, is drawn
    trials, run = _replicated("random")
    run["families"] = {"mlp": {"sampler": "tpe"}, "cnn": {"archs": ["cnn"]}}
    parts, _ = report.tuning_parts(trials, run)
    figure = next(p for p in parts if not isinstance(p, str)
                  and p.layout.title.text.startswith("Expected best"))
    assert {d.legendgroup for d in figure.data} == {"cnn"}
