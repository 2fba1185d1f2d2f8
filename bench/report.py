"""The study report: store tables -> plotly figures -> one self-contained HTML file.

Every figure is a function of DataFrames from the store, so each can be tested without a browser,
and this module reads only the store (Parquet tables, runs.jsonl, test_access.jsonl): never
Optuna, never the data. Selection happens on validation; test numbers appear only for the
finalists that `make finalize` scored, next to the log of every time the test split was read.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from bench import curves, stats, store
from bench.space import CHOICES, family_samplers
from bench.store import read_verdicts, with_replicate
from bench.tables import (
    SUMMARY_CAPTION,
    best_per_replicate,
    comparison,
    human,
    intervals,
    seconds,
    summary_frame,
)

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
# The line every smoke command ends with and the banner atop a smoke report.
SMOKE_LINE = ("SMOKE RUN: a small subset of the training images, 1–2 epochs, a handful of "
              "trials. It checks that the pipeline works; its numbers are not findings.")
CUT = "#b0b0b0"  # trials stopped early (pruned or out of budget)
ERROR_FLOOR = 0.01  # %: one image in 10,000; a perfect score is drawn there on the log axis
ERROR_AXIS = "validation error (%, log scale)"
MIN_IMPORTANCE_TRIALS = 10  # completed trials a family's importances need before they are shown


def error(acc: pd.Series | float) -> pd.Series | float:
    """Accuracy -> error rate in %, floored for the log axis: around 99% accuracy the trials
    that matter differ by tenths of a percent, which a 0-1 accuracy axis squashes into a line."""
    return np.maximum((1 - acc) * 100, ERROR_FLOOR)


def colors(families: list[str]) -> dict[str, str]:
    return {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(families)}


def _families(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["family"]))


# --- axes: major ticks only, every point inside, integers as integers ----------------------------

def percent(v: float) -> str:
    return f"{v:g}%"


def plain_number(v: float) -> str:
    """A tick label: 1e-6, 0.001, 0.05, 10, 20k, 1.5M."""
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e4:
        return f"{v / 1e3:g}k"
    if v < 1e-3:  # 1e-6 rather than 0.000001
        mantissa, exponent = f"{v:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{v:.10f}".rstrip("0").rstrip(".") if v < 1 else f"{v:g}"


def log_axis(values: Iterable[float], fmt: Callable[[float], str] = percent,
             decades: float = 3) -> dict:
    """A log axis for `values`: labelled ticks at 1, 2 and 5 times a power of ten (powers of ten
    alone over more than `decades`), the range from the tick at or below the smallest value
    to the one at or above the largest, with a margin, so that no point sits beyond the last
    label. Plotly's own labels every minor tick (`9 8 7 6 5 4 3 2` between 10 and 100)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], float)
    if not len(v):
        return {"type": "log"}
    lo, hi = v.min(), v.max()
    steps = (1, 2, 5) if hi / lo <= 10**decades else (1,)
    ticks = sorted(float(f"{s}e{k}") for k in range(math.floor(math.log10(lo)) - 1,
                                                    math.ceil(math.log10(hi)) + 2)
                   for s in steps)
    below = max(t for t in ticks if t <= lo * (1 + 1e-9))
    above = min(t for t in ticks if t >= hi * (1 - 1e-9) and t > below)
    shown = [t for t in ticks if below <= t <= above]
    a, b = math.log10(below), math.log10(above)
    pad = 0.04 * (b - a)
    return {"type": "log", "range": [a - pad, b + pad], "tickmode": "array", "tickvals": shown,
            "ticktext": [fmt(t) for t in shown]}


def integer_axis(values: Iterable[float]) -> dict:
    """Ticks at whole numbers only (trial numbers, epochs): a step of 1, 2, 5, 10, ... so that
    at most eight are labelled, and a margin so the first and last points are not on the edge."""
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    if not v:
        return {}
    lo, hi = min(v), max(v)
    step = next(s * 10**k for k in range(12) for s in (1, 2, 5) if (hi - lo) / (s * 10**k) <= 8)
    pad = max(0.3, 0.04 * (hi - lo))
    return {"tickmode": "linear", "tick0": 0, "dtick": step, "range": [lo - pad, hi + pad],
            "tickformat": "d"}


def _legend(fig: go.Figure, height: int = 450) -> go.Figure:
    """A figure tall enough for its whole legend: plotly scrolls a legend that does not fit."""
    entries = sum(1 for t in fig.data if t.showlegend is not False)
    groups = len({t.legendgroup for t in fig.data if t.showlegend is not False})
    return fig.update_layout(height=max(height, 130 + 22 * entries + 12 * groups))


# --- validation-side figures ---------------------------------------------------------------------

def history_figure(trials: pd.DataFrame) -> go.Figure:
    """Each trial's validation accuracy and the best so far, against trial number and seconds.

    Seconds are the family's own cumulative trial time in its replicate, the budget a family is
    given; each replicate has its own best-so-far line.
    """
    fig = make_subplots(1, 2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("by trial number", "by the family's training seconds"))
    col = colors(_families(trials))
    trials = with_replicate(trials).sort_values("number")
    first = True
    for (family, replicate), df in trials.groupby(["family", "replicate"], sort=False):
        seconds = df["wall_seconds"].fillna(0).cumsum()
        done = df["state"] == "COMPLETE"
        best = df["value"].where(done).cummax().ffill()
        legend = bool(first or replicate == trials.loc[trials["family"] == family,
                                                       "replicate"].min())
        for c, x in enumerate((df["number"], seconds), start=1):
            shown = legend and c == 1
            fig.add_scatter(x=x[done], y=error(df["value"][done]), mode="markers", row=1, col=c,
                            name=f"{family} completed", legendgroup=family, showlegend=shown,
                            marker={"color": col[family], "size": 6})
            fig.add_scatter(x=x[~done], y=error(df["final_val_acc"][~done]), mode="markers",
                            row=1,
                            col=c, name=f"{family} stopped early (last val acc)",
                            legendgroup=family, showlegend=shown,
                            marker={"color": col[family], "size": 6, "symbol": "x-thin-open"})
            fig.add_scatter(x=x, y=error(best), mode="lines",
                            line={"color": col[family], "shape": "hv"},
                            row=1, col=c, name=f"{family} best so far (one line a replicate)",
                            legendgroup=family, showlegend=shown,
                            hovertext=f"{family} replicate {replicate}")
        first = False
    fig.update_xaxes(title_text="trial number", row=1, col=1, **integer_axis(trials["number"]))
    fig.update_xaxes(title_text="seconds", row=1, col=2)
    fig.update_yaxes(**log_axis(y for t in fig.data for y in t.y))
    fig.update_yaxes(title_text=ERROR_AXIS, row=1, col=1)
    return _legend(fig.update_layout(
        title="Optimisation history (validation error; lower is better)"))


def _trial(family: str, replicate: int, number: int, replicates: int) -> str:
    """`cnn #3`, or `cnn #3 (replicate 1)` where trial numbers repeat across replicates."""
    return f"{family} #{number}" + (f" (replicate {replicate})" if replicates > 1 else "")


def curves_figure(trials: pd.DataFrame, epochs: pd.DataFrame, top: int = 5) -> go.Figure:
    """Learning curves: the `top` completed trials per family (over all replicates) in colour,
    early-stopped in grey; a trial is its (replicate, number), as numbers repeat per replicate.

    A grey curve ends with an x where the pruner (or the time budget) cut the trial.
    """
    trials, epochs = with_replicate(trials), with_replicate(epochs)
    k = trials["replicate"].nunique()
    families = _families(trials)
    col = colors(families)
    fig = make_subplots(1, len(families), shared_yaxes=True, subplot_titles=families,
                        horizontal_spacing=0.04)
    legend = False  # one legend entry for all stopped trials
    for c, family in enumerate(families, start=1):
        t = trials[trials["family"] == family]
        best = t[t["state"] == "COMPLETE"].nlargest(top, "value")[["replicate", "number"]]
        cut = t[t["stop_reason"].isin(["pruned", "budget"])][["replicate", "number"]]
        e = epochs[epochs["family"] == family]
        for r, number in cut.itertuples(index=False):
            h = e[(e["replicate"] == r) & (e["number"] == number)]
            fig.add_scatter(x=h["epoch"], y=error(h["val_acc"]), mode="lines+markers", row=1,
                            col=c, line={"color": CUT, "width": 1},
                            marker={"symbol": ["circle"] * (len(h) - 1) + ["x"],
                                    "size": [3] * (len(h) - 1) + [9], "color": CUT},
                            name="stopped early (x = cut)", legendgroup="cut",
                            showlegend=not legend, hovertext=_trial(family, r, number, k))
            legend = True
        for rank, (r, number) in enumerate(best.itertuples(index=False), start=1):
            h = e[(e["replicate"] == r) & (e["number"] == number)]  # one legend entry a family
            fig.add_scatter(x=h["epoch"], y=error(h["val_acc"]), mode="lines+markers", row=1,
                            col=c, line={"color": col[family], "width": 3 if rank == 1 else 1.5},
                            name=f"{family}: top {len(best)} (thickest: best)",
                            legendgroup=family, showlegend=rank == 1,
                            hovertext=f"{_trial(family, r, number, k)}, rank {rank}")
        fig.update_xaxes(title_text="epoch", row=1, col=c)
    fig.update_xaxes(**integer_axis(epochs["epoch"]))
    fig.update_yaxes(**log_axis(y for t in fig.data for y in t.y))
    fig.update_yaxes(title_text=ERROR_AXIS, row=1, col=1)
    return _legend(fig.update_layout(
        title=f"Learning curves: top {top} per family and the pruned trials"))


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


LOG_PARAMS = ("lr", "weight_decay")  # searched on a log scale (space.py)


def _dimension(label: str, values: pd.Series) -> dict:
    """One parallel-coordinates axis: choices as categories, integers at integers, log-searched
    numbers on a log axis labelled with the numbers themselves."""
    if label in CHOICES or not pd.api.types.is_numeric_dtype(values) or (
            pd.api.types.is_bool_dtype(values)):
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
            values)
        cats = sorted(values.unique(), key=float if numeric else str)
        codes = values.map({c: i for i, c in enumerate(cats)})
        return {"label": label.replace("_", " "), "values": codes,
                "tickvals": list(range(len(cats))), "ticktext": [str(c) for c in cats],
                "range": [-0.3, len(cats) - 0.7] if len(cats) > 1 else [-1, 1]}
    vals = values.astype(float)
    if label in LOG_PARAMS and (vals > 0).all():
        axis = log_axis(vals, plain_number, decades=1.5)  # a short axis: fewer labels
        return {"label": f"{label.replace('_', ' ')} (log)", "values": np.log10(vals),
                "range": axis["range"], "tickvals": [math.log10(t) for t in axis["tickvals"]],
                "ticktext": axis["ticktext"]}
    if (vals == vals.round()).all():
        ticks = sorted(vals.unique())
        span = ticks[-1] - ticks[0]
        if len(ticks) > 5 or min(np.diff(ticks)) < 0.08 * span:  # crowded: round numbers,
            step = integer_axis(vals)["dtick"]  # from one at or below the lowest value to
            ticks = list(np.arange(math.floor(vals.min() / step) * step,  # one at or above
                                   math.ceil(vals.max() / step) * step + step / 2, step))
        pad = max(0.3, 0.04 * (ticks[-1] - ticks[0]))
        return {"label": label.replace("_", " "), "values": vals, "tickvals": ticks,
                "ticktext": [f"{t:,.0f}" for t in ticks],
                "range": [ticks[0] - pad, ticks[-1] + pad]}
    return {"label": label.replace("_", " "), "values": vals, "tickformat": ".3~g"}


def parallel_figure(trials: pd.DataFrame, family: str) -> go.Figure:
    """Parallel coordinates of a family's completed trials, coloured by validation error.

    The last axis is the error on a log scale, as in every other figure; the colours span the
    best trial to the median one, so the good trials differ in colour (darkest: best) and the
    worse half shares the palest. Conditional parameters (set only by some trials) are left out:
    an axis needs every trial.
    """
    df = trials[(trials["family"] == family) & (trials["state"] == "COMPLETE")]
    dims = []
    for column in sorted(c for c in df.columns if c.startswith("param_")):
        values = df[column]
        if values.isna().any() or values.nunique() < 2:
            continue
        dims.append(_dimension(column.removeprefix("param_"), values))
    err = error(df["value"])
    axis = log_axis(err)
    log_err = np.log10(err)
    dims.append({"label": "val error", "values": log_err, "range": axis["range"],
                 "tickvals": [math.log10(t) for t in axis["tickvals"]],
                 "ticktext": axis["ticktext"]})
    low, mid = float(log_err.min()), float(np.median(log_err))
    mid = mid if mid > low else low + 0.1
    gap = 0.1 * (mid - low)  # round ticks inside, none crowding the two labelled ends
    inner = [math.log10(t) for t in log_axis([10**low, 10**mid])["tickvals"]
             if low + gap < math.log10(t) < mid - gap]
    line = {"color": log_err, "colorscale": "Viridis", "cmin": low, "cmax": mid,
            "showscale": True,
            "colorbar": {"title": {"text": "val error"}, "tickmode": "array",
                         "tickvals": [low, *inner, mid],
                         "ticktext": [f"{10**low:.2g}% best", *(percent(10**t) for t in inner),
                                      f"{10**mid:.2g}% median"]}}
    return go.Figure(go.Parcoords(line=line, dimensions=dims, labelangle=-20)).update_layout(
        title=f"{family}: completed trials across the search space (validation error; colours "
              "from the best trial, darkest, to the median one)",
        margin={"t": 140})  # room for the slanted labels, which would overlap level


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
    trials = with_replicate(trials)
    done, k = trials[trials["state"] == "COMPLETE"], trials["replicate"].nunique()
    col = colors(_families(trials))
    fig = make_subplots(1, 2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("train seconds", "parameters"))
    for c, cost in enumerate(("wall_seconds", "params_count"), start=1):
        for family, df in done.groupby("family", sort=False):
            fig.add_scatter(x=df[cost], y=error(df["value"]), mode="markers", row=1, col=c,
                            name=family, legendgroup=family, showlegend=c == 1,
                            marker={"color": col[family], "size": 7, "opacity": 0.7},
                            hovertext=[_trial(family, r, n, k) for r, n in zip(
                                df["replicate"], df["number"], strict=True)])
        front = done[pareto_front(done[cost], done["value"])].sort_values(cost)
        fig.add_scatter(x=front[cost], y=error(front["value"]), mode="lines+markers", row=1,
                        col=c,
                        name="Pareto front", legendgroup="pareto", showlegend=c == 1,
                        line={"color": "black", "shape": "hv", "dash": "dot"},
                        marker={"symbol": "diamond-open", "size": 12, "color": "black"})
        title, fmt = (("training seconds (log scale)", lambda t: f"{plain_number(t)} s")
                      if cost == "wall_seconds" else ("parameters (log scale)", plain_number))
        fig.update_xaxes(title_text=title, row=1, col=c, **log_axis(done[cost], fmt))
    fig.update_yaxes(**log_axis(error(done["value"])))
    fig.update_yaxes(title_text=ERROR_AXIS, row=1, col=1)
    return _legend(fig.update_layout(title="Error against cost (validation)"))


def _steps(x: pd.Series, y: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The corners of a step function that keeps each value until the next x, so that a filled
    band follows the same steps as its line (plotly's `hv` shape applies to lines only)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return np.repeat(x, 2)[1:], np.repeat(y, 2)[:-1]


def tuning_figure(trials: pd.DataFrame, by: str) -> go.Figure:
    """Tuning curves: per family the median over replicates of the best validation error so far
    against its training seconds (timed studies) or trials, with the band from the best to the
    worst replicate; error on a log axis."""
    c = curves.curve(trials, by)
    fig = go.Figure()
    col = colors(_families(trials))
    for family, df in c.groupby("family", sort=False):
        df = df.dropna(subset=["median"])
        xs, high = _steps(df["x"], error(1 - df["high"]))
        _, low = _steps(df["x"], error(1 - df["low"]))
        fig.add_scatter(x=np.concatenate([xs, xs[::-1]]), y=np.concatenate([high, low[::-1]]),
                        fill="toself", fillcolor=col[family], opacity=0.15, mode="none",
                        legendgroup=family, name=f"{family}: lowest–highest replicate",
                        hoverinfo="skip")
        fig.add_scatter(x=df["x"], y=error(1 - df["median"]), mode="lines",
                        line={"color": col[family], "shape": "hv", "width": 3},
                        legendgroup=family, name=f"{family}: median over replicates")
    fig.update_xaxes(title_text="training seconds per family" if by == "seconds"
                     else "trials per family")
    shown = c[["median", "low", "high"]].to_numpy().ravel()
    fig.update_yaxes(title_text=ERROR_AXIS, **log_axis(error(1 - shown[~np.isnan(shown)])))
    return _legend(fig.update_layout(title="Tuning curves: best validation error so far (lower "
                                           "is better)"))


def expected_best_figure(trials: pd.DataFrame) -> go.Figure:
    """Dodge et al. 2019's expected best validation error after n i.i.d. trials per family,
    from its completed trials over every replicate, with opda's 80% simultaneous band."""
    done = trials[trials["state"] == "COMPLETE"]
    fig = go.Figure()
    col = colors(_families(trials))
    drawn: list[float] = []
    for family, df in done.groupby("family", sort=False):
        values = df["value"].to_numpy(dtype=float)
        ns = np.arange(1, max(2, len(values)) + 1)
        mid = curves.expected_best(values, ns)
        low, high = curves.expected_best_bands(values, ns)
        fig.add_scatter(x=np.concatenate([ns, ns[::-1]]),
                        y=np.concatenate([error(high), error(low)[::-1]]), fill="toself",
                        fillcolor=col[family], opacity=0.15, mode="none", legendgroup=family,
                        name=f"{family}: 80% band", hoverinfo="skip")
        fig.add_scatter(x=ns, y=error(mid), mode="lines", line={"color": col[family]},
                        legendgroup=family, name=f"{family}: expected best")
        drawn += [*error(low), *error(high)]
    fig.update_xaxes(title_text="trials (n)")
    fig.update_yaxes(title_text="expected best validation error (%, log scale)",
                     **log_axis(drawn))
    return _legend(fig).update_layout(
        title="Expected best after n i.i.d. trials (Dodge et al. 2019; bands: opda, Lourie et "
              "al.)")


def tuning_parts(trials: pd.DataFrame, run: dict) -> tuple[list[str | go.Figure], str]:
    """The tuning-curve section and its answer line: from which budget the order holds. The
    expected-best figure only for i.i.d. samplers (random, qmc), never for TPE."""
    cfg = run.get("config", {})
    by = "seconds" if cfg.get("timeout") else "trials"
    line = curves.describe(curves.holding(trials, by))
    parts: list[str | go.Figure] = [tuning_figure(trials, by)]
    named = family_samplers(run.get("families") or {})
    iid = [f for f in _families(trials)
           if (named.get(f) or cfg.get("sampler", "tpe")) in curves.IID_SAMPLERS]
    if iid:
        parts.append(expected_best_figure(trials[trials["family"].isin(iid)]))
        done = trials[(trials["state"] == "COMPLETE") & trials["family"].isin(iid)]
        values = {f: g["value"].to_numpy(float) for f, g in done.groupby("family", sort=False)}
        if len(values) >= 2:
            ns = np.unique(np.clip([1, 5, 10, 20, 50], 1, max(map(len, values.values()))))
            parts += ["<p>Probability that each family's best of n i.i.d. trials is the best "
                      "of all (from each family's completed trials):</p>",
                      _table(curves.probability_best(values, ns).rename(columns={"n": "trials"}))]
    if line:
        parts.insert(0, f"<p class='answer'>{html.escape(line)}</p>")
    return parts, line


def scientific_axis(families: dict[str, dict] | None, names: list[str]) -> tuple[str, dict]:
    """(axis title, family -> x value) for the study's scientific parameter.

    When every family narrows the same one field to one number (`{"batch_size": (256,)}`), the
    axis is that field and numeric; otherwise the families are categories, in study order.
    """
    fields = {tuple(f) for f in (families or {}).values()}
    if families and len(fields) == 1 and len(key := next(iter(fields))) == 1:
        values = {n: families[n][key[0]] for n in names if n in families}
        if all(isinstance(v, list | tuple) and len(v) == 1 and isinstance(v[0], int | float)
               and not isinstance(v[0], bool) for v in values.values()):
            return key[0].replace("_", " "), {n: v[0] for n, v in values.items()}
    return "family", {n: n for n in names}


def scientific_figure(trials: pd.DataFrame, finalists: pd.DataFrame | None, title: str,
                      x: dict) -> go.Figure:
    """The answer at a glance: per family, the best trial's validation error and, once
    finalized, the rank-1 finalist's test error; medians over replicates, bars from the lowest
    to the highest replicate."""
    bests = best_per_replicate(trials).groupby("family")["value"]
    best, low, high = bests.median(), bests.min(), bests.max()
    order = [f for f in x if f in best.index]
    numeric = title != "family"
    if numeric:
        order.sort(key=lambda f: x[f])
    xs = [x[f] for f in order]
    fig = go.Figure()
    def bars(mid: pd.Series, lo: pd.Series, hi: pd.Series, shown: list[str]) -> dict:
        # error() turns the lowest accuracy into the highest error: the bar's upper end
        return {"type": "data", "symmetric": False,
                "array": [error(lo[f]) - error(mid[f]) for f in shown],
                "arrayminus": [error(mid[f]) - error(hi[f]) for f in shown]}

    fig.add_scatter(x=xs, y=[error(best[f]) for f in order], mode="lines+markers" if numeric
                    else "markers", name="best trial, validation (median over replicates)",
                    text=order, error_y=bars(best, low, high, order),
                    marker={"size": 14, "color": PALETTE[0], "symbol": "circle-open",
                            "line": {"width": 2}})  # open: a test diamond inside stays visible
    ends = [error(v[f]) for v in (best, low, high) for f in order]
    if finalists is not None and finalists["test_acc"].notna().any():
        scores = stats.replicate_scores(finalists).dropna(subset=["test_acc"])
        acc = scores.groupby("family")["test_acc"]
        mid, lo, hi = acc.median(), acc.min(), acc.max()
        shown = [f for f in order if f in mid.index]
        fig.add_scatter(x=[x[f] for f in shown], y=[error(mid[f]) for f in shown],
                        error_y=bars(mid, lo, hi, shown),
                        mode="lines+markers" if numeric else "markers", text=shown,
                        name="rank-1 finalist, test (median over replicates of the mean over "
                             "seeds)",
                        marker={"size": 9, "symbol": "diamond", "color": PALETTE[1]})
        ends += [error(v[f]) for v in (mid, lo, hi) for f in shown]
    log_x = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
    fig.update_xaxes(title_text=title, type="log" if log_x else None,
                     tickvals=xs if numeric else None)
    fig.update_yaxes(title_text="error (%, log scale)", **log_axis(ends))
    if not numeric:  # validation and test side by side at each family, not one over the other
        fig.update_traces(offsetgroup=None)
        for i, trace in enumerate(fig.data):
            trace.offsetgroup = str(i)
        fig.update_layout(scattermode="group", scattergap=0.6)
    return fig.update_layout(title=f"The answer: error by {title} (lower is better)",
                             legend={"orientation": "h", "yanchor": "top", "y": -0.2})


def lr_scaling_figure(trials: pd.DataFrame, x: dict) -> tuple[go.Figure, float]:
    """The best trial's learning rate against batch size on log-log axes, with the fitted
    slope: 1 is linear scaling (Goyal et al. 2017), 0.5 square-root scaling."""
    done = trials[trials["state"] == "COMPLETE"]
    best = done.loc[done.groupby("family")["value"].idxmax()]
    best = best.assign(bs=best["family"].map(x).astype(float)).sort_values("bs")
    slope, intercept = np.polyfit(np.log(best["bs"]), np.log(best["param_lr"]), 1)
    fig = go.Figure()
    fig.add_scatter(x=done["family"].map(x), y=done["param_lr"], mode="markers",
                    name="completed trials", marker={"color": CUT, "size": 6})
    fig.add_scatter(x=best["bs"], y=best["param_lr"], mode="markers", name="best trial",
                    marker={"color": PALETTE[0], "size": 11})
    fig.add_scatter(x=best["bs"], y=np.exp(intercept) * best["bs"] ** slope, mode="lines",
                    name=f"fit: lr ∝ batch size^{slope:.2f}", line={"dash": "dot"})
    fig.update_xaxes(type="log", title_text="batch size", tickvals=list(best["bs"]))
    fig.update_yaxes(title_text="learning rate (log scale)",
                     **log_axis((y for t in fig.data for y in t.y), plain_number))
    return fig.update_layout(title=f"Best learning rate against batch size: slope {slope:.2f} "
                                   "(1 = linear scaling, 0.5 = square root)"), float(slope)


def leaderboard_rows(results_dir: Path, finalists: pd.DataFrame | None,
                     trials: pd.DataFrame) -> pd.DataFrame | None:
    """Families named after leaderboard entries: the recipe as reproduced beside its tuned
    version (what the tutorial left on the table); None when nothing matches."""
    path = results_dir / "leaderboard.parquet"
    if not path.is_file():
        return None
    board = pd.read_parquet(path)
    families = _families(trials)
    board = board[board["entry"].isin(families)]
    if board.empty:
        return None
    best = trials[trials["state"] == "COMPLETE"].groupby("family")["value"].max()
    rows = []
    for family in families:
        runs = board[board["entry"] == family]
        if runs.empty:
            continue
        row = {"family (entry)": family, "recipe scored on": f"{runs['eval_on'].iloc[0]} "
               f"({runs['metric'].iloc[0]})", "recipe acc": runs["acc"].mean(),
               "recipe acc std": runs["acc"].std(ddof=1) if len(runs) > 1 else np.nan,
               "recipe seeds": len(runs), "tuned best val acc": best.get(family, np.nan)}
        if finalists is not None and finalists["test_acc"].notna().any():
            tuned = finalists[(finalists["family"] == family) & (finalists["rank"] == 1)]
            row |= {"tuned test acc": tuned["test_acc"].mean(),
                    "tuned test acc std": tuned["test_acc"].std(ddof=1)}
            row["gain pp"] = (row["tuned test acc"] - row["recipe acc"]) * 100
        rows.append(row)
    return pd.DataFrame(rows)


def importance_parts(importances: pd.DataFrame | None,
                     trials: pd.DataFrame) -> list[str | go.Figure]:
    """Importances only for families with enough completed trials, saying how many each rests
    on: from a handful of trials they are noise drawn as bars."""
    done = trials[trials["state"] == "COMPLETE"].groupby("family").size()
    counts = ", ".join(f"{f} {done.get(f, 0)}" for f in _families(trials))
    note = (f"<p>Parameter importances (Optuna's default evaluator, validation objective) rest "
            f"on each family's completed trials: {html.escape(counts)}. Families with fewer "
            f"than {MIN_IMPORTANCE_TRIALS} are not shown.</p>")
    if importances is None or importances.empty:
        return [note]
    if "replicate" in importances:  # one bar per family and parameter: the replicates' mean
        importances = importances.groupby(["family", "param"], sort=False, as_index=False)[
            "importance"].mean()
    kept = importances[importances["family"].map(done).fillna(0) >= MIN_IMPORTANCE_TRIALS]
    return [note, importance_figure(kept)] if len(kept) else [note]


# --- finalists: the only test numbers ------------------------------------------------------------

def finalist_summary(finalists: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per finalist; rank is by validation, as they were chosen."""
    rows = []
    for (family, replicate, rank), df in with_replicate(finalists).groupby(
            ["family", "replicate", "rank"], sort=False):
        scored = df["test_acc"].dropna()
        rows.append({
            "family": family, "replicate": replicate, "rank": rank,
            "trial": df["number"].iloc[0],
            "arch": df["arch"].iloc[0], "params": df["params_count"].iloc[0],
            "chosen on val acc": df["trial_val_acc"].iloc[0],
            "seeds": len(scored), "diverged": int(df["test_acc"].isna().sum()),
            "val acc mean": df["val_acc"].mean(), "test acc mean": scored.mean(),
            "test acc std": scored.std(ddof=1) if len(scored) > 1 else np.nan,
            "device": df["device"].iloc[0],
        })
    return pd.DataFrame(rows)


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
        title=f"{family} (best on validation): test confusion, {seeds} seeds summed",
        xaxis={"title": {"text": "predicted"}, "tickmode": "array", "tickvals": list(range(10))},
        yaxis={"title": {"text": "true"}, "tickmode": "array", "tickvals": list(range(10)),
               "autorange": "reversed"},
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
    return fig.update_layout(title=f"{family} (best on validation): misclassified test digits, "
                                   "true → predicted", height=120 * rows + 80)


# --- page ----------------------------------------------------------------------------------------

def _table(df: pd.DataFrame) -> str:
    """Numbers formatted for people (tables.human), intervals in one column as the terminal
    shows them (tables.intervals), text escaped."""
    return intervals(human(df)).to_html(index=False, escape=True, border=0, classes="t")


def _optional(out: Path, table: str) -> pd.DataFrame | None:
    path = out / f"{table}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def test_section(out: Path, name: str,
                 finalists: pd.DataFrame | None) -> tuple[list[str | go.Figure], str]:
    """The finalists' part of the page and the one-line test verdict (empty before finalize)."""
    if finalists is None or finalists["test_acc"].notna().sum() == 0:
        return ([f"<p>No test numbers yet: the test set is still held out. "
                 f"<code>make finalize NAME={html.escape(name)}</code> retrains the finalists "
                 "chosen on validation and scores them once on test.</p>"], "")
    predictions = pd.read_parquet(out / "test_predictions.parquet")
    verdicts = read_verdicts(out, finalists)
    k = int(with_replicate(finalists)["replicate"].nunique())
    scores = stats.replicate_scores(finalists)
    best = str(verdicts["reference"].iloc[0]) if len(verdicts) else stats.reference_family(
        scores)
    verdict = stats.answer(verdicts, k)
    parts: list[str | go.Figure] = [
        "<p>In each replicate, each family's top trials on <b>validation</b> were retrained on "
        "that replicate's training split with several seeds; each run was scored once on the "
        "10,000 test images. No other configuration was scored on test.</p>",
        _table(finalist_summary(finalists)),
        f"<p><b>Family verdict.</b> The reference is the family best on validation "
        f"({html.escape(best)}: the highest median over replicates of its retrained rank-1 "
        "finalist's validation accuracy). Each other family's gap = family − reference in "
        "percentage points, per replicate, then over replicates: the interval carries the "
        "spread between replicates (search, split and training seeds) and the test images' "
        "own noise; p is Holm-adjusted across the comparisons.</p>",
        _table(stats.verdict_table(verdicts, "family"))]
    diagnostic = stats.verdict_table(verdicts, "replicate")
    if not diagnostic.empty:
        parts += ["<p>Per replicate (a diagnostic about these finalists, not the family): the "
                  "two rank-1 finalists paired on the same test images; better or worse only "
                  "when every seed pair's McNemar test agrees in direction; the interval "
                  "resamples seeds, then images.</p>", _table(diagnostic)]
    parts.append(f"<p class='answer'>{html.escape(verdict)}</p>")
    mis = _optional(out, "misclassified")
    parts += [confusion_figure(predictions, best)]
    if mis is not None and (mis["family"] == best).any():  # a perfect score has no grid
        parts.append(misclassified_figure(mis, best))
    return parts, verdict


def selection_note(trials: pd.DataFrame, finalists: pd.DataFrame | None) -> str:
    """One sentence when the study's answer line and the test verdict name different families:
    the first ranks families by their best trial on validation, the second compares with the
    family whose rank-1 finalist, retrained over seeds, is best on validation. Empty otherwise.
    """
    bests = best_per_replicate(trials)
    if finalists is None or bests.empty or not finalists["test_acc"].notna().any():
        return ""
    top = bests.groupby("family", sort=False)["value"].median().sort_values(
        ascending=False, kind="stable").index[0]
    try:
        reference = stats.reference_family(stats.replicate_scores(finalists))
    except ValueError:  # every finalist diverged: no reference
        return ""
    if top == reference:
        return ""
    return (f"The two lines name different families: {top} has the best trial on validation, "
            f"but retrained over seeds {reference}'s finalist is best on validation, so the "
            f"test verdict compares every family with {reference}.")


def provenance_table(run: dict, trials: pd.DataFrame) -> pd.DataFrame:
    """Where the numbers came from: code, versions, device, budget, wall time, data, config."""
    start = trials["datetime_start"].min()
    ends = trials["datetime_start"] + pd.to_timedelta(trials["wall_seconds"].fillna(0), unit="s")
    cfg = run.get("config", {})
    rows = {
        "git SHA": run.get("git_sha"), "versions": run.get("versions"),
        "device": run.get("device"), "torch threads": run.get("threads"),
        "deterministic algorithms": run.get("deterministic"),
        "budget": f"{cfg.get('replicates', 1)} replicate(s), each {cfg.get('trials')} trials"
                  + (f" or {seconds(cfg['timeout'])} s of training" if cfg.get("timeout")
                     else "") + ", split equally between the families",
        "study wall time": f"{seconds((ends.max() - start).total_seconds())} s from "
                           f"{start:%Y-%m-%d %H:%M} (first trial start to last trial end)"
                           if len(trials) else "–",
        "training seconds per family and replicate": ", ".join(
            f"{f} r{r} {seconds(s)} s" for (f, r), s in with_replicate(trials).groupby(
                ["family", "replicate"], sort=False)["wall_seconds"].sum().items()),
        "data MD5 (uncompressed)": run.get("data_md5"),
        "split hash per replicate": json.dumps(run.get("split_hashes"))
                                    if run.get("split_hashes") else run.get("split_hash"),
        "space hash": run.get("space_hash"),
        "resolved config": json.dumps(cfg, sort_keys=True),
        "search space": json.dumps(run.get("space"), sort_keys=True),
    }
    return pd.DataFrame({"": list(rows), "value": ["–" if v is None else str(v)
                                                   for v in rows.values()]})


RENAMED = {"number": "trial"}  # a recipe's keys as the report names them


def readable(value: object) -> str:
    """A logged configuration in words: `optimizer adamw (beta1 0.857), lr 0.000995, ...`;
    numbers to 3 digits (the log keeps every digit), `X_kwargs` beside X."""
    if isinstance(value, dict):
        parts = []
        for key, v in value.items():
            if key.endswith("_kwargs") and key.removesuffix("_kwargs") in value:
                continue
            text = f"{RENAMED.get(key, key).replace('_', ' ')} {readable(v)}"
            if kwargs := value.get(f"{key}_kwargs"):
                text += f" ({readable(kwargs)})"
            parts.append(text)
        return ", ".join(parts)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(readable, value)) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "none"}[value]
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _when(stamp: str) -> str:
    """`2026-12-07T22:11:55+00:00` -> `2026-12-07 22:11:55`."""
    return str(stamp).replace("T", " ").removesuffix("+00:00")


def access_table(access: list[dict]) -> pd.DataFrame:
    """The test-access log for people, one row per read as logged: seeds and process ids as
    plain digits (identifiers, not quantities), the configuration in words and only where it
    differs from the row above (a finalist's seeds share one). test_access.jsonl keeps every
    record as written."""
    rows, previous = [], None
    for rec in access:
        config = readable(rec["config"]) if rec.get("config") else "–"
        why = re.sub(r"\['(.*?)'\]", lambda m: m[1].replace("', '", ", "),
                     str(rec.get("why", "")))
        rows.append({"when": _when(rec.get("when", "")), "code": rec.get("code"), "why": why,
                     "seed": "–" if rec.get("seed") is None else str(rec["seed"]),
                     "configuration": "as above" if config == previous and config != "–"
                     else config,
                     "pid": "–" if rec.get("pid") is None else str(rec["pid"])})
        previous = config
    return pd.DataFrame(rows, columns=["when", "code", "why", "seed", "configuration", "pid"])


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
pre{background:#f6f6f6;padding:.8em;white-space:pre-wrap}
table.t{border-collapse:collapse;font-size:.9em;margin:.5em 0;display:block;overflow-x:auto}
table.t td,table.t th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top}
.answer{font-size:1.1em;font-weight:600}
.smoke{background:#fff3cd;border:2px solid #d39e00;padding:.6em;font-weight:700}
.answer .which{font-weight:400;color:#555}
.note{font-style:italic}
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
    finalists = _optional(out, "finalists")
    test_parts, verdict = test_section(out, name, finalists)
    answer = [("Search", "the best trial on validation", comparison(trials)),
              ("Test verdict", "the reference is the best finalist on validation, retrained",
               verdict)]
    answer_html = [f"<p class='answer'><span class='label'>{label}</span> "
                   f"<span class='which'>({which}):</span> {html.escape(text)}</p>"
                   for label, which, text in answer if text]
    if note := selection_note(trials, finalists):
        answer_html.append(f"<p class='note'>{html.escape(note)}</p>")
    done = trials[trials["state"] == "COMPLETE"]
    title, x = scientific_axis(run.get("families"), _families(trials))
    glance: list[str | go.Figure] = [scientific_figure(trials, finalists, title, x)] if len(
        done) else []
    if title == "batch size" and done["family"].nunique() >= 2:
        glance.append(lr_scaling_figure(trials, x)[0])
    if (board := leaderboard_rows(out.parent, finalists, trials)) is not None:
        glance += ["<p>Families named after leaderboard entries: each recipe as reproduced by "
                   "<code>make reproduce</code> (its own scoring, fixed training) beside its "
                   "architecture with the training tuned here.</p>", _table(board)]
    space_parts = importance_parts(importances, trials)
    space_parts += [parallel_figure(trials, f) for f, n in done["family"].value_counts(
        sort=False).items() if n >= 3]  # fewer lines than that show nothing
    tuning, holds = tuning_parts(trials, run) if len(done) else ([], "")
    if holds:
        answer_html.append(f"<p class='answer'><span class='label'>Budget</span> "
                           f"{html.escape(holds)}</p>")
    is_smoke = bool(run.get("config", {}).get("smoke"))
    smoke = [f"<p class='smoke'>{html.escape(SMOKE_LINE)}</p>"] if is_smoke else []
    sections = [
        ("Question", smoke + [f"<pre>{html.escape(run.get('question', ''))}</pre>"]
         + answer_html + glance),
        ("Per family (validation)", [_table(summary_frame(trials)),
                                     f"<p>{html.escape(SUMMARY_CAPTION)}.</p>"]),
        ("Tuning curves", tuning or ["<p>No completed trial yet.</p>"]),
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
    page = render(f"mnist-bench · {name}" + (" (smoke run)" if is_smoke else ""), sections)
    target = out / "report.html"
    store.atomic_write(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return target
