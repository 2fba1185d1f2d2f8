"""`python -m bench ...`: the Makefile's targets call this.

Overrides come as KEY=VALUE words (the Makefile hands over `$(MAKEOVERRIDES)`), so a typo such as
`TRIAL=5` is an error rather than a silently ignored make variable.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import host, models, optim, speed, study, train
from bench.data import DataError
from bench.space import SpaceError

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


STUDY_KEYS: dict[str, Callable[[str], Any]] = {
    "NAME": str, "TRIALS": _positive_int, "TIMEOUT": _seconds, "DEVICE": _device,
    "SEED": _int, "SMOKE": _flag, "RESULTS_DIR": _nonempty,
}


def _bench_models(v: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in v.split(","))
    if not all(n in speed.CASES for n in names):
        raise ValueError(f"a comma-separated list of {', '.join(speed.CASES)}")
    return names


def _bench_rows(v: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in v.split(","))
    if not all(n in speed.PIPELINES for n in names):
        raise ValueError(f"a comma-separated list of {', '.join(speed.PIPELINES)}")
    return names


BENCH_KEYS: dict[str, Callable[[str], Any]] = {
    "DEVICE": _device, "EPOCHS": _positive_int, "QUICK": _flag, "MODELS": _bench_models,
    "ROWS": _bench_rows, "SEED": _int, "RESULTS_DIR": _nonempty,
}
BENCH_EPOCHS = 3


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
            raise UsageError(f"{key}={value!r} is not valid: expected {exc}") from None
    return out


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_study(name: str) -> study.Study:
    valid = ", ".join(study_names()) or "(none)"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name not in study_names():
        raise UsageError(f"unknown study {name!r}; valid: {valid}")
    spec = importlib.util.spec_from_file_location(f"studies.{name}", STUDIES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = getattr(module, "STUDY", None)
    if not isinstance(found, study.Study):
        raise UsageError(f"studies/{name}.py defines no STUDY = Study(...)")
    return found


def cmd_study(args: argparse.Namespace, console: Console) -> None:
    overrides = parse_overrides(args.settings, STUDY_KEYS)
    name = overrides.pop("name", None) or args.name
    if not name:
        raise UsageError(f"no study named; give NAME=..., one of: {', '.join(study_names())}")
    definition = load_study(name)
    device = train.resolve_device(overrides.pop("device", "auto"))
    cfg = study.resolve(definition, name, device, overrides)
    if device.type == "cpu":
        host.tune()
    out = study.run(definition, cfg, console)
    console.print(f"results: {out}/trials.parquet, {out}/epochs.parquet "
                  f"(Optuna journal: {out}/optuna.journal)")


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


def cmd_list(args: argparse.Namespace, console: Console) -> None:
    table = Table(title="registered models")
    for col in ("name", "family", "space", "description"):
        table.add_column(col)
    for name in models.list_models():
        e = models.get_model(name)
        table.add_row(name, e.family, "tunable" if e.space else "fixed", e.doc)
    console.print(table)
    console.print("optimizers: " + ", ".join(sorted(optim.OPTIMIZERS)))
    console.print("schedules:  " + ", ".join(sorted(optim.SCHEDULES)))
    for name in study_names():
        question = " ".join(load_study(name).question.split("\n\n")[0].split())
        console.print(f"study {name}: {question}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("study", help="run or continue a study (reads train/validation only)")
    p.add_argument("name", nargs="?", help="study file under studies/ (or NAME=...)")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help=f"overrides: {', '.join(STUDY_KEYS)}")
    p.set_defaults(func=cmd_study)
    p = sub.add_parser("bench", help="seconds per epoch: the tutorial pipeline vs the harness")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help=f"overrides: {', '.join(BENCH_KEYS)}")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("list", help="registered models, optimizers, schedules and studies")
    p.set_defaults(func=cmd_list)
    args = parser.parse_args(argv)
    if args.command == "study" and args.name and "=" in args.name:
        args.settings.insert(0, args.name)
        args.name = None
    console = Console(width=None if sys.stdout.isatty() else 120)
    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"  # one line each
    try:
        args.func(args, console)
    except (UsageError, DataError, SpaceError, ValueError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an unwritable RESULTS_DIR
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed trials are kept; rerun the same command to continue",
              file=sys.stderr)
        return 130
    return 0
