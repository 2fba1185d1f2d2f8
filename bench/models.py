"""Architecture registry: the one place a model is named.

Each factory takes keyword arguments and returns an `nn.Module` mapping (N, 1, 28, 28) to (N, 10).
A parametric architecture registers its search space beside its factory: `space(trial, **ranges)`
samples the factory's keyword arguments define-by-run, and a study narrows `ranges` by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

Space = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # a label for `make list` ("mlp", "cnn"); a study's families are something else
    factory: Callable[..., nn.Module]
    space: Space | None
    doc: str


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, kind: str, space: Space | None = None):
    """Decorator: register `factory` under `name`, labelled `kind` ("mlp", "cnn", ...)."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        doc = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
        _MODELS[name] = ModelEntry(name, kind, factory, space, doc)
        return factory

    return wrap


def get_model(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    return get_model(name).factory(**kwargs)


def list_models(kind: str | None = None) -> list[str]:
    return sorted(n for n, e in _MODELS.items() if kind in (None, e.kind))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _mlp(sizes: list[int], batch_norm: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """Flatten, then Linear(+BN)+ReLU(+Dropout) per hidden size, then Linear to 10 classes."""
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip([784, *sizes], sizes, strict=False):
        layers.append(nn.Linear(n_in, n_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(([784, *sizes])[-1], 10))
    return nn.Sequential(*layers)


# --- fixed architectures of the leaderboard recipes (DESIGN.md) ---------------------------------


@register_model("mlp-128-128", "mlp")
def mlp_128_128() -> nn.Module:
    """784-128-ReLU-128-ReLU-10 (recipe mlp-128-128-adam)."""
    return _mlp([128, 128])


@register_model("mlp-bn-300-100", "mlp")
def mlp_bn_300_100() -> nn.Module:
    """784-300-BN-ReLU-100-BN-ReLU-10 (recipe mlp-bn-300-100-sgd)."""
    return _mlp([300, 100], batch_norm=True)


@register_model("mlp-400-200-100", "mlp")
def mlp_400_200_100() -> nn.Module:
    """784-400-ReLU-200-ReLU-100-ReLU-10 (recipe mlp-400-200-100-sgd)."""
    return _mlp([400, 200, 100])


@register_model("mlp-64-32-softmax", "mlp")
def mlp_64_32_softmax() -> nn.Module:
    """784-64-ReLU-32-ReLU-10 then Softmax; CrossEntropy on it is the recipe's double softmax."""
    return nn.Sequential(_mlp([64, 32]), nn.Softmax(dim=1))


@register_model("mlp-64-32", "mlp")
def mlp_64_32() -> nn.Module:
    """784-64-ReLU-32-ReLU-10 logits: mlp-64-32-softmax without its softmax (the fixed variant)."""
    return _mlp([64, 32])


class _LogSoftmax(nn.Module):
    def forward(self, x):
        return x.log_softmax(dim=1)


@register_model("cnn-conv32", "cnn")
def cnn_conv32() -> nn.Module:
    """Conv(1,32,3)+ReLU+MaxPool2+Dropout2d(.25)+Linear(5408,10)+log_softmax (cnn-conv32-adam)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout2d(0.25),
        nn.Flatten(), nn.Linear(5408, 10), _LogSoftmax(),
    )


# --- reference architectures ---------------------------------------------------------------------


@register_model("lenet5", "cnn")
def lenet5() -> nn.Module:
    """LeNet-5: conv6(5, pad 2)-tanh-avgpool, conv16(5)-tanh-avgpool, 120-84-10 with tanh."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10),
    )


def _conv_block(c_in: int, c_out: int, convs: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU()]
    layers.append(nn.MaxPool2d(2))
    if dropout:
        layers.append(nn.Dropout(dropout))
    return layers


@register_model("cnn-bn", "cnn")
def cnn_bn() -> nn.Module:
    """Two blocks of 2x(conv3-BN-ReLU)+pool+dropout (32, 64 ch), then 256-BN-dropout-10."""
    return nn.Sequential(
        *_conv_block(1, 32, 2, 0.25), *_conv_block(32, 64, 2, 0.25), nn.Flatten(),
        nn.Linear(64 * 7 * 7, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, 10),
    )


# --- the classic MNIST table's fully connected nets (LeCun et al. 1998 and later rows) ----------
# ReLU hidden units: the rows do not say, so the entries list it as an assumption.


def _register_fixed_mlp(name: str, sizes: tuple[int, ...], row: str) -> None:
    def factory() -> nn.Module:
        return _mlp(list(sizes))

    shape = "-".join(map(str, (784, *sizes, 10)))
    units = "ReLU hidden units" if sizes else "no hidden layer"
    factory.__doc__ = f"{shape}, {units} ({row})."
    register_model(name, "mlp")(factory)


for _name, _sizes, _row in (
    ("linear", (), "linear classifier, 1-layer NN"),
    ("mlp-300", (300,), "2-layer NN, 300 hidden units"),
    ("mlp-1000", (1000,), "2-layer NN, 1000 hidden units"),
    ("mlp-300-100", (300, 100), "3-layer NN, 300+100 hidden units"),
    ("mlp-500-150", (500, 150), "3-layer NN, 500+150 hidden units"),
    ("mlp-800", (800,), "2-layer NN, 800 HU"),
    ("mlp-500-300", (500, 300), "3-layer NN, 500+300 HU"),
):
    _register_fixed_mlp(_name, _sizes, _row)


# --- parametric architectures whose shapes come from the trial -----------------------------------


def mlp_space(
    trial: optuna.Trial,
    depth: tuple[int, int] = (1, 3),
    width: tuple[int, int] = (64, 1024),
    dropout: tuple[float, float] = (0.0, 0.5),
    batch_norm: tuple[bool, ...] = (False, True),
) -> dict[str, Any]:
    n = trial.suggest_int("mlp.depth", *depth)
    return {
        "widths": [trial.suggest_int(f"mlp.width{i}", *width, log=True) for i in range(n)],
        "dropout": trial.suggest_float("mlp.dropout", *dropout),
        "batch_norm": trial.suggest_categorical("mlp.batch_norm", list(batch_norm)),
    }


@register_model("mlp", "mlp", space=mlp_space)
def mlp(widths: tuple[int, ...] = (256, 128), dropout: float = 0.0,
        batch_norm: bool = False) -> nn.Module:
    """Parametric MLP: one Linear(+BN)+ReLU(+dropout) per width."""
    return _mlp(list(widths), batch_norm=batch_norm, dropout=dropout)


def cnn_space(
    trial: optuna.Trial,
    blocks: tuple[int, int] = (1, 3),
    channels: tuple[int, int] = (16, 64),
    convs: tuple[int, int] = (1, 2),
    dropout: tuple[float, float] = (0.0, 0.5),
    hidden: tuple[int, int] = (64, 512),
) -> dict[str, Any]:
    return {
        "blocks": trial.suggest_int("cnn.blocks", *blocks),
        "channels": trial.suggest_int("cnn.channels", *channels, log=True),
        "convs": trial.suggest_int("cnn.convs", *convs),
        "dropout": trial.suggest_float("cnn.dropout", *dropout),
        "hidden": trial.suggest_int("cnn.hidden", *hidden, log=True),
    }


@register_model("cnn", "cnn", space=cnn_space)
def cnn(blocks: int = 2, channels: int = 32, convs: int = 2, dropout: float = 0.25,
        hidden: int = 128) -> nn.Module:
    """Parametric CNN: blocks of convs x (conv3-BN-ReLU) + pool + dropout, channels doubling."""
    if not 1 <= blocks <= 3:
        raise ValueError(f"cnn blocks={blocks} must lie in 1..3 (28 px pooled at most 3 times)")
    layers: list[nn.Module] = []
    c_in = 1
    for b in range(blocks):
        layers += _conv_block(c_in, channels * 2**b, convs, dropout)
        c_in = channels * 2**b
    side = 28 >> blocks
    return nn.Sequential(
        *layers, nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(hidden, 10),
    )
