"""Terminal tables: the resolved configuration before a study, the per-family summary after.

Validation numbers only: these tables are printed by the study, which never sees the test set.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bench.space import Space
from bench.stats import REPLICATES_FOR_A_VERDICT
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
    table.add_column(overflow="fold")  # a long path folds onto the next line, never cut
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
        if col.endswith(" s") or col.startswith("s ") or col.endswith("seconds"):
            return seconds(float(v))
        if col.startswith("p "):  # a p-value
            return "<0.001" if v < 0.001 else f"{v:.2g}"
        if col.startswith(("P(", "P ")):  # a probability, as stats.answer prints it
            return f"{v:.2f}"
        if col in ("lr", "weight decay"):
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


# Columns a narrow terminal leaves out first, in this order (a table may name its own): each is
# either derived from another column or a detail the report shows anyway.
DROP_FIRST = ("P 95% interval", "p unadjusted", "val loss", "trial s", "epochs", "params",
              "trials", "seed pairs", "replicates", "P(ref > family)", "s per replicate",
              "optimizer, lr, bs", "p McNemar", "outcomes", "won")
NUMBERS = re.compile(r"[\d.,%+\-−–<\[\] ]*\d[\d.,%+\-−–<\[\] ]*")  # 1.2%, [-1, +2], 1–2%
NOTE_INLINE = 16  # a longer note goes below the table, marked [1], [2], ... in its cell
NO_WRAP = ("verdict",)  # "not separable" on one line: "not" alone reads as a verdict
INTERVAL = re.compile(r"(.*)\blow\b(.*)")  # "95% low pp" + "95% high pp" -> "95% interval pp"


def _extent(text: str, no_wrap: bool) -> tuple[int, int]:
    """(the narrowest width that cuts no word, the width that wraps nothing) of a cell."""
    widest = max((cell_len(line) for line in text.splitlines()), default=0)
    if no_wrap:
        return widest, widest
    return max((cell_len(word) for word in text.split()), default=0), widest


class FittedTable:
    """A rich table that fits the width it is printed at and never cuts a word.

    rich, short of room, shortens cells to `98.2…` or `bett…`. Here every column is at least as
    wide as its longest word (its whole text when `no_wrap`) and text wraps at spaces. Columns of
    numbers (`whole`, right-aligned by default) keep each cell on one line as long as leaving out
    the low-value columns named in `drop`, in order, makes room for that; when even wrapped cells
    do not fit, the rightmost columns go too (never the first, nor one added with `keep=True`).
    The caption names what was left out; columns whose every cell is empty go silently. A word
    wider than the whole table (a path) folds onto the next line rather than losing its end.
    The same add_column / add_row / add_section calls as rich's Table: the width is known only
    when the table is printed.
    """

    def __init__(self, title: str | None = None, caption: str | None = None,
                 drop: tuple[str, ...] = DROP_FIRST) -> None:
        self.title, self.caption, self.drop = title, caption, drop
        self.columns: list[dict[str, Any]] = []
        self.rows: list[list[Text] | None] = []  # None: a section line

    def add_column(self, header: str, justify: str = "left", no_wrap: bool = False,
                   keep: bool = False, whole: bool | None = None) -> None:
        self.columns.append({"header": header, "justify": justify, "no_wrap": no_wrap,
                             "keep": keep, "whole": justify == "right" if whole is None
                             else whole})

    def add_row(self, *cells: str | Text) -> None:
        """Plain text (never markup), or Text for a style."""
        self.rows.append([c.copy() if isinstance(c, Text) else Text(str(c)) for c in cells])

    def add_section(self) -> None:
        self.rows.append(None)

    def _extents(self) -> list[tuple[int, int, int]]:
        """Per column: (the narrowest width that cuts no word, the width that wraps no cell,
        the width that wraps neither cells nor header)."""
        rows = [r for r in self.rows if r is not None]
        out = []
        for i, col in enumerate(self.columns):
            cells = [_extent(r[i].plain, col["no_wrap"]) for r in rows]
            head = _extent(col["header"], col["no_wrap"])
            narrowest = max([head[0], *(c[0] for c in cells)])
            unwrapped = max([narrowest, *(c[1] for c in cells)])
            out.append((narrowest, unwrapped, max(unwrapped, head[1])))
        return out

    def shown(self, width: int) -> tuple[list[int], list[int] | None]:
        """(the columns shown at `width`, their widths; None where everything fits unwrapped)."""
        extents = self._extents()
        shown = [i for i in range(len(self.columns))
                 if not any(self.rows) or any(r and r[i].plain.strip() for r in self.rows)]

        def need(cols: list[int], strict: bool) -> int:  # + padding (2) and border (1), edge
            return sum(extents[i][1 if strict and self.columns[i]["whole"] else 0]
                       for i in cols) + 3 * len(cols) + 1

        order = [i for name in self.drop for i in shown if self.columns[i]["header"] == name]
        for strict, candidates in ((True, order), (False, shown[:0:-1])):
            for i in [i for i in candidates if not self.columns[i]["keep"]]:
                if need(shown, strict) <= width:
                    break
                if i in shown:
                    shown.remove(i)
        room = width - 3 * len(shown) - 1
        if sum(extents[i][2] for i in shown) <= room:
            return shown, None
        widths = [extents[i][0] for i in shown]
        whole = [n for n, i in enumerate(shown) if self.columns[i]["whole"]]
        for level, first in ((1, whole), (1, range(len(shown))), (2, range(len(shown)))):
            short = {n: extents[shown[n]][level] - widths[n] for n in first}
            for n in sorted(short, key=short.__getitem__):  # numbers first, then the cheapest
                if 0 < short[n] <= room - sum(widths):  # cells, so that the fewest wrap
                    widths[n] += short[n]
        for n in sorted(range(len(shown)), key=lambda n: widths[n] - extents[shown[n]][1]):
            widths[n] += max(0, min(room - sum(widths), extents[shown[n]][1] - widths[n]))
        return shown, widths

    def table(self, width: int) -> Table:
        shown, widths = self.shown(width)
        left_out = [self.columns[i]["header"] for i in range(len(self.columns))
                    if i not in shown and any(r and r[i].plain.strip() for r in self.rows)]
        caption = self.caption or ""
        if left_out:
            caption += (("\n" if caption else "") + f"left out at {width} columns: "
                        + ", ".join(left_out) + " (a wider terminal shows them)")
        table = Table(title=self.title, caption=caption or None, caption_justify="left")
        for n, i in enumerate(shown):
            col = self.columns[i]
            table.add_column(Text(col["header"]), justify=col["justify"], overflow="fold",
                             no_wrap=col["no_wrap"], width=widths[n] if widths else None)
        for row in self.rows:
            if row is None:
                table.add_section()
            else:
                table.add_row(*(row[i] for i in shown))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table(options.max_width))


def intervals(shown: pd.DataFrame) -> pd.DataFrame:
    """Formatted columns `X low Y` and `X high Y` as one `X interval Y` column, `[low, high]`:
    one column to read instead of two, and narrower."""
    out = shown.copy()
    for col in list(out.columns):
        match = INTERVAL.fullmatch(str(col))
        high = match and f"{match[1]}high{match[2]}"
        if not match or high not in out:
            continue
        cells = ["–" if lo == "–" and hi == "–" else f"[{lo}, {hi}]"
                 for lo, hi in zip(out[col], out[high], strict=True)]
        at = list(out.columns).index(col)
        out = out.drop(columns=[col, high])
        out.insert(at, f"{match[1]}interval{match[2]}", cells)
    return out


def rich_table(df: pd.DataFrame, title: str, caption: str | None = None,
               drop: tuple[str, ...] = DROP_FIRST) -> FittedTable:
    """A DataFrame as a terminal table that fits its width (`FittedTable`), numbers formatted by
    `human`, intervals in one column, text columns left-aligned."""
    numeric = {str(c) for c in df.columns if pd.api.types.is_numeric_dtype(df[c])
               and not pd.api.types.is_bool_dtype(df[c])}
    shown = intervals(human(df))
    if "note" in shown and shown["note"].str.len().max() > NOTE_INLINE:  # long notes below
        marks = {n: f"[{i}]" for i, n in enumerate(
            dict.fromkeys(n for n in shown["note"] if n.strip()), start=1)}
        shown["note"] = shown["note"].map(lambda n: marks.get(n, n))
        caption = "\n".join([*([caption] if caption else []),
                             *(f"{m} {n}" for n, m in marks.items())])
    table = FittedTable(title, caption, drop)
    for col in map(str, shown.columns):  # intervals and ranges are numbers too
        cells = [v for v in shown[col] if v != "–"]
        number = col in numeric or bool(cells) and all(NUMBERS.fullmatch(v) for v in cells)
        table.add_column(col, justify="right" if number else "left",
                         no_wrap=col in NO_WRAP)
    for row in shown.itertuples(index=False):
        table.add_row(*row)
    return table


SUMMARY_CAPTION = ("outcomes: completed / pruned / cut by the time budget / failed; s per "
                   "replicate: training seconds the family used in each replicate; recipe "
                   "columns: the median replicate's best trial")


def summary_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """The family summary as the terminal and the report show it: outcomes in one column, the
    median best trial beside its range over replicates, optimizer, lr and batch size in one."""
    df = family_summary(trials)
    df.insert(3, "outcomes", [f"{r['completed']}/{r['pruned']}/{r['cut by budget']}/{r['failed']}"
                              for r in df.to_dict("records")])
    df = df.drop(columns=["completed", "pruned", "cut by budget", "failed", "total s"])
    if "best val acc" in df:  # the spread over replicates in one column, beside the median
        df.insert(list(df.columns).index("best val acc") + 1, "range over replicates", [
            "–" if pd.isna(r["lowest best val acc"]) else
            f"{r['lowest best val acc']:.2%} – {r['highest best val acc']:.2%}"
            for r in df.to_dict("records")])
        df = df.drop(columns=["lowest best val acc", "highest best val acc"]).rename(
            columns={"best val acc": "best val acc (median)"})
    if "optimizer" in df:  # one column, so the table fits a terminal
        df["optimizer, lr, bs"] = [
            "–" if pd.isna(r["optimizer"]) else
            f"{r['optimizer']}, {r['lr']:.2g}, {int(r['batch size'])}"
            for r in df.to_dict("records")]
        df = df.drop(columns=["optimizer", "lr", "batch size"])
    return df


def summary_table(trials: pd.DataFrame) -> FittedTable:
    """The family summary for the terminal (`summary_frame`); the low-value columns go first
    when the terminal is narrow."""
    df = summary_frame(trials)
    k = {int(n) for n in df["replicates"]} if len(df) else set()
    over = "1 replicate" if k == {1} else f"{k.pop()} replicates" if len(k) == 1 else (
        "replicates")
    return rich_table(df, f"Best trial per family on validation, median over {over} (test is "
                          "held out)", SUMMARY_CAPTION)


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
             f"one replicate: a family verdict needs REPLICATES>={REPLICATES_FOR_A_VERDICT}")
    return (f"validation, best trial per family ({scope}), best first: " + "; ".join(ranked))
