"""The leaderboard: its entries as data, the verdict rule, and the table it prints.

An entry is everything a published recipe's code does (model, normalisation, split, batch sizes,
shuffling, optimizer, schedule, loss, what it scores and how) plus the accuracy it claims, its
source and where it had to deviate. The five classic recipes are written below as their code runs,
quirks included (DESIGN.md's table); each `-fixed` variant changes one buggy quirk, to show what it
cost. `bench.promote` adds a study's best finalist as a JSON file under entries/, and
`bench.reproduce` runs entries over seeds.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from rich.table import Table

from bench import data, models, optim, store, train

ENTRIES_DIR = Path(__file__).resolve().parent.parent / "entries"
SPLITS = ("all", "contiguous", "stratified")
EVAL_ON = ("test", "val")
METRICS = ("accuracy", "batch_mean")
TOLERANCE = 0.003  # a point claim within 0.3 pp of the mean is reproduced even with a tiny std


def _one_hot_cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CrossEntropyLoss fed one-hot float targets, as the softmax recipe's code builds them."""
    return F.cross_entropy(out, F.one_hot(y, out.shape[1]).to(out.dtype))


LOSSES: dict[str, train.LossFn] = {
    "cross_entropy": F.cross_entropy,
    "nll": F.nll_loss,
    "cross_entropy_onehot": _one_hot_cross_entropy,
}


@dataclass(frozen=True)
class Entry:
    """One leaderboard entry: a fixed recipe, how its code scores it, and what it claims.

    split: `all` trains on the 60k training images; `contiguous` trains on the first ones and
    validates on the last `val_size`; `stratified` is `data.train_val` (a study's split).
    claim: None, a point accuracy, or [low, high) for a number that was printed rounded.
    """

    id: str
    recipe: train.Recipe
    normalization: str
    split: str = "all"
    val_size: int = 0
    split_seed: int = 0
    shuffle: bool = True
    loss: str = "cross_entropy"
    eval_on: str = "test"
    eval_batch_size: int = 2048
    metric: str = "accuracy"
    eval_every_epoch: bool = True
    claim: float | tuple[float, float] | None = None
    source: str = ""
    deviations: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        d = dict(d)
        d["recipe"] = train.Recipe(**d["recipe"])
        if isinstance(d.get("claim"), list):
            d["claim"] = tuple(d["claim"])
        d["deviations"] = tuple(d.get("deviations", ()))
        return cls(**d)

    @property
    def digest(self) -> str:
        """Changes when the definition does, so a stored result can tell it is stale.

        A recipe field added later at its default (float32 `precision`) leaves it as it was.
        """
        d = self.to_dict()
        if d["recipe"].get("precision") == "fp32":
            del d["recipe"]["precision"]
        spec = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _choice(entry_id: str, what: str, value: object, valid) -> None:
    if value not in valid:
        raise ValueError(f"entry {entry_id}: unknown {what} {value!r}; "
                         f"valid: {', '.join(sorted(valid))}")


def check(e: Entry) -> None:
    """Raise ValueError naming the bad value and the valid choices."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", e.id):
        raise ValueError(f"entry id {e.id!r} must be letters, digits, '_', '.' or '-'")
    _choice(e.id, "model", e.recipe.arch, models.list_models())
    _choice(e.id, "optimizer", e.recipe.optimizer, optim.OPTIMIZERS)
    _choice(e.id, "schedule", e.recipe.schedule, optim.SCHEDULES)
    _choice(e.id, "normalization", e.normalization, data.NORMALIZATIONS)
    _choice(e.id, "split", e.split, SPLITS)
    _choice(e.id, "loss", e.loss, LOSSES)
    _choice(e.id, "eval_on", e.eval_on, EVAL_ON)
    _choice(e.id, "metric", e.metric, METRICS)
    _choice(e.id, "precision", e.recipe.precision, train.PRECISIONS[1:])  # resolved, not auto
    if (e.split == "all") != (e.val_size == 0) or e.val_size < 0:
        raise ValueError(f"entry {e.id}: split {e.split!r} with val_size={e.val_size}; "
                         "valid: val_size 0 for 'all', > 0 otherwise")
    if e.eval_on == "val" and e.split == "all":
        raise ValueError(f"entry {e.id}: eval_on 'val' needs a split with validation images")


# --- the five classic recipes (DESIGN.md), as their code runs -----------------------------------

_DOUBLE_SOFTMAX = ("the model ends in Softmax and CrossEntropyLoss applies log-softmax again "
                   "(double softmax): outputs are squashed and the gradients are tiny")
_BN_SCHEDULE = ("`lr *= 0.1` runs at the top of epochs 0, 5, 10 and 15, so the lr used is 1e-3, "
                "1e-4, 1e-5, 1e-6 rather than the 1e-2 the code sets")

RECIPES: tuple[Entry, ...] = (
    Entry(
        "mlp-128-128-adam",
        train.Recipe("mlp-128-128", lr=0.01, batch_size=128, epochs=7, optimizer="adam"),
        normalization="none", split="contiguous", val_size=12_000, eval_on="val",
        eval_batch_size=128,
        source="MLP recipe with Adam: ToTensor only; the first 48,000 training images train and "
               "the last 12,000 validate, each part drawn by a random sampler; reports "
               "validation accuracy and claims no number",
    ),
    Entry(
        "mlp-bn-300-100-sgd",
        train.Recipe("mlp-bn-300-100", lr=0.01, batch_size=64, epochs=20, optimizer="sgd",
                     optimizer_kwargs={"momentum": 0.5}, schedule="multistep",
                     schedule_kwargs={"at": (0, 5, 10, 15), "gamma": 0.1}),
        normalization="half", eval_batch_size=128, metric="batch_mean",
        source="batch-norm MLP recipe with SGD: Normalize(0.5, 0.5), train batches of 64 "
               "shuffled; test accuracy each epoch as the mean of per-batch accuracies (test "
               f"batch 128); claims no number; {_BN_SCHEDULE}",
    ),
    Entry(
        "mlp-bn-300-100-sgd-fixed",
        train.Recipe("mlp-bn-300-100", lr=0.01, batch_size=64, epochs=20, optimizer="sgd",
                     optimizer_kwargs={"momentum": 0.5}, schedule="multistep",
                     schedule_kwargs={"at": (5, 10, 15), "gamma": 0.1}),
        normalization="half", eval_batch_size=128, metric="batch_mean",
        source="mlp-bn-300-100-sgd with its schedule fixed: the lr starts at 1e-2 and is cut "
               "by 10 after epochs 5, 10 and 15 (1e-2, 1e-3, 1e-4, 1e-5)",
    ),
    Entry(
        "mlp-400-200-100-sgd",
        train.Recipe("mlp-400-200-100", lr=0.1, batch_size=64, epochs=20, optimizer="sgd"),
        normalization="half", eval_batch_size=128, claim=0.9770,
        source="three-hidden-layer MLP recipe with SGD: claims 97.70% test (99.9% train); its "
               "last logged epoch shows 97.75%, its best 98.28% at epoch 16",
        deviations=("`Normalize([0.5, 0.5])` has no std and fails on 1-channel images: "
                    "Normalize((0.5,), (0.5,)) is used",
                    "images are never flattened in the code: the model flattens them"),
    ),
    Entry(
        "cnn-conv32-adam",
        train.Recipe("cnn-conv32", lr=1e-3, batch_size=64, epochs=2, optimizer="adam"),
        normalization="mnist", shuffle=False, loss="nll", eval_batch_size=64,
        eval_every_epoch=False, claim=(0.975, 0.985),
        source="one-convolution CNN recipe: Adam defaults, train loader not shuffled, log_softmax "
               "and NLL, test scored once after 2 epochs; prints '98%' with {:.0f}, i.e. "
               "anywhere in [97.5, 98.5)",
    ),
    Entry(
        "mlp-64-32-softmax-sgd",
        train.Recipe("mlp-64-32-softmax", lr=0.005, batch_size=64, epochs=100, optimizer="sgd"),
        normalization="none", shuffle=False, loss="cross_entropy_onehot", eval_batch_size=64,
        source="softmax MLP recipe (its first listing; a 784-64-64-10 variant also appears): "
               "ToTensor only, train loader not shuffled, one-hot float targets, test scored "
               f"every epoch; claims no number; {_DOUBLE_SOFTMAX}",
    ),
    Entry(
        "mlp-64-32-softmax-sgd-fixed",
        train.Recipe("mlp-64-32", lr=0.005, batch_size=64, epochs=100, optimizer="sgd"),
        normalization="none", shuffle=False, loss="cross_entropy_onehot", eval_batch_size=64,
        source="mlp-64-32-softmax-sgd with the double softmax fixed: CrossEntropyLoss gets the "
               "logits; all else (order, one-hot targets, lr, epochs) unchanged",
    ),
)


def promoted(directory: Path | None = None) -> list[Entry]:
    """Entries written by `make promote`, one JSON file each."""
    found = []
    for path in sorted((directory or ENTRIES_DIR).glob("*.json")):
        try:
            entry = Entry.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ValueError(f"unreadable leaderboard entry {path}: {exc}") from None
        if entry.id != path.stem:
            raise ValueError(f"{path} holds entry {entry.id!r}; the file must be {entry.id}.json")
        found.append(entry)
    return found


def all_entries(directory: Path | None = None) -> dict[str, Entry]:
    """Every entry by id, the classic recipes first; each is checked."""
    table: dict[str, Entry] = {}
    for entry in (*RECIPES, *promoted(directory)):
        check(entry)
        if entry.id in table:
            raise ValueError(f"entry {entry.id!r} is defined twice")
        table[entry.id] = entry
    return table


# --- verdicts ---------------------------------------------------------------------------------


def verdict(mean: float, std: float, claim: float | tuple[float, float] | None) -> str:
    """Compare a measured mean ± std (fractions) with a claim.

    A point claim is reproduced when it lies within mean ± max(2·std, 0.3 pp) (one seed: std 0);
    an interval claim [low, high) when the mean lies inside it. Otherwise the mean is below or
    above the claim.
    """
    if claim is None:
        return "no claim"
    if isinstance(claim, tuple | list):
        low, high = claim
        inside, below = low <= mean < high, mean < low
    else:
        spread = max(2 * (0.0 if math.isnan(std) else std), TOLERANCE)
        inside, below = abs(mean - claim) <= spread + 1e-12, mean < claim
    if inside:
        return "reproduced"
    return "below claim" if below else "above claim"


def summarize(rows: pd.DataFrame, entries: dict[str, Entry]) -> pd.DataFrame:
    """One line per entry (defined ones in order, then any others found in `rows`)."""
    order = list(entries) + sorted(set(rows["entry"]) - set(entries))
    out = []
    for entry_id in order:
        got = rows[rows["entry"] == entry_id]
        if got.empty:
            claim = entries[entry_id].claim
            out.append({"entry": entry_id, "seeds": 0, "claim": claim, "verdict": "not run"})
            continue
        claim = json.loads(got["claim"].iloc[0])
        claim = tuple(claim) if isinstance(claim, list) else claim
        mean = got["acc"].mean()
        std = got["acc"].std() if len(got) > 1 else math.nan
        current = entries.get(entry_id)
        out.append({
            "entry": entry_id, "scored": f"{got['eval_on'].iloc[0]} ({got['metric'].iloc[0]})",
            "seeds": len(got), "mean": mean, "std": std, "claim": claim,
            "verdict": verdict(mean, std, claim),
            "seconds_per_epoch": got["seconds_per_epoch"].mean(),
            "device": ", ".join(sorted(set(got["device"]))),
            "stale": current is None or set(got["entry_hash"]) != {current.digest},
        })
    return pd.DataFrame(out)


def format_claim(claim: float | tuple[float, float] | None) -> str:
    if claim is None:
        return "none"
    if isinstance(claim, tuple | list):
        return f"[{claim[0]:.1%}, {claim[1]:.1%})"
    return f"{claim:.2%}"


def _cells(s: pd.Series) -> list[str]:
    if s["seeds"] == 0:
        return [s["entry"], "", "", "0", format_claim(s["claim"]), s["verdict"], ""]
    spread = "" if math.isnan(s["std"]) else f" ± {s['std']:.2%}"
    flag = " (stale: definition changed)" if s["stale"] else ""
    return [s["entry"], s["scored"], f"{s['mean']:.2%}{spread}", str(s["seeds"]),
            format_claim(s["claim"]), s["verdict"] + flag, f"{s['seconds_per_epoch']:.2f}"]


HEADERS = ("entry", "scored on", "accuracy (mean ± std)", "seeds", "claim", "verdict", "s/epoch")
RULE = ("a point claim is reproduced when it lies within mean ± max(2·std, 0.3 pp); an interval "
        "claim [low, high) when the mean lies inside it; otherwise the mean is below or above the "
        "claim. With one seed there is no std and the 0.3 pp tolerance alone decides.")


def rich_table(summary: pd.DataFrame) -> Table:
    table = Table(title="Leaderboard", caption=f"verdict: {RULE}")
    for head in HEADERS:
        table.add_column(head, justify="left" if head in ("entry", "verdict") else "right",
                         no_wrap=head == "entry")  # ids stay whole and copyable
    for _, s in summary.iterrows():
        table.add_row(*_cells(s))
    return table


def markdown(summary: pd.DataFrame, rows: pd.DataFrame, entries: dict[str, Entry]) -> str:
    """results/leaderboard.md: the table, the rule, where the numbers came from, the sources."""
    lines = ["# Leaderboard", "",
             "Each entry re-run by `make reproduce` (seeds 0..N-1), summarised by "
             "`make leaderboard`.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(s)) + " |" for _, s in summary.iterrows()]
    lines += ["", f"Verdict: {RULE}", "", "## Provenance", ""]
    for key in ("device", "git_sha", "versions", "threads"):
        lines.append(f"- {key}: {', '.join(sorted(set(rows[key].astype(str))))}")
    if (summary["seeds"] == 1).any():
        lines.append("- note: entries with one seed report no spread; their verdict rests on "
                     "the 0.3 pp tolerance alone.")
    if rows["device"].str.startswith("cpu").all():
        lines.append("- note: every run was on CPU, so s/epoch are CPU seconds (they include the "
                     "recipe's own per-epoch scoring); `DEVICE=cuda` gives GPU timings.")
    lines += ["", "## Entries", ""]
    for entry_id, entry in entries.items():
        lines.append(f"- **{entry_id}**: {entry.source}.")
        lines += [f"  - deviation: {d}" for d in entry.deviations]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str) -> None:
    store.atomic_write(path, lambda tmp: tmp.write_text(text))
