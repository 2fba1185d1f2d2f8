"""Terminal tables: the resolved configuration before a study, the per-family summary after.

Validation numbers only: these tables are printed by the study, which never sees the test set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bench.space import Space

if TYPE_CHECKING:
    from bench.study import RunConfig


def progress_bars(console: Console, transient: bool) -> Progress:
    """The terminal's progress bars: a description, a bar, done/total and the time elapsed."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=transient)


def config_table(cfg: RunConfig, space: Space, device_name: str) -> Table:
    """The resolved settings, storage password masked; values are plain text, never markup."""
    table = Table(title=Text(f"study {cfg.name}"), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in {**cfg.public(), "out": cfg.out, "device name": device_name}.items():
        table.add_row(key, Text(str(value)))
    for key, value in vars(space).items():
        table.add_row(f"space.{key}", Text(str(value)))
    return table


def family_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per family: outcomes, time spent and its best completed trial (validation only)."""
    rows = []
    for family, df in trials.groupby("family", sort=False):
        reason = df["stop_reason"].value_counts()
        row = {"family": family, "trials": len(df),
               "completed": int((df["state"] == "COMPLETE").sum()),
               "pruned": int(reason.get("pruned", 0)),
               "cut by budget": int(reason.get("budget", 0)),
               "failed": int((df["state"] == "FAIL").sum()),
               "total s": df["wall_seconds"].sum()}
        done = df[df["state"] == "COMPLETE"]
        if not done.empty:
            best = done.loc[done["value"].idxmax()]
            row |= {"best val acc": best["value"], "val loss": best["final_val_loss"],
                    "epochs": best["epochs_run"], "params": best["params_count"],
                    "trial s": best["wall_seconds"], "optimizer": best["param_optimizer"],
                    "lr": best["param_lr"], "batch size": best["param_batch_size"]}
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(trials: pd.DataFrame) -> Table:
    """The family summary for the terminal."""
    table = Table(title="Best trial per family (validation only; test is held out)",
                  caption="outcomes: completed / pruned / cut by the time budget / failed")
    heads = ("family", "trials", "outcomes", "total s", "best val acc",
             "val loss", "epochs", "params", "trial s", "optimizer, lr, bs")
    for col in heads:
        table.add_column(col, justify="left" if col in (heads[0], heads[-1]) else "right")
    for r in family_summary(trials).to_dict("records"):
        head = [str(r["family"]), str(r["trials"]),
                f"{r['completed']}/{r['pruned']}/{r['cut by budget']}/{r['failed']}",
                f"{r['total s']:.0f}"]
        if pd.isna(r.get("best val acc", float("nan"))):
            table.add_row(*head, *["-"] * 6)
            continue
        table.add_row(
            *head, f"{r['best val acc']:.4f}", f"{r['val loss']:.4f}", str(r["epochs"]),
            f"{r['params']:,}", f"{r['trial s']:.3g}",
            f"{r['optimizer']}, {r['lr']:.2g}, {r['batch size']}",
        )
    return table


def comparison(trials: pd.DataFrame) -> str:
    """The study's answer in one line: best family against the runner-up, on validation."""
    done = trials[trials["state"] == "COMPLETE"]
    if done["family"].nunique() < 2:
        return ""
    best = done.loc[done.groupby("family")["value"].idxmax()].sort_values("value", ascending=False)
    a, b = best.iloc[0], best.iloc[1]
    return (f"validation: best {a['family']} {a['value']:.2%} vs best {b['family']} "
            f"{b['value']:.2%} ({(a['value'] - b['value']) * 100:+.2f} pp) at "
            f"{a['wall_seconds']:.3g} s / {a['params_count']:,} params vs "
            f"{b['wall_seconds']:.3g} s / {b['params_count']:,} params per trial")

