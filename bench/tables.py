"""Terminal tables: the resolved configuration before a study, the per-family summary after.

Validation numbers only: these tables are printed by the study, which never sees the test set.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bench.space import Space
from bench.store import with_replicate


def progress_bars(console: Console, transient: bool) -> Progress:
    """The terminal's progress bars: a description, a bar, done/total and the time elapsed.

    Standard colours (magenta running, green finished), so a finished bar never takes the grey
    of an empty one on a 16-colour terminal."""
    return Progress(TextColumn("{task.description}"),
                    BarColumn(complete_style="magenta", finished_style="green"),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                    transient=transient)


def plain(value: Any) -> str:
    """A setting for people: `none` rather than Python's None."""
    return "none" if value is None else str(value)


def config_table(settings: dict[str, Any], space: Space, device_name: str) -> Table:
    """The resolved settings (storage password already masked); plain text, never markup."""
    table = Table(title=Text(f"study {settings['name']}"), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in {**settings, "device name": device_name}.items():
        table.add_row(key, Text(plain(value)))
    for key, value in vars(space).items():
        table.add_row(f"space.{key}", Text(plain(value)))
    return table


def seconds(v: float) -> str:
    """3 significant digits, never in exponent form: 0.333 s, 7.7 s, 840 s, 1,234 s."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def human(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers formatted for people, by column name: accuracies as 98.09%, parameters as
    345,908, seconds to 3 digits, learning rates as 0.0031; NaN as –."""
    def cell(col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return "–"
        if isinstance(v, str | bool):
            return str(v)
        if "acc" in col or col.endswith(" %"):
            return f"{v:.2%}"
        if "pp" in col:
            return f"{v:+.2f}"
        if col.endswith(" s") or col.endswith("seconds"):
            return seconds(float(v))
        if col in ("lr", "weight decay") or col.startswith("p "):
            return f"{v:.2g}"
        if "loss" in col:
            return f"{v:.4f}"
        if float(v).is_integer():
            return f"{int(v):,}"
        return f"{v:.4g}"
    return pd.DataFrame({c: [cell(c, v) for v in df[c]] for c in df.columns}, index=df.index)


def best_per_replicate(trials: pd.DataFrame) -> pd.DataFrame:
    """The best completed trial of each (family, replicate) on validation."""
    done = with_replicate(trials[trials["state"] == "COMPLETE"])
    if done.empty:
        return done
    return done.loc[done.groupby(["family", "replicate"], sort=False)["value"].idxmax()]


def family_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per family, over its replicates: outcomes, training seconds, and its best trial on
    validation (median over replicates, with the lowest and highest); the recipe columns are the
    best trial of the replicate whose best is the median one. Validation only."""
    trials = with_replicate(trials)
    bests = best_per_replicate(trials)
    rows = []
    for family, df in trials.groupby("family", sort=False):
        reason = df["stop_reason"].value_counts()
        k = df["replicate"].nunique()
        row = {"family": family, "replicates": k, "trials": len(df),
               "completed": int((df["state"] == "COMPLETE").sum()),
               "pruned": int(reason.get("pruned", 0)),
               "cut by budget": int(reason.get("budget", 0)),
               "failed": int((df["state"] == "FAIL").sum()),
               "total s": df["wall_seconds"].sum(),
               "s per replicate": df["wall_seconds"].sum() / k}
        best = bests[bests["family"] == family].sort_values("value")
        if not best.empty:
            median = best.iloc[(len(best) - 1) // 2]  # the lower median: a trial that exists
            row |= {"best val acc": best["value"].median(),
                    "lowest best val acc": best["value"].min(),
                    "highest best val acc": best["value"].max(),
                    "val loss": median["final_val_loss"], "epochs": median["epochs_run"],
                    "params": median["params_count"], "trial s": median["wall_seconds"],
                    "optimizer": median["param_optimizer"], "lr": median["param_lr"],
                    "batch size": median["param_batch_size"]}
        rows.append(row)
    return pd.DataFrame(rows)


def rich_table(df: pd.DataFrame, title: str, caption: str | None = None) -> Table:
    """A DataFrame as a rich table, numbers formatted by `human`, text columns left-aligned."""
    table = Table(title=title, caption=caption)
    shown = human(df)
    for col in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(
            df[col])
        table.add_column(str(col), justify="right" if numeric else "left")
    for row in shown.itertuples(index=False):
        table.add_row(*map(Text, row))
    return table


def summary_table(trials: pd.DataFrame) -> Table:
    """The family summary for the terminal."""
    df = family_summary(trials)
    df.insert(3, "outcomes", [f"{r['completed']}/{r['pruned']}/{r['cut by budget']}/{r['failed']}"
                              for r in df.to_dict("records")])
    df = df.drop(columns=["completed", "pruned", "cut by budget", "failed", "total s"])
    if "best val acc" in df:  # the spread over replicates in one column
        df["best val acc range"] = [
            "–" if pd.isna(r["lowest best val acc"]) else
            f"{r['lowest best val acc']:.2%}–{r['highest best val acc']:.2%}"
            for r in df.to_dict("records")]
        df = df.drop(columns=["lowest best val acc", "highest best val acc"])
    if "optimizer" in df:  # one column, so the table fits a terminal
        df["optimizer, lr, bs"] = [
            "–" if pd.isna(r["optimizer"]) else
            f"{r['optimizer']}, {r['lr']:.2g}, {int(r['batch size'])}"
            for r in df.to_dict("records")]
        df = df.drop(columns=["optimizer", "lr", "batch size"])
    return rich_table(df, "Best trial per family on validation, median over replicates (test "
                          "is held out)",
                      "outcomes: completed / pruned / cut by the time budget / failed; s per "
                      "replicate: training seconds the family used in each replicate; recipe "
                      "columns: the median replicate's best trial")


def comparison(trials: pd.DataFrame) -> str:
    """The study's answer in one line: every family ranked by its best trial on validation,
    median over replicates, with the replicates it was best in."""
    bests = best_per_replicate(trials)
    if bests.empty or bests["family"].nunique() < 2:
        return ""
    k = bests["replicate"].nunique()
    median = bests.groupby("family", sort=False)["value"].median().sort_values(ascending=False)
    winners = bests.loc[bests.groupby("replicate")["value"].idxmax(), "family"].value_counts()
    seconds_used = trials.groupby("family")["wall_seconds"].sum() / k
    top = median.iloc[0]
    ranked = [f"{f} {v:.2%}" + ("" if i == 0 else f" ({(top - v) * 100:.2f} pp behind)")
              + f" [best in {winners.get(f, 0)} of {k}, {seconds(seconds_used[f])} s per "
              "replicate]" for i, (f, v) in enumerate(median.items())]
    scope = (f"median over {k} replicates" if k > 1 else
             "one replicate: a family verdict needs REPLICATES>=3")
    return (f"validation, best trial per family ({scope}), best first: " + "; ".join(ranked))
