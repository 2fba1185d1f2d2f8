"""`python -m bench ...`: the Makefile's targets call this.

Overrides come as KEY=VALUE words (the Makefile hands over `$(MAKEOVERRIDES)`), so a typo such as
`TRIAL=5` is an error rather than a silently ignored make variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import (
    finalists,
    host,
    leaderboard,
    models,
    optim,
    outcomes,
    promote,
    report,
    reproduce,
    soak,
    speed,
    storage,
    store,
    study,
    throughput,
    train,
)
from bench.data import DataError
from bench.space import Space, SpaceError

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
MAKE_ONLY = {"PYTHON", "MNIST_DIR"}  # make-level variables: the Makefile acts on them


class UsageError(ValueError):
    """Bad command-line input; the message is the one line users see."""


def _positive_int(v: str) -> int:
    if not re.fullmatch(r"\d+", v) or int(v) <= 0:
        raise ValueError("a positive integer")
    return int(v)


def _seconds(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise ValueError("a number of seconds (0 = no limit)") from None
    if not f >= 0:
        raise ValueError("a number of seconds (0 = no limit)")
    return f


def _int(v: str) -> int:
    if not re.fullmatch(r"-?\d+", v):
        raise ValueError("an integer")
    return int(v)


def _flag(v: str) -> bool:
    if v not in ("0", "1"):
        raise ValueError("0 or 1")
    return v == "1"


def _nonempty(v: str) -> str:
    if not v.strip():
        raise ValueError("a non-empty path")
    return v


def _device(v: str) -> str:
    if v not in train.DEVICES:
        raise ValueError(" or ".join(train.DEVICES))
    return v


def _precision(v: str) -> str:
    if v not in train.PRECISIONS:
        raise ValueError(" or ".join(train.PRECISIONS))
    return v


def _sampler(v: str) -> str:
    if v not in study.SAMPLERS:
        raise ValueError(" or ".join(study.SAMPLERS))
    return v


STUDY_KEYS: dict[str, Callable[[str], Any]] = {
    "NAME": str, "TRIALS": _positive_int, "TIMEOUT": _seconds, "DEVICE": _device,
    "SEED": _int, "SMOKE": _flag, "RESULTS_DIR": _nonempty, "WORKERS": _positive_int,
    "STORAGE": storage.check_url, "PRECISION": _precision, "FAST": _flag,
    "REPLICATES": _positive_int, "SAMPLER": _sampler,
}
# A worker joins a study that exists and takes its settings (study.RUN_KEYS: trials, timeout,
# device, seed, precision, ...) from the storage; only where to find it, and how many processes
# to add, are its own.
WORKER_KEYS: dict[str, Callable[[str], Any]] = {
    "NAME": str, "STORAGE": storage.check_url, "WORKERS": _positive_int, "SMOKE": _flag,
    "RESULTS_DIR": _nonempty,
}


def _names_in(choices: dict) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list of keys of `choices`."""
    def parse(v: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in v.split(","))
        if not all(n in choices for n in names):
            raise ValueError(f"a comma-separated list of {', '.join(choices)}")
        return names
    return parse


BENCH_KEYS: dict[str, Callable[[str], Any]] = {
    "DEVICE": _device, "EPOCHS": _positive_int, "QUICK": _flag,
    "MODELS": _names_in(speed.CASES), "ROWS": _names_in(speed.PIPELINES), "SEED": _int,
    "RESULTS_DIR": _nonempty,
}
BENCH_EPOCHS = 3


def _worker_counts(v: str) -> tuple[int, ...]:
    try:
        counts = tuple(_positive_int(n.strip()) for n in v.split(","))
    except ValueError:
        raise ValueError("a comma-separated list of positive integers") from None
    return counts


BENCH_STUDY_KEYS: dict[str, Callable[[str], Any]] = {
    "NAME": str, "TRIALS": _positive_int, "WORKERS": _worker_counts, "DEVICE": _device,
    "SEED": _int, "SMOKE": _flag, "RESULTS_DIR": _nonempty,
}
BENCH_STUDY_TRIALS = 20
FINALIZE_KEYS: dict[str, Callable[[str], Any]] = {
    "NAME": str, "K": _positive_int, "SEEDS": _positive_int, "DEVICE": _device,
    "REFRESH": _flag, "SMOKE": _flag, "RESULTS_DIR": _nonempty,
}
REPORT_KEYS: dict[str, Callable[[str], Any]] = {
    "NAME": str, "SMOKE": _flag, "RESULTS_DIR": _nonempty,
}
REPRODUCE_KEYS: dict[str, Callable[[str], Any]] = {
    "ENTRY": str, "N_SEEDS": _positive_int, "DEVICE": _device, "SAVE": _flag,
    "THREADS": _positive_int, "RESULTS_DIR": _nonempty,
}


def _minutes(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise ValueError("a number of minutes > 0") from None
    if not 0 < f < math.inf:
        raise ValueError("a number of minutes > 0")
    return f


SOAK_KEYS: dict[str, Callable[[str], Any]] = {
    "STORAGE": storage.check_url, "MINUTES": _minutes, "WORKERS": _positive_int, "SEED": _int,
    "RESULTS_DIR": _nonempty,
}
SOAK_MINUTES, SOAK_WORKERS = 5.0, 4
PROMOTE_KEYS: dict[str, Callable[[str], Any]] = {"NAME": str, "RESULTS_DIR": _nonempty}
LEADERBOARD_KEYS: dict[str, Callable[[str], Any]] = {"RESULTS_DIR": _nonempty}


def parse_overrides(words: list[str], keys: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    """KEY=VALUE words -> {key: typed value}; unknown keys and bad values raise UsageError."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise UsageError(f"expected KEY=VALUE, got {word!r}; keys: {', '.join(keys)}")
        if key in MAKE_ONLY:
            continue
        if key not in keys:
            raise UsageError(f"unknown setting {key!r}; valid: {', '.join(keys)}")
        try:
            out[key.lower()] = keys[key](value)
        except ValueError as exc:
            shown = storage.masked(value)  # a storage password is never printed
            raise UsageError(f"{key}={shown!r} is not valid: expected {exc}") from None
    return out


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.py") if not p.stem.startswith("_"))


_DECLARED = {"Study": study.Study, "Space": Space}  # what study files construct by keyword


def _line_in(path: Path, exc: Exception) -> int | str:
    """The line of `path` where `exc` arose: the user's line, not the library's that raised."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        return exc.lineno or "?"
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return lines[-1] if lines else "?"


def _one_line(exc: Exception) -> str:
    """`Type: message` on one line; an unknown keyword of Study or Space gets the valid ones."""
    msg = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    msg = msg.splitlines()[0] if msg.strip() else ""
    known = re.match(r"(\w+)\.__init__\(\) got an unexpected keyword argument", msg)
    if isinstance(exc, TypeError) and known and known[1] in _DECLARED:
        msg += "; valid: " + ", ".join(f.name for f in dataclasses.fields(_DECLARED[known[1]]))
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def load_study(name: str) -> study.Study:
    valid = ", ".join(study_names()) or "(none)"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name not in study_names():
        raise UsageError(f"unknown study {name!r}; valid: {valid}")
    path = STUDIES_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"studies.{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a study file is user code: its mistake is one line, not a trace
        raise UsageError(f"studies/{name}.py:{_line_in(path, exc)}: {_one_line(exc)}") from None
    found = getattr(module, "STUDY", None)
    if not isinstance(found, study.Study):
        raise UsageError(f"studies/{name}.py defines no STUDY = Study(...)")
    study.check(found, f"studies/{name}.py: ")  # both devices' families, whichever runs now
    return found


def _named(args: argparse.Namespace, keys: dict[str, Callable[[str], Any]]) -> tuple:
    """(study name, its definition, the remaining typed overrides) of a command line."""
    overrides = parse_overrides(args.settings, keys)
    name = overrides.pop("name", None) or args.name
    if not name:
        raise UsageError(f"no study named; give NAME=..., one of: {', '.join(study_names())}")
    return name, load_study(name), overrides


def _folder(name: str, overrides: dict, command: str = "") -> Path:
    """The study's results folder; without SMOKE=1 but beside a smoke run's, the error points
    there rather than at `make study`, which would start the full study."""
    results_dir = Path(overrides.get("results_dir", "results"))
    out = study.results_folder(results_dir, name, overrides.get("smoke", False))
    if not (out / "trials.parquet").is_file():
        smoke = study.results_folder(results_dir, name, True)
        if command and not overrides.get("smoke") and (smoke / "trials.parquet").is_file():
            where = f" RESULTS_DIR={results_dir}" if "results_dir" in overrides else ""
            raise UsageError(f"no study results in {out}, but a smoke run's in {smoke}: "
                             f"`make {command} NAME={name} SMOKE=1{where}` uses them "
                             f"(`make study NAME={name}` runs the full study)")
        raise UsageError(f"no study results in {out}; run `make study NAME={name}` first")
    return out


def _smoke_line(console: Console, smoke: bool) -> None:
    """A smoke command says so last, where the eye lands: its numbers are not findings."""
    if smoke:
        console.print(report.SMOKE_LINE, markup=False, style="bold")


def cmd_study(args: argparse.Namespace, console: Console) -> None:
    name, definition, overrides = _named(args, STUDY_KEYS)
    device = train.resolve_device(overrides.pop("device", "auto"))
    cfg = study.resolve(definition, name, device, overrides)
    if device.type == "cpu":
        host.tune()
    out = study.run(definition, cfg, console)
    page = report.build(out, name)
    where = storage.masked(cfg.storage) if cfg.storage else f"{out}/optuna.journal"
    console.print(f"results: {out}/trials.parquet, {out}/epochs.parquet (Optuna storage: "
                  f"{where})", markup=False)
    held_out = "" if (out / "finalists.parquet").is_file() else " (validation only)"
    console.print(f"report{held_out}: {page}", markup=False)
    _smoke_line(console, cfg.smoke)


def cmd_worker(args: argparse.Namespace, console: Console) -> None:
    name, definition, overrides = _named(args, WORKER_KEYS)
    host.tune(threads=False)  # the allocator setting; threads come from the study's share
    out = study.join(definition, name, overrides, console)
    console.print(f"worker done; this machine's copy of the store: {out}/trials.parquet",
                  markup=False)
    _smoke_line(console, overrides.get("smoke", False))


def cmd_finalize(args: argparse.Namespace, console: Console) -> None:
    name, definition, overrides = _named(args, FINALIZE_KEYS)
    out = _folder(name, overrides, "finalize")
    device = train.resolve_device(overrides.get("device", "auto"))
    if device.type == "cpu":
        host.tune()  # as `make study` trains: threads and the allocator setting
    scored = finalists.finalize(definition, out, device, overrides.get("k", finalists.K),
                                overrides.get("seeds", finalists.SEEDS),
                                overrides.get("refresh", False), console)
    if note := report.selection_note(store.read(out, "trials"), scored):
        console.print(note, markup=False)
    console.print(f"finalists: {out}/finalists.parquet; test reads logged in "
                  f"{out}/test_access.jsonl", markup=False)
    console.print(f"report: {report.build(out, name)}", markup=False)
    _smoke_line(console, overrides.get("smoke", False))


def cmd_report(args: argparse.Namespace, console: Console) -> None:
    name, _, overrides = _named(args, REPORT_KEYS)
    start = time.perf_counter()
    page = report.build(_folder(name, overrides, "report"), name)
    console.print(f"report: {page} ({page.stat().st_size / 1e6:.1f} MB, "
                  f"{time.perf_counter() - start:.1f} s)", markup=False)
    _smoke_line(console, overrides.get("smoke", False))


def cmd_reproduce(args: argparse.Namespace, console: Console) -> None:
    overrides = parse_overrides(args.settings, REPRODUCE_KEYS)
    entries = leaderboard.all_entries()
    wanted = overrides.get("entry")
    if wanted and wanted not in entries:
        raise UsageError(f"unknown entry {wanted!r}; valid: {', '.join(entries)}")
    device = train.resolve_device(overrides.get("device", "auto"))
    # One thread by default on CPU: batches of 64 are too small for intra-op parallelism to pay,
    # and on a busy machine two threads can wait on each other for far longer than they save.
    threads = overrides.get("threads", 1 if device.type == "cpu" else None)
    if device.type == "cpu":
        host.tune(threads=False)  # the allocator setting; threads are set just above
    results_dir = Path(overrides.get("results_dir", "results"))
    chosen = [entries[wanted]] if wanted else list(entries.values())
    rows = reproduce.reproduce(chosen, overrides.get("n_seeds", 3), device, results_dir,
                               overrides.get("save", False), console, threads)
    console.print(leaderboard.rich_table(
        leaderboard.summarize(rows, {e.id: e for e in chosen})))
    console.print(f"results: {results_dir}/leaderboard.parquet (make leaderboard shows all "
                  f"entries and writes {results_dir}/leaderboard.md)")


def cmd_promote(args: argparse.Namespace, console: Console) -> None:
    name, _, overrides = _named(args, PROMOTE_KEYS)
    entry = promote.promote(name, Path(overrides.get("results_dir", "results")))
    console.print(f"promoted {entry.id} ({entry.source}) to entries/{entry.id}.json; "
                  f"commit it, then: make reproduce ENTRY={entry.id}")


def cmd_leaderboard(args: argparse.Namespace, console: Console) -> None:
    """Rows of entries re-run in leaderboard.parquet replace theirs; every other entry keeps its
    committed row (leaderboard.json), so a one-entry reproduce never wipes the table."""
    results_dir = Path(parse_overrides(args.settings, LEADERBOARD_KEYS).get("results_dir",
                                                                            "results"))
    entries = leaderboard.all_entries()
    rows = reproduce.read_rows(results_dir)
    md, committed = results_dir / "leaderboard.md", results_dir / "leaderboard.json"
    summary = leaderboard.summarize(rows, entries, leaderboard.read_committed(committed))
    missing = summary.loc[summary["seeds"] == 0, "entry"].tolist()
    if md.is_file() and not committed.is_file() and missing:
        raise UsageError(f"{md} has no {committed.name} beside it to keep its rows from, and "
                         f"{len(missing)} entries have no run in {results_dir}/leaderboard."
                         f"parquet ({', '.join(missing)}); reproduce them or move {md} away")
    console.print(leaderboard.rich_table(summary))
    ran, kept = summary["seeds"] > 0, summary["kept"].astype(bool)
    for what, pick in (("updated from leaderboard.parquet", ran & ~kept),
                       ("kept as committed", kept), ("not run", ~ran)):
        if pick.any():
            console.print(f"{what}: {', '.join(summary.loc[pick, 'entry'])}", markup=False)
    console.print(f"written: {leaderboard.write(results_dir, summary, entries)} and "
                  f"{committed}", markup=False)


def cmd_bench(args: argparse.Namespace, console: Console) -> None:
    o = parse_overrides(args.settings, BENCH_KEYS)
    if o.get("quick") and "epochs" in o:
        raise UsageError("QUICK=1 means EPOCHS=1; give one of them")
    cfg = speed.Config(device=o.get("device", "auto"),
                       epochs=1 if o.get("quick") else o.get("epochs", BENCH_EPOCHS),
                       models=o.get("models", tuple(speed.CASES)),
                       rows=o.get("rows", speed.ROWS), seed=o.get("seed", 0),
                       results_dir=Path(o.get("results_dir", "results")))
    device = train.resolve_device(cfg.device)  # a bad DEVICE stops here, before any data
    console.print(f"bench: {', '.join(cfg.models)} on {device.type}, {cfg.epochs} epoch(s), "
                  f"rows {', '.join(cfg.rows)}; one process per row")
    path = speed.run(cfg, console)
    console.print(f"results: {path}")


def cmd_bench_study(args: argparse.Namespace, console: Console) -> None:
    name, _, o = _named(args, BENCH_STUDY_KEYS)
    device = train.resolve_device(o.get("device", "auto"))
    default = study.default_workers(device)
    cfg = throughput.Config(name=name, trials=o.get("trials", BENCH_STUDY_TRIALS),
                            workers=o.get("workers", (1, default if default > 1 else 2)),
                            device=device.type, seed=o.get("seed", 0),
                            smoke=o.get("smoke", False),
                            results_dir=Path(o.get("results_dir", "results")))
    console.print(f"bench-study: {name}, {cfg.trials} trials on {device.type} with WORKERS="
                  f"{', '.join(map(str, cfg.workers))}, one study command each")
    console.print(f"results: {throughput.run(cfg, console)}")


def cmd_soak(args: argparse.Namespace, console: Console) -> None:
    o = parse_overrides(args.settings, SOAK_KEYS)
    cfg = soak.Config(storage=o.get("storage"), minutes=o.get("minutes", SOAK_MINUTES),
                      workers=o.get("workers", SOAK_WORKERS), seed=o.get("seed", 0),
                      results_dir=Path(o.get("results_dir", "results")))
    console.print(f"soak passed: {soak.run(cfg, console)}/soak.json", markup=False)


def cmd_list(args: argparse.Namespace, console: Console) -> None:
    from bench import reference  # docs/knobs.md's knobs, a study file's own models too

    # The studies load first: a study file may register a model of its own (@register_model).
    questions = {name: " ".join(load_study(name).question.split("\n\n")[0].split())
                 for name in study_names()}
    table = Table(title="registered models")
    for col in ("name", "kind", "space", "description"):
        table.add_column(col)
    for name in models.list_models():
        e = models.get_model(name)
        table.add_row(name, e.kind, "tunable" if e.space else "fixed", e.doc)
    console.print(table)
    console.print("optimizers: " + ", ".join(sorted(optim.OPTIMIZERS)))
    console.print("schedules:  " + ", ".join(sorted(optim.SCHEDULES)))
    console.print("knobs a study may narrow, default ranges (all defaults: docs/knobs.md):")
    for line in reference.knob_lines():
        console.print(f"  {line}", markup=False)
    console.print("leaderboard entries: " + ", ".join(leaderboard.all_entries()))
    for name, question in questions.items():
        console.print(f"study {name}: {question}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (  # name, function, settings, help, whether a study name may come first
        ("study", cmd_study, STUDY_KEYS, "run or continue a study (reads train/validation only)",
         True),
        ("finalize", cmd_finalize, FINALIZE_KEYS,
         "retrain the validation-chosen finalists over seeds and score them once on test", True),
        ("report", cmd_report, REPORT_KEYS, "render results/<name>/report.html from the store",
         True),
        ("worker", cmd_worker, WORKER_KEYS,
         "add a worker process to a study that exists (this machine or STORAGE=postgresql://)",
         True),
        ("promote", cmd_promote, PROMOTE_KEYS, "make a study's best finalist an entry", True),
        ("reproduce", cmd_reproduce, REPRODUCE_KEYS, "re-run leaderboard entries over seeds",
         False),
        ("leaderboard", cmd_leaderboard, LEADERBOARD_KEYS,
         "print the leaderboard and write results/leaderboard.md", False),
        ("bench", cmd_bench, BENCH_KEYS,
         "seconds per epoch: the tutorial pipeline vs the harness", False),
        ("bench-study", cmd_bench_study, BENCH_STUDY_KEYS,
         "trials per minute of a study with 1 and with several workers", True),
        ("soak", cmd_soak, SOAK_KEYS,
         "kill a smoke study's processes at random for minutes, then check nothing was lost",
         False),
    )
    for command, func, keys, text, named in commands:
        p = sub.add_parser(command, help=text)
        if named:
            p.add_argument("name", nargs="?", help="study file under studies/ (or NAME=...)")
        p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                       help=f"settings: {', '.join(keys)}")
        p.set_defaults(func=func)
    p = sub.add_parser("list", help="registered models, optimizers, schedules and studies")
    p.set_defaults(func=cmd_list)
    args = parser.parse_args(argv)
    if getattr(args, "name", None) and "=" in args.name:
        args.settings.insert(0, args.name)
        args.name = None
    # A terminal's own width, or COLUMNS=; 120 when piped (a log file), where rich would say 80.
    columns = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    console = Console(width=None if columns else 120)
    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"  # one line each
    try:
        args.func(args, console)
    except (UsageError, DataError, SpaceError, ValueError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except (outcomes.StudyFailing, soak.SoakFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. an unwritable RESULTS_DIR
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed trials are kept; rerun the same command to continue",
              file=sys.stderr)
        return 130
    return 0
