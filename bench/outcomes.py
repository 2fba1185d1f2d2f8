"""How a trial ended, and the store's tables built from Optuna's trials.

The objective records why each trial stopped (`stop_reason`); these functions read that back the
same way for the budget, the retries and the Parquet store, so they cannot disagree.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from bench import store

LOST = ("interrupted", "killed")  # trials that ended without an outcome; retried
FAILED = ("nonfinite", "oom", "error")  # trials that ended with a fault of their own
FAIL_MIN = 5  # trials of a process before "most of them failed" stops it


class StudyFailing(RuntimeError):
    """Most trials fail: the study stops instead of spending its budget on more of them."""


def counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial used up budget: it ran to an outcome (a divergence is one)."""
    return t.state.is_finished() and stop_reason(t) not in LOST


def stop_reason(t: optuna.trial.FrozenTrial) -> str:
    """The objective records why a trial stopped; a FAIL without a reason lost its process (or,
    with a database, its heartbeat went silent past the grace period and another worker took the
    trial over just after the objective recorded that it finished)."""
    if t.state == TrialState.FAIL and not t.user_attrs.get("stop_reason"):
        return "killed"
    return t.user_attrs.get("stop_reason", "")


def frames(subs: dict[tuple[int, str], optuna.Study]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Optuna trials of each (replicate, family) sub-study -> the store's trials and epochs."""
    rows, epochs = [], []
    ran = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    for (replicate, family), sub in subs.items():
        for t in sub.get_trials(deepcopy=False, states=ran):  # not the queued (WAITING) ones
            ua, hist = t.user_attrs, t.user_attrs.get("epochs", [])
            stop = stop_reason(t)
            rows.append({
                "family": family, "replicate": replicate, "number": t.number,
                "state": t.state.name,
                "arch": ua.get("arch"), "value": t.value,
                "best_val_acc": max((h["val_acc"] for h in hist), default=math.nan),
                "final_val_acc": hist[-1]["val_acc"] if hist else math.nan,
                "final_val_loss": hist[-1]["val_loss"] if hist else math.nan,
                "epochs_planned": t.params.get("epochs"), "epochs_run": len(hist),
                "pruned_at": hist[-1]["epoch"] if hist and stop in ("pruned", "budget") else None,
                "stop_reason": stop, "error": ua.get("error", ""),
                **{k: ua.get(k) for k in ("wall_seconds", "params_count", "seed", "device",
                                          "threads", "git_sha", "versions", "data_md5",
                                          "split_hash", "space_hash")},
                "datetime_start": t.datetime_start,
                "recipe": json.dumps(ua["recipe"], sort_keys=True) if "recipe" in ua else None,
                "normalization": ua.get("normalization"),
                **{f"param_{k}": v for k, v in t.params.items()},
            })
            epochs += [{"family": family, "replicate": replicate, "number": t.number, **h}
                       for h in hist]
    trials = pd.DataFrame(rows, columns=list(store.TRIAL_COLUMNS) if not rows else None)
    trials["pruned_at"] = trials["pruned_at"].astype("Int64")
    # Parameters absent from some trials (conditional ones) would turn ints into floats and
    # bools into objects; the distributions say what each column really holds.
    dists = {name: dist for sub in subs.values() for t in sub.get_trials(deepcopy=False)
             for name, dist in t.distributions.items()}
    for name, dist in dists.items():
        if isinstance(dist, optuna.distributions.IntDistribution):
            trials[f"param_{name}"] = trials[f"param_{name}"].astype("Int64")
        elif isinstance(dist, optuna.distributions.CategoricalDistribution) and all(
                isinstance(c, bool) for c in dist.choices):
            trials[f"param_{name}"] = trials[f"param_{name}"].astype("boolean")
    return trials, pd.DataFrame(epochs, columns=list(store.EPOCH_COLUMNS))


def importances(subs: dict[tuple[int, str], optuna.Study]) -> pd.DataFrame:
    """Optuna's default evaluator per (replicate, family), on completed trials' validation
    objective."""
    rows = []
    for (replicate, family), sub in subs.items():
        if len(sub.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
            continue
        try:
            with warnings.catch_warnings():  # small studies trigger accuracy warnings per param
                warnings.simplefilter("ignore")
                found = optuna.importance.get_param_importances(sub)
        except (ValueError, RuntimeError):  # e.g. no parameter varies across complete trials
            continue
        rows += [{"family": family, "replicate": replicate, "param": p, "importance": v}
                 for p, v in found.items()]
    return pd.DataFrame(rows, columns=list(store.IMPORTANCE_COLUMNS))


def check_failures(mine: list[str], out: Path) -> None:
    """Stop a process most of whose trials fail: the study's set-up is wrong, not its luck."""
    failed = Counter(r for r in mine if r in FAILED)
    n = sum(failed.values())
    if len(mine) >= FAIL_MIN and 2 * n > len(mine):
        reasons = ", ".join(f"{k} {v}" for k, v in failed.items())
        raise StudyFailing(f"{n} of the {len(mine)} trials run so far failed ({reasons}); "
                           "stopped instead of spending the rest of the budget; see "
                           f"stop_reason and error in {out}/trials.parquet")
