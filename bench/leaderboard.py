"""The leaderboard: its entries as data, the verdict rule, and the table it prints.

An entry is everything a published recipe's code does (model, normalisation, split, batch sizes,
shuffling, optimizer, schedule, loss, what it scores and how) plus the number it claims, in the
source's own unit, its source and where it had to deviate. Three groups: the five tutorial
recipes, written as their code runs, quirks included (DESIGN.md's table; each `-fixed` variant
changes one buggy quirk, to show what it cost); the neural-network rows of the classic MNIST table
(LeCun et al. 1998 and later rows), whose sources leave training details open, so each fixes a
modern choice and lists it under `assumptions`; and the entries `bench.promote` writes under
entries/. `bench.reproduce` runs entries over seeds; `summarize` and `markdown` make the table,
keeping the committed rows of entries that were not re-run.
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
from rich.text import Text
from scipy import special

from bench import data, models, optim, store, train
from bench.tables import FittedTable

ENTRIES_DIR = Path(__file__).resolve().parent.parent / "entries"
SPLITS = ("all", "contiguous", "stratified")
EVAL_ON = ("test", "val")
METRICS = ("accuracy", "batch_mean")
CLAIM_UNITS = ("accuracy", "error")
GROUPS = {"tutorial": "Tutorial recipes", "classic": "The classic MNIST table",
          "promoted": "Promoted from studies"}
TOLERANCE = 0.003  # the band around the mean is at least ±0.3 pp, however small the std
CONFIDENCE = 0.95  # the band is a 95% prediction interval for one more run of the recipe


def _one_hot_cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CrossEntropyLoss fed one-hot float targets, as the softmax recipe's code builds them."""
    return F.cross_entropy(out, F.one_hot(y, out.shape[1]).to(out.dtype))


def _one_hot_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error between the 10 outputs and one-hot targets, summed over outputs and averaged
    over the batch: the "mean square error" of the 1998 table's rows."""
    target = F.one_hot(y, out.shape[1]).to(out.dtype)
    return F.mse_loss(out, target, reduction="sum") / len(out)


LOSSES: dict[str, train.LossFn] = {
    "cross_entropy": F.cross_entropy,
    "nll": F.nll_loss,
    "cross_entropy_onehot": _one_hot_cross_entropy,
    "mse_onehot": _one_hot_mse,
}


@dataclass(frozen=True)
class Entry:
    """One leaderboard entry: a fixed recipe, how its code scores it, and what it claims.

    split: `all` trains on the 60k training images; `contiguous` trains on the first ones and
    validates on the last `val_size`; `stratified` is `data.train_val` (a study's split).
    claim: None, a point, or [low, high) for a number that was printed rounded; in `claim_unit`
    (`accuracy` or `error`, both fractions), the unit the source states it in.
    assumptions: details the source leaves open, fixed here by a modern choice; deviations: where
    the entry knowingly departs from what the source did.
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
    claim_unit: str = "accuracy"
    source: str = ""
    deviations: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ()
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
        d["assumptions"] = tuple(d.get("assumptions", ()))
        return cls(**d)

    @property
    def digest(self) -> str:
        """Changes when the definition does, so a stored result can tell it is stale.

        A field added later at its default (float32 `precision`, an accuracy claim, no
        assumptions) leaves it as it was.
        """
        d = self.to_dict()
        if d["recipe"].get("precision") == "fp32":
            del d["recipe"]["precision"]
        for key, default in (("claim_unit", "accuracy"), ("assumptions", ())):
            if d[key] == default:
                del d[key]
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
    _choice(e.id, "claim unit", e.claim_unit, CLAIM_UNITS)
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

TUTORIALS: tuple[Entry, ...] = (
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


# --- the classic MNIST table (yann.lecun.com/exdb/mnist), its neural-network rows --------------
# Each source row gives the network and a test error, rarely how it was trained; the 1998 nets were
# trained one example at a time with a stochastic second-order method. Every open detail is fixed
# below by a modern choice and listed as an assumption. "none" in the table's preprocessing column
# means no deskewing and no distorted training images: none are used here either.

_LECUN98 = "LeCun et al. 1998, Proc. IEEE 86(11), as listed in the table on LeCun's MNIST page"
_INPUTS = ("inputs standardised with MNIST's mean and std, Normalize(0.1307, 0.3081) (the row "
           "says only 'no preprocessing': no deskewing, no distortions)")
_INIT = "PyTorch's default initialisation (Kaiming-uniform weights and biases)"
_RELU = "ReLU hidden units (the row does not say; nets of that time used sigmoid-type units)"


_CE = "softmax cross-entropy (the row names no loss)"


def _training(r: train.Recipe) -> str:
    """The training choices, written from the recipe itself so that text and recipe agree."""
    opt = (f"SGD momentum {r.optimizer_kwargs['momentum']:g}" if r.optimizer == "sgd"
           else "Adam")
    decay = (f", L2 weight decay {r.weight_decay:g} (the row's weight decay; its value is not "
             "given)" if r.weight_decay else "")
    return (f"{opt} lr {r.lr:g}{decay}, batches of {r.batch_size} reshuffled each epoch, "
            f"{r.epochs} epochs, the lr annealed to 0 by a per-batch cosine (the source trained "
            "one example at a time with a stochastic second-order method)")


def _classic(entry_id: str, arch: str, error: float, row: str, loss: str = "cross_entropy",
             optimizer: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
             momentum: float | None = None, mlp: bool = True, open_details: tuple[str, ...] = (),
             deviations: tuple[str, ...] = ()) -> Entry:
    """One classic row: all training images, scored once on test at the end, claim in error.

    An MLP row lists the input scaling and ReLU units among its assumptions; LeNet-5's paper
    says how it did both, so there they are deviations.
    """
    kwargs = {"momentum": momentum} if momentum is not None else {}
    recipe = train.Recipe(arch, lr=lr, batch_size=128, epochs=20, optimizer=optimizer,
                          schedule="cosine", weight_decay=weight_decay, optimizer_kwargs=kwargs)
    assumptions = ((_INPUTS,) if mlp else ()) + (_INIT,) + ((_RELU,) if mlp else ()) + (
        _training(recipe), *open_details)
    return Entry(entry_id, recipe, normalization="mnist", loss=loss, eval_batch_size=128,
                 eval_every_epoch=False, claim=error, claim_unit="error", source=row,
                 assumptions=assumptions, deviations=deviations)


CLASSICS: tuple[Entry, ...] = (
    _classic("linear-lecun98", "linear", 0.12,
             f"'linear classifier (1-layer NN)', preprocessing none, 12.0% test error; {_LECUN98}",
             open_details=(_CE,)),
    _classic("mlp-300-mse-lecun98", "mlp-300", 0.047,
             "'2-layer NN, 300 hidden units, mean square error', preprocessing none, 4.7% test "
             f"error; {_LECUN98}", loss="mse_onehot",
             open_details=("squared error between the 10 linear outputs and one-hot targets, "
                           "summed over outputs (the row gives neither output squashing nor "
                           "target values)",)),
    _classic("mlp-1000-lecun98", "mlp-1000", 0.045,
             f"'2-layer NN, 1000 hidden units', preprocessing none, 4.5% test error; {_LECUN98}",
             open_details=(_CE,)),
    _classic("mlp-300-100-lecun98", "mlp-300-100", 0.0305,
             "'3-layer NN, 300+100 hidden units', preprocessing none, 3.05% test error; "
             f"{_LECUN98}", open_details=(_CE,)),
    _classic("mlp-500-150-lecun98", "mlp-500-150", 0.0295,
             "'3-layer NN, 500+150 hidden units', preprocessing none, 2.95% test error; "
             f"{_LECUN98}", open_details=(_CE,)),
    _classic("mlp-800-ce-simard03", "mlp-800", 0.016,
             "'2-layer NN, 800 HU, Cross-Entropy Loss', preprocessing none (the rows with "
             "affine or elastic distortions are separate), 1.6% test error; Simard, Steinkraus "
             "and Platt, ICDAR 2003, as listed in the table on LeCun's MNIST page"),
    _classic("mlp-500-300-hinton", "mlp-500-300", 0.0153,
             "'3-layer NN, 500+300 HU, softmax, cross entropy, weight decay', preprocessing "
             "none, 1.53% test error; Hinton, unpublished, 2005, as listed in the table on "
             "LeCun's MNIST page", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4),
    _classic("lenet5-lecun98", "lenet5", 0.0095,
             "'Convolutional net LeNet-5, [no distortions]', preprocessing none, 0.95% test "
             f"error; {_LECUN98}", mlp=False,
             open_details=("20 epochs match the paper's 20 passes, which used stochastic "
                           "diagonal Levenberg-Marquardt and a stepwise lr",),
             deviations=("C3 connects every map to all 6 S2 maps (the paper connects each to "
                         "a subset)",
                         "S2 and S4 are plain 2x2 averages (the paper's subsampling units have "
                         "a trainable coefficient and bias and a squashing function)",
                         "tanh units (the paper's squashing function is 1.7159 tanh(2x/3))",
                         "10 linear outputs with softmax cross-entropy (the paper's output is "
                         "10 Euclidean RBF units with fixed codes and its own loss)",
                         "inputs standardised with MNIST's mean and std, Normalize(0.1307, "
                         "0.3081) (the paper scaled background to -0.1 and foreground to "
                         "1.175); the 28x28 image is zero-padded to 32x32 as in the paper")),
)
RECIPES: tuple[Entry, ...] = (*TUTORIALS, *CLASSICS)


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

Claim = float | tuple[float, float] | None


def as_accuracy(claim: Claim, unit: str = "accuracy") -> Claim:
    """The claim as accuracy: an error e is 1 - e, and an error interval [lo, hi) is
    (1 - hi, 1 - lo].

    Any other unit is refused rather than read as an error: a missing unit turned into the
    string "nan" once made 97.75% measured against a 97.70% accuracy claim "better than claim".
    """
    if unit not in CLAIM_UNITS:
        raise ValueError(f"unknown claim unit {unit!r}; valid: {', '.join(CLAIM_UNITS)}")
    if claim is None or unit == "accuracy":
        return claim
    if isinstance(claim, tuple | list):
        return (1 - claim[1], 1 - claim[0])
    return 1 - claim


def band(std: float, seeds: int) -> float:
    """Half-width of the band around a mean of `seeds` runs with sample std `std`: a 95%
    prediction interval for one more run of the recipe, t·std·√(1 + 1/n) with t Student's 97.5%
    quantile on n − 1 degrees of freedom (4.30 for 3 seeds: ±4.97·std), and never under
    TOLERANCE (0.3 pp). With one seed (no std) the 0.3 pp alone sets it.

    Why t and √(1 + 1/n): a claim is one run of the recipe (a paper's number), the mean of a
    few (a promoted entry), or its exact expected accuracy; a band this wide leaves out a true
    claim of the first kind 5% of the time and of the others less often. The 2·std band used
    before left out 7% of exact claims, 13% of promoted entries' and 23% of single runs' with
    3 seeds (tests/test_leaderboard.py measures both rules).
    """
    if seeds < 2 or math.isnan(std):
        return TOLERANCE
    t = float(special.stdtrit(seeds - 1, 1 - (1 - CONFIDENCE) / 2))
    return max(t * std * math.sqrt(1 + 1 / seeds), TOLERANCE)


def verdict(mean: float, std: float, claim: Claim, unit: str = "accuracy", *,
            seeds: int) -> str:
    """Compare a measured accuracy mean ± std over `seeds` runs (fractions) with a claim, by one
    rule for both kinds of claim.

    The band is mean ± `band(std, seeds)`. A point claim is reproduced when it lies inside the
    band, an interval claim [low, high) when the band overlaps it; otherwise the measured
    accuracy is worse or better than the claim. A NaN mean (every seed diverged or was never
    scored) is "no result": no band can hold it.
    """
    claim = as_accuracy(claim, unit)
    if claim is None:
        return "no claim"
    if math.isnan(mean):
        return "no result"
    spread = band(std, seeds) + 1e-12
    interval = isinstance(claim, tuple | list)
    low, high = claim if interval else (claim, claim)
    if mean + spread < low:
        return "worse than claim"
    if mean - spread > high:
        return "better than claim"
    return "reproduced"


# --- the table: fresh runs, committed rows kept, groups sorted by error ------------------------

RECORD_FIELDS = ("entry", "group", "scored", "seeds", "mean", "std", "claim", "claim_unit",
                 "seconds_per_epoch", "device", "git_sha", "versions", "threads", "entry_hash",
                 "run_at")


def group_of(entry_id: str) -> str:
    """tutorial, classic or promoted (an id no longer defined counts as promoted)."""
    if entry_id in {e.id for e in TUTORIALS}:
        return "tutorial"
    return "classic" if entry_id in {e.id for e in CLASSICS} else "promoted"


def _claim(claim: Any) -> Claim:
    return tuple(claim) if isinstance(claim, list) else claim


def _joined(column: pd.Series) -> str:
    return ", ".join(sorted(set(column.astype(str))))


def _unit(row: pd.Series | dict[str, Any]) -> str:
    """A row's claim unit; rows written before `claim_unit` existed (a missing column, or NaN
    where `reproduce._merge` concatenated them with newer rows) claimed accuracy, the only unit
    there was then."""
    unit = row.get("claim_unit")
    return "accuracy" if unit is None or (isinstance(unit, float) and math.isnan(unit)) else (
        str(unit))


def _record(entry_id: str, got: pd.DataFrame) -> dict[str, Any]:
    """One entry's runs in leaderboard.parquet, summarised with their provenance."""
    first = got.iloc[0]
    return {
        "entry": entry_id, "group": group_of(entry_id),
        "scored": f"{first['eval_on']} ({first['metric']})", "seeds": len(got),
        "mean": float(got["acc"].mean()),
        "std": float(got["acc"].std()) if len(got) > 1 else math.nan,
        "claim": _claim(json.loads(first["claim"])),
        "claim_unit": _unit(first),
        "seconds_per_epoch": float(got["seconds_per_epoch"].mean()),
        "device": _joined(got["device"]), "git_sha": _joined(got["git_sha"]),
        "versions": _joined(got["versions"]), "threads": _joined(got["threads"]),
        "entry_hash": _joined(got["entry_hash"]),
        "run_at": str(got["datetime_start"].max()) if "datetime_start" in got else "",
    }


def summarize(rows: pd.DataFrame, entries: dict[str, Entry],
              kept: list[dict[str, Any]] = ()) -> pd.DataFrame:
    """One line per entry: tutorial, classic and promoted groups, each sorted by error.

    An entry with runs in `rows` is summarised from them; one without keeps its record from
    `kept` (the committed leaderboard.json) as it was; one with neither is 'not run' and comes
    last in its group. The verdict and the stale flag (the definition changed since the run)
    are judged now, by today's rule and definitions.
    """
    fresh = {i: _record(i, rows[rows["entry"] == i]) for i in dict.fromkeys(rows["entry"])}
    old = {r["entry"]: {**r, "claim": _claim(r["claim"]), "claim_unit": _unit(r),
                        "std": math.nan if r["std"] is None else r["std"]}
           for r in kept if r["entry"] not in fresh}
    out = []
    for entry_id in dict.fromkeys([*entries, *fresh, *old]):
        current, rec = entries.get(entry_id), fresh.get(entry_id) or old.get(entry_id)
        if rec is None:
            out.append({"entry": entry_id, "group": group_of(entry_id), "seeds": 0,
                        "claim": current.claim, "claim_unit": current.claim_unit,
                        "verdict": "not run", "kept": False, "stale": False})
            continue
        out.append({**rec, "verdict": verdict(rec["mean"], rec["std"], rec["claim"],
                                              rec["claim_unit"], seeds=int(rec["seeds"])),
                    "kept": entry_id in old,
                    "stale": current is None or rec["entry_hash"] != current.digest})
    df = pd.DataFrame(out, columns=[*RECORD_FIELDS, "verdict", "kept", "stale"])
    df["error"] = 1 - df["mean"]
    rank = df["group"].map(list(GROUPS).index)
    return df.assign(_rank=rank).sort_values(["_rank", "error"], na_position="last",
                                             kind="stable").drop(columns="_rank").reset_index(
                                                 drop=True)


def records(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows that have runs, as leaderboard.json keeps them (no std: null)."""
    ran = summary[summary["seeds"] > 0]
    return [{k: (None if k == "std" and math.isnan(r[k]) else
                 int(r[k]) if k == "seeds" else r[k]) for k in RECORD_FIELDS}
            for r in ran.to_dict("records")]


def read_committed(path: Path) -> list[dict[str, Any]]:
    """The records of a committed leaderboard.json; none when there is no such file."""
    if not path.is_file():
        return []
    try:
        found = json.loads(path.read_text())
        if not all(isinstance(r, dict) and set(RECORD_FIELDS) <= set(r) for r in found):
            raise TypeError(f"expected a list of records with {', '.join(RECORD_FIELDS)}")
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"unreadable leaderboard records {path}: {exc}") from None
    return found


def format_claim(claim: Claim, unit: str = "accuracy") -> str:
    if claim is None:
        return "none"
    if isinstance(claim, tuple | list):
        return f"[{claim[0]:.1%}, {claim[1]:.1%}) {unit}"
    return f"{claim:.2%} {unit}"


def _cells(s: pd.Series) -> list[str]:
    claim = format_claim(s["claim"], s["claim_unit"])
    if s["seeds"] == 0:
        return [s["entry"], "", "", "", "0", claim, s["verdict"], ""]
    spread = "" if math.isnan(s["std"]) else f" ± {s['std']:.2%}"
    flag = " (stale: definition changed)" if s["stale"] else ""
    error, acc = (("none", "none") if math.isnan(s["mean"])
                  else (f"{s['error']:.2%}{spread}", f"{s['mean']:.2%}{spread}"))
    return [s["entry"], s["scored"], error, acc, str(s["seeds"]), claim, s["verdict"] + flag,
            f"{s['seconds_per_epoch']:.2f}"]


HEADERS = ("entry", "scored on", "error (mean ± std)", "accuracy (mean ± std)", "seeds",
           "claim (source's unit)", "verdict", "s/epoch")
RULE = ("a claim is reproduced when it lies within mean ± max(t·std·√(1 + 1/n), 0.3 pp) of the "
        "measured accuracy, n the seeds and t Student's 97.5% quantile on n − 1 degrees of "
        "freedom (4.30 for 3 seeds, a band of ±4.97·std): a 95% prediction interval for one "
        "more run. A point claim inside that band, an interval claim [low, high) (a number "
        "printed rounded) overlapping it; otherwise the entry is worse or better than its "
        "claim. A claimed error e is the accuracy 1 − e. With one seed there is no std and the "
        "0.3 pp alone sets the band.")


def rich_table(summary: pd.DataFrame) -> FittedTable:
    """The leaderboard for the terminal, each group under its title. No number or verdict is
    cut at any width: a narrow terminal leaves out accuracy (1 − error) first, then s/epoch,
    seeds and what it was scored on (`tables.FittedTable`)."""
    table = FittedTable("Leaderboard", f"verdict: {RULE}",
                        drop=("accuracy (mean ± std)", "s/epoch", "seeds", "scored on"))
    for head in HEADERS:
        text = head in ("entry", "scored on", "claim (source's unit)", "verdict")
        table.add_column(head, justify="left" if text else "right", keep=head == "verdict",
                         no_wrap=head == "entry")  # ids stay whole and copyable
    for group, part in summary.groupby("group", sort=False):
        table.add_row(Text(GROUPS.get(group, group), style="bold"), *[""] * (len(HEADERS) - 1))
        for _, s in part.iterrows():
            table.add_row(*_cells(s))
        table.add_section()
    return table


def markdown(summary: pd.DataFrame, entries: dict[str, Entry]) -> str:
    """results/leaderboard.md: a table per group, the rule, where the numbers came from, the
    sources with their assumptions and deviations."""
    lines = ["# Leaderboard", "",
             "Each entry re-run by `make reproduce` (seeds 0..N-1), summarised by `make "
             "leaderboard`; an entry without new runs keeps its row (its numbers are kept in "
             "leaderboard.json beside this file). Error is 100% minus the recipe's own score; "
             "each claim is in the unit its source states.", ""]
    for group, title in GROUPS.items():
        part = summary[summary["group"] == group]
        if part.empty:
            continue
        lines += [f"## {title}", "", "| " + " | ".join(HEADERS) + " |",
                  "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(_cells(s)) + " |" for _, s in part.iterrows()]
        lines.append("")
    lines += [f"Verdict: {RULE}", "", "## Provenance", ""]
    ran = summary[summary["seeds"] > 0]
    keys = ["device", "git_sha", "versions", "threads"]
    for values, part in ran.groupby(keys, sort=False):
        what = "; ".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True))
        lines.append(f"- {', '.join(part['entry'])}: {what}")
    if (ran["seeds"] == 1).any():
        lines.append("- note: entries with one seed report no spread; their verdict rests on "
                     "the 0.3 pp band alone.")
    if len(ran) and ran["device"].str.startswith("cpu").all():
        lines.append("- note: every run was on CPU, so s/epoch are CPU seconds (they include the "
                     "recipe's own per-epoch scoring); `DEVICE=cuda` gives GPU timings.")
    lines += ["", "## Entries", ""]
    for entry_id in summary["entry"]:
        if (entry := entries.get(entry_id)) is None:
            continue
        lines.append(f"- **{entry_id}**: {entry.source}.")
        lines += [f"  - assumption: {a}" for a in entry.assumptions]
        lines += [f"  - deviation: {d}" for d in entry.deviations]
    return "\n".join(lines) + "\n"


def write(results_dir: Path, summary: pd.DataFrame, entries: dict[str, Entry]) -> Path:
    """leaderboard.json (the rows' numbers, read back by the next run) and leaderboard.md."""
    store.write_json(results_dir / "leaderboard.json", records(summary))
    path = results_dir / "leaderboard.md"
    text = markdown(summary, entries)
    store.atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
