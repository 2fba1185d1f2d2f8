"""The study report: store tables -> plotly figures -> one self-contained HTML file.

Every figure is a function of DataFrames from the store, so each can be tested without a browser,
and this module reads only the store (Parquet tables, runs.jsonl, test_access.jsonl): never
Optuna, never the data. Selection happens on validation; test numbers appear only for the
finalists that `make finalize` scored, next to the log of every time the test split was read.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from bench import stats, store
from bench.tables import comparison, family_summary

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
CUT = "#b0b0b0"  # trials stopped early (pruned or out of budget)


def colors(families: list[str]) -> dict[str, str]:
    return {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(families)}


def _families(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["family"]))


# --- validation-side figures ---------------------------------------------------------------------

def history_figure(trials: pd.DataFrame) -> go.Figure:
    """Each trial's validation accuracy and the best so far, against trial number and seconds.

    Seconds are the family's own cumulative trial time, the budget a family is given.
    """
    fig = make_subplots(1, 2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("by trial number", "by the family's training seconds"))
    col = colors(_families(trials))
    for family, df in trials.sort_values("number").groupby("family", sort=False):
        seconds = df["wall_seconds"].fillna(0).cumsum()
        done = df["state"] == "COMPLETE"
        best = df["value"].where(done).cummax().ffill()
        for c, x in enumerate((df["number"], seconds), start=1):
            fig.add_scatter(x=x[done], y=df["value"][done], mode="markers", row=1, col=c,
                            name=f"{family} completed", legendgroup=family, showlegend=c == 1,
                            marker={"color": col[family], "size": 6})
            fig.add_scatter(x=x[~done], y=df["final_val_acc"][~done], mode="markers", row=1,
                            col=c, name=f"{family} stopped early (last val acc)",
                            legendgroup=family, showlegend=c == 1,
                            marker={"color": col[family], "size": 6, "symbol": "x-thin-open"})
            fig.add_scatter(x=x, y=best, mode="lines", line={"color": col[family], "shape": "hv"},
                            row=1, col=c, name=f"{family} best so far", legendgroup=family,
                            showlegend=c == 1)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="seconds", row=1, col=2)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    return fig.update_layout(title="Optimisation history (validation)")


def curves_figure(trials: pd.DataFrame, epochs: pd.DataFrame, top: int = 5) -> go.Figure:
    """Learning curves: the `top` completed trials per family in colour, early-stopped in grey.

    A grey curve ends with an x where the pruner (or the time budget) cut the trial.
    """
    families = _families(trials)
    col = colors(families)
    fig = make_subplots(1, len(families), shared_yaxes=True, subplot_titles=families,
                        horizontal_spacing=0.04)
    legend = False  # one legend entry for all stopped trials
    for c, family in enumerate(families, start=1):
        t = trials[trials["family"] == family]
        best = t[t["state"] == "COMPLETE"].nlargest(top, "value")["number"].tolist()
        cut = t[t["stop_reason"].isin(["pruned", "budget"])]["number"].tolist()
        e = epochs[epochs["family"] == family]
        for number in cut:
            h = e[e["number"] == number]
            fig.add_scatter(x=h["epoch"], y=h["val_acc"], mode="lines+markers", row=1, col=c,
                            line={"color": CUT, "width": 1},
                            marker={"symbol": ["circle"] * (len(h) - 1) + ["x"],
                                    "size": [3] * (len(h) - 1) + [9], "color": CUT},
                            name="stopped early (x = cut)", legendgroup="cut",
                            showlegend=not legend, hovertext=f"{family} #{number}")
            legend = True
        for rank, number in enumerate(best, start=1):
            h = e[e["number"] == number]
            fig.add_scatter(x=h["epoch"], y=h["val_acc"], mode="lines+markers", row=1, col=c,
                            line={"color": col[family], "width": 3 if rank == 1 else 1.5},
                            name=f"{family} #{number} (rank {rank})")
        fig.update_xaxes(title_text="epoch", row=1, col=c)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    return fig.update_layout(title=f"Learning curves: top {top} per family and the pruned trials")


def importance_figure(importances: pd.DataFrame) -> go.Figure:
    """Optuna's parameter importances on the validation objective, one bar group per family."""
    fig = go.Figure()
    col = colors(_families(importances)) if len(importances) else {}
    for family, df in importances.groupby("family", sort=False):
        df = df.sort_values("importance")
        fig.add_bar(x=df["importance"], y=df["param"], orientation="h", name=family,
                    marker_color=col[family])
    return fig.update_layout(title="Hyperparameter importance (validation, per family)",
                             xaxis_title="importance (sums to 1 per family)", barmode="group",
                             height=max(350, 18 * len(importances) + 120))


def parallel_figure(trials: pd.DataFrame, family: str) -> go.Figure:
    """Parallel coordinates of a family's completed trials, coloured by validation accuracy.

    Conditional parameters (set only by some trials) are left out: an axis needs every trial.
    """
    df = trials[(trials["family"] == family) & (trials["state"] == "COMPLETE")]
    dims = []
    for column in sorted(c for c in df.columns if c.startswith("param_")):
        values = df[column]
        if values.isna().any() or values.nunique() < 2:
            continue
        label = column.removeprefix("param_")
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            log = label == "lr" or label == "weight_decay"
            vals = np.log10(values.astype(float)) if log else values.astype(float)
            dims.append({"label": f"log10 {label}" if log else label, "values": vals})
        else:
            cats = sorted(values.astype(str).unique())
            codes = values.astype(str).map({c: i for i, c in enumerate(cats)})
            dims.append({"label": label, "values": codes, "tickvals": list(range(len(cats))),
                         "ticktext": cats})
    dims.append({"label": "val acc", "values": df["value"]})
    line = {"color": df["value"], "colorscale": "Viridis", "showscale": True}
    return go.Figure(go.Parcoords(line=line, dimensions=dims)).update_layout(
        title=f"{family}: completed trials across the search space (validation accuracy)")


def pareto_front(cost: pd.Series, acc: pd.Series) -> pd.Series:
    """True for points no other point beats on both: lower cost and higher accuracy."""
    order = np.lexsort((-acc.to_numpy(), cost.to_numpy()))  # by cost, best accuracy first
    front = np.zeros(len(cost), bool)
    best = -np.inf
    for i in order:
        if acc.iloc[i] > best:
            front[i], best = True, acc.iloc[i]
    return pd.Series(front, index=cost.index)


def cost_figure(trials: pd.DataFrame) -> go.Figure:
    """Validation accuracy of completed trials against train seconds and parameters.

    The Pareto front (nothing both cheaper and more accurate) is drawn over all families.
    """
    done = trials[trials["state"] == "COMPLETE"]
    col = colors(_families(trials))
    fig = make_subplots(1, 2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("train seconds", "parameters"))
    for c, cost in enumerate(("wall_seconds", "params_count"), start=1):
        for family, df in done.groupby("family", sort=False):
            fig.add_scatter(x=df[cost], y=df["value"], mode="markers", row=1, col=c,
                            name=family, legendgroup=family, showlegend=c == 1,
                            marker={"color": col[family], "size": 7, "opacity": 0.7},
                            hovertext=[f"{family} #{n}" for n in df["number"]])
        front = done[pareto_front(done[cost], done["value"])].sort_values(cost)
        fig.add_scatter(x=front[cost], y=front["value"], mode="lines+markers", row=1, col=c,
                        name="Pareto front", legendgroup="pareto", showlegend=c == 1,
                        line={"color": "black", "shape": "hv", "dash": "dot"},
                        marker={"symbol": "diamond-open", "size": 12, "color": "black"})
        fig.update_xaxes(type="log", title_text=cost.replace("_", " "), row=1, col=c)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    return fig.update_layout(title="Accuracy against cost (validation)")


# --- finalists: the only test numbers ------------------------------------------------------------

def finalist_summary(finalists: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per finalist; rank is by validation, as they were chosen."""
    rows = []
    for (family, rank), df in finalists.groupby(["family", "rank"], sort=False):
        scored = df["test_acc"].dropna()
        rows.append({
            "family": family, "rank": rank, "trial": df["number"].iloc[0],
            "arch": df["arch"].iloc[0], "params": df["params_count"].iloc[0],
            "chosen on val acc": df["trial_val_acc"].iloc[0],
            "seeds": len(scored), "diverged": int(df["test_acc"].isna().sum()),
            "val acc mean": df["val_acc"].mean(), "test acc mean": scored.mean(),
            "test acc std": scored.std(ddof=1) if len(scored) > 1 else np.nan,
            "device": df["device"].iloc[0],
        })
    return pd.DataFrame(rows)


def correctness(predictions: pd.DataFrame, family: str, rank: int = 1) -> np.ndarray:
    """Boolean (seeds, images) array of a finalist's right answers, seeds in run order."""
    df = predictions[(predictions["family"] == family) & (predictions["rank"] == rank)]
    return np.stack([(g.sort_values("index")["pred"] == g.sort_values("index")["label"])
                     .to_numpy() for _, g in df.groupby("seed", sort=False)])


def winner(finalists: pd.DataFrame) -> str:
    """The family whose best-on-validation finalist has the higher mean test accuracy."""
    firsts = finalists[finalists["rank"] == 1].groupby("family", sort=False)["test_acc"].mean()
    return str(firsts.idxmax())


def confusion_figure(predictions: pd.DataFrame, family: str) -> go.Figure:
    """Confusion counts of a family's rank-1 finalist on test, summed over its seeds."""
    df = predictions[(predictions["family"] == family) & (predictions["rank"] == 1)]
    counts = pd.crosstab(df["label"], df["pred"]).reindex(index=range(10), columns=range(10),
                                                          fill_value=0)
    seeds = df["seed"].nunique()
    fig = go.Figure(go.Heatmap(z=counts.to_numpy(), x=list(range(10)), y=list(range(10)),
                               colorscale="Blues", text=counts.to_numpy(),
                               texttemplate="%{text}", zmax=max(1, 60 * seeds)))
    return fig.update_layout(
        title=f"{family} (winner): test confusion, {seeds} seeds summed",
        xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
        height=520, width=620)


def misclassified_figure(mis: pd.DataFrame, family: str, limit: int = 40) -> go.Figure:
    """The winner's misclassified test digits (first seed), titled `true → predicted`."""
    df = mis[mis["family"] == family].head(limit)
    images = np.stack([np.asarray(p, np.uint8).reshape(28, 28) for p in df["pixels"]]) if len(
        df) else np.zeros((0, 28, 28), np.uint8)
    cols = 10
    rows = max(1, -(-len(df) // cols))
    titles = [f"{r.label}→{r.pred}" for r in df.itertuples()]
    fig = make_subplots(rows, cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.3 / rows)
    for i, img in enumerate(images):
        fig.add_heatmap(z=img, row=i // cols + 1, col=i % cols + 1, colorscale="gray_r",
                        showscale=False, hovertemplate=f"test #{df['index'].iloc[i]}<extra>"
                                                       "</extra>")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    return fig.update_layout(title=f"{family} (winner): misclassified test digits, "
                                   "true → predicted", height=120 * rows + 80)


# --- page ----------------------------------------------------------------------------------------

def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, na_rep="–", float_format=lambda v: f"{v:.4g}",
                      border=0, classes="t")


def _optional(out: Path, table: str) -> pd.DataFrame | None:
    path = out / f"{table}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def test_section(out: Path, name: str) -> tuple[list[str | go.Figure], str]:
    """The finalists' part of the page and the one-line test verdict (empty before finalize)."""
    finalists = _optional(out, "finalists")
    if finalists is None or finalists["test_acc"].notna().sum() == 0:
        return ([f"<p>No test numbers yet: the test set is still held out. "
                 f"<code>make finalize NAME={html.escape(name)}</code> retrains the finalists "
                 "chosen on validation and scores them once on test.</p>"], "")
    predictions = pd.read_parquet(out / "test_predictions.parquet")
    summary = finalist_summary(finalists)
    best = winner(finalists)
    parts: list[str | go.Figure] = [
        "<p>Each family's top trials on <b>validation</b> were retrained on the same training "
        "split with several seeds; each run was scored once on the 10,000 test images. "
        "No other configuration was scored on test.</p>", _table(summary)]
    verdict = ""
    mean = summary[summary["rank"] == 1].set_index("family")["test acc mean"]
    for other in [f for f in _families(finalists) if f != best]:
        p = stats.paired(correctness(predictions, best), correctness(predictions, other))
        verdict = (f"test: {best} {mean[best]:.2%} vs {other} {mean[other]:.2%}, gap "
                   f"{p.gap * 100:+.2f} pp (95% paired bootstrap CI {p.low * 100:+.2f} to "
                   f"{p.high * 100:+.2f} pp; McNemar p ≤ {p.p_value:.2g} with {p.a_only:.0f} vs "
                   f"{p.b_only:.0f} images only one of them gets right): {p.verdict(best, other)}")
        parts.append(f"<p class='answer'>{html.escape(verdict)}</p>")
    mis = _optional(out, "misclassified")
    parts += [confusion_figure(predictions, best)]
    if mis is not None and len(mis):
        parts.append(misclassified_figure(mis, best))
    return parts, verdict


def provenance_table(run: dict, trials: pd.DataFrame) -> pd.DataFrame:
    """Where the numbers came from: code, versions, device, budget, wall time, data, config."""
    start = trials["datetime_start"].min()
    ends = trials["datetime_start"] + pd.to_timedelta(trials["wall_seconds"].fillna(0), unit="s")
    cfg = run.get("config", {})
    rows = {
        "git SHA": run.get("git_sha"), "versions": run.get("versions"),
        "device": run.get("device"), "torch threads": run.get("threads"),
        "deterministic algorithms": run.get("deterministic"),
        "budget": f"{cfg.get('trials')} trials, timeout {cfg.get('timeout') or 'none'} s",
        "study wall time": f"{(ends.max() - start).total_seconds():.0f} s from "
                           f"{start:%Y-%m-%d %H:%M} (first trial start to last trial end)"
                           if len(trials) else "–",
        "training seconds per family": ", ".join(
            f"{f} {s:.0f} s" for f, s in trials.groupby("family", sort=False)["wall_seconds"]
            .sum().items()),
        "data MD5 (uncompressed)": run.get("data_md5"), "split hash": run.get("split_hash"),
        "space hash": run.get("space_hash"),
        "resolved config": json.dumps(cfg, sort_keys=True),
        "search space": json.dumps(run.get("space"), sort_keys=True),
    }
    return pd.DataFrame({"": list(rows), "value": [str(v) for v in rows.values()]})


def access_table(access: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(access, columns=["when", "code", "why", "seed", "config", "pid"])
    df["seed"] = df["seed"].astype("Int64")
    df["config"] = df["config"].map(lambda c: json.dumps(c, sort_keys=True) if c else "")
    return df


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
pre{background:#f6f6f6;padding:.8em;white-space:pre-wrap}
table.t{border-collapse:collapse;font-size:.9em;margin:.5em 0}
table.t td,table.t th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top}
.answer{font-size:1.1em;font-weight:600}
"""


def render(title: str, sections: list[tuple[str, list[str | go.Figure]]]) -> str:
    """One HTML page; plotly.js is inlined once, so the file opens offline."""
    body = []
    for heading, parts in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for part in parts:
            body.append(part if isinstance(part, str) else part.to_html(
                full_html=False, include_plotlyjs=False, config={"displaylogo": False}))
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"<script>{get_plotlyjs()}</script></head><body><h1>{html.escape(title)}</h1>"
            + "\n".join(body) + "</body></html>\n")


def build(out: Path, name: str) -> Path:
    """Write `out`/report.html from the store in `out`; returns its path."""
    trials, epochs = store.read(out, "trials"), store.read(out, "epochs")
    importances = _optional(out, "importances")
    run = store.last_study_run(out)
    access = store.read_jsonl(out / "test_access.jsonl")
    test_parts, verdict = test_section(out, name)
    answer = [comparison(trials), verdict]
    done = trials[trials["state"] == "COMPLETE"]
    space_parts: list[str | go.Figure] = []
    if importances is not None and len(importances):
        space_parts.append(importance_figure(importances))
    space_parts += [parallel_figure(trials, f) for f, n in done["family"].value_counts(
        sort=False).items() if n >= 3]  # fewer lines than that show nothing
    sections = [
        ("Question", [f"<pre>{html.escape(run.get('question', ''))}</pre>"]
         + [f"<p class='answer'>{html.escape(a)}</p>" for a in answer if a]),
        ("Per family (validation)", [_table(family_summary(trials))]),
        ("Optimisation history", [history_figure(trials)]),
        ("Learning curves", [curves_figure(trials, epochs)]),
        ("Hyperparameters", space_parts or ["<p>Not enough completed trials.</p>"]),
        ("Accuracy against cost", [cost_figure(trials)]),
        ("Finalists on the held-out test set", test_parts),
        ("Test-set access log", [
            f"<p>Every read of the test split, appended to test_access.jsonl before it happened "
            f"({len(access)} entries). The study itself never opens the test files.</p>",
            _table(access_table(access))]),
        ("Provenance", [_table(provenance_table(run, trials)),
                        f"<p>Report built {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from the "
                        f"store in {html.escape(str(out))}.</p>"]),
    ]
    page = render(f"mnist-bench · {name}", sections)
    target = out / "report.html"
    store.atomic_write(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return target
