"""Terminal tables: the resolved configuration before a study, the per-family summary after.

Validation numbers only: these tables are printed by the study, which never sees the test set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from rich.table import Table

from bench.space import Space

if TYPE_CHECKING:
    from bench.study import RunConfig


def config_table(cfg: RunConfig, space: Space, device_name: str) -> Table:
    table = Table(title=f"study {cfg.name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in {**vars(cfg), "out": cfg.out, "device name": device_name}.items():
        table.add_row(key, str(value))
    for key, value in vars(space).items():
        table.add_row(f"space.{key}", str(value))
    return table


def summary_table(trials: pd.DataFrame) -> Table:
    """Best completed trial per family, validation numbers only."""
    table = Table(title="Best trial per family (validation only; test is held out)",
                  caption="outcomes: completed / pruned / cut by the time budget / failed")
    heads = ("family", "trials", "outcomes", "total s", "best val acc",
             "val loss", "epochs", "params", "trial s", "optimizer, lr, bs")
    for col in heads:
        table.add_column(col, justify="left" if col in (heads[0], heads[-1]) else "right")
    for family, df in trials.groupby("family", sort=False):
        reason = df["stop_reason"].value_counts()
        outcomes = [(df["state"] == "COMPLETE").sum(), reason.get("pruned", 0),
                    reason.get("budget", 0), (df["state"] == "FAIL").sum()]
        head = [str(family), str(len(df)), "/".join(map(str, outcomes)),
                f"{df['wall_seconds'].sum():.0f}"]
        done = df[df["state"] == "COMPLETE"]
        if done.empty:
            table.add_row(*head, *["-"] * 6)
            continue
        best = done.loc[done["value"].idxmax()]
        table.add_row(
            *head, f"{best['value']:.4f}", f"{best['final_val_loss']:.4f}",
            str(best["epochs_run"]), f"{best['params_count']:,}", f"{best['wall_seconds']:.3g}",
            f"{best['param_optimizer']}, {best['param_lr']:.2g}, {best['param_batch_size']}",
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

