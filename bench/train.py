"""Pure training and evaluation: no Optuna, no files.

`fit` takes a model, an optimizer, a per-step schedule, tensors already on the device and a
callback `on_epoch(epoch, metrics) -> bool` (epochs count from 1, so an epoch number is
also the resource a pruner sees); returning True stops training after that epoch.
Batches are drawn by index from a seeded per-epoch permutation of tensors that live on the device,
so no DataLoader or per-sample transform runs in the loop, and the host syncs once per epoch.
On CUDA each training step is a captured CUDA graph (`bench.fast`); `fast=False` / `graph=False`
keep the plain eager loop. A recipe's `precision` "bf16" runs forward and loss under bf16 autocast
(weights, gradients and optimizer state stay float32); evaluation is always float32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench import fast as graphs
from bench import models, optim
from bench.data import Split

OnEpoch = Callable[[int, dict[str, float]], bool]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", *graphs.PRECISIONS)


class NonFiniteLoss(RuntimeError):
    """Training diverged: the mean train loss of an epoch was NaN or infinite."""


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one training run besides data and seed."""

    arch: str
    lr: float
    batch_size: int
    epochs: int
    optimizer: str = "adam"
    schedule: str = "constant"
    weight_decay: float = 0.0
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # "bf16": mixed-precision training (autocast); published recipes: fp32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; valid: auto, cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX-512 BF16, AMX or the like)."""
    try:
        return (torch.backends.mkldnn.is_available()
                and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):  # a torch build without that check
        return False


# Model kinds (`models.ModelEntry.kind`) that bf16 autocast made slower on a CPU that has bf16:
# on a 2-core Xeon with AMX, one thread, mlp-400-200-100 took 1.51 s/epoch in bf16 against 1.42
# in float32, while cnn-conv32 took 4.59 against 5.63 (issue 21). An MLP's matmuls are too small
# for the casts around them to pay.
BF16_SLOWER_KINDS = frozenset({"mlp"})


def resolve_precision(name: str, device: torch.device, kind: str | None = None) -> str:
    """`auto`: bf16 on a CPU that computes it natively, where `make bench` measured it faster at
    the same accuracy (README Performance); float32 elsewhere, CUDA included until measured there,
    and for a model of a kind in BF16_SLOWER_KINDS. Without a `kind` (a run whose trials mix
    kinds) a bf16 CPU gets bf16, as for the convolutions that gain from it.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    if name == "auto":
        faster = device.type == "cpu" and cpu_has_bf16() and kind not in BF16_SLOWER_KINDS
        return "bf16" if faster else "fp32"
    return name


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # seeds CPU and every CUDA device


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def wants_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Convolutions on a CPU: channels-last trained every conv model faster there (README)."""
    return device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _channels_last_grad(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple:
    return tuple(g.contiguous(memory_format=torch.channels_last) if g is not None and g.dim() == 4
                 else g for g in grad_input)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Channels-last weights, and gradients that stay channels-last through each `nn.Flatten`.

    Flatten's backward returns an NCHW gradient, and every layer before it would then convert
    layouts on each step: in cnn-conv32 the max-pool backward copied its 26x26x32 input twice,
    a third of the step on one core. Converting the small gradient at the Flatten instead made
    that step 1.5x faster (README Performance).
    """
    for m in model.modules():
        if isinstance(m, nn.Flatten):
            m.register_full_backward_hook(_channels_last_grad)
    return model.to(memory_format=torch.channels_last)


def build(recipe: Recipe, n_train: int, device: torch.device, fast: bool = True):
    """Model, optimizer and per-step schedule for `recipe` on `device`.

    `fast` applies the measured speed-ups of a CPU: channels-last convolutional models (README
    Performance). CUDA graphs are `fit`'s choice, and `bench.fast` sets the optimizer's capture
    flags only when it captures.
    """
    model = models.create_model(recipe.arch, **recipe.arch_kwargs).to(device)
    if fast and wants_channels_last(model, device):
        model = to_channels_last(model)
    opt = optim.create_optimizer(recipe.optimizer, model.parameters(), recipe.lr,
                                 recipe.weight_decay, **recipe.optimizer_kwargs)
    per_epoch = steps_per_epoch(n_train, recipe.batch_size)
    sched = optim.create_schedule(recipe.schedule, opt, per_epoch * recipe.epochs, per_epoch,
                                  **recipe.schedule_kwargs)
    return model, opt, sched


# Evaluation batch per device: CUDA wants few launches; a CPU wants activations that stay in cache
# (cnn-conv32 over 10k images on one core of a 2-core EPYC: 1.27 s at 2048, 0.27 s at 128).
EVAL_BATCH = {"cpu": 128, "cuda": 2048}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and summed cross-entropy over (x, y) in eval mode, without a host sync."""
    batch_size = batch_size or EVAL_BATCH.get(x.device.type, 2048)
    model.eval()
    loss = torch.zeros((), device=x.device)
    preds = []
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        loss += F.cross_entropy(out, y[i:i + batch_size], reduction="sum")
        preds.append(out.argmax(1))
    return torch.cat(preds), loss


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None,
             batch_mean: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all of (x, y), in eval mode.

    `batch_mean` returns the mean of per-batch accuracies instead, as some published recipes
    compute it: a short last batch then weighs as much as a full one, so `batch_size` matters.
    """
    batch_size = batch_size or EVAL_BATCH.get(x.device.type, 2048)
    preds, loss = predict(model, x, y, batch_size)
    hits = (preds == y).float()
    acc = torch.stack([h.mean() for h in hits.split(batch_size)]).mean() if batch_mean else (
        hits.mean())
    return loss.item() / len(x), acc.item()


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    data: Split,
    batch_size: int,
    epochs: int,
    seed: int,
    on_epoch: OnEpoch | None = None,
    graph: bool | None = None,
    shuffle: bool = True,
    loss_fn: LossFn = F.cross_entropy,
    precision: str = "fp32",
) -> list[dict[str, float]]:
    """Train for up to `epochs`; returns one metrics dict per epoch run.

    The last batch of an epoch is the partial remainder, so every image is seen once per epoch.
    `shuffle=False` keeps the stored order, and `loss_fn(outputs, labels)` replaces
    cross-entropy, so fixed published recipes run as their code does. A split without validation
    images skips validation (its metrics are NaN); the callback can score what it likes.
    Raises NonFiniteLoss when an epoch's loss is NaN/inf (the callback still sees that epoch).
    `graph`: None captures each step as a CUDA graph on CUDA and trains eagerly elsewhere; True
    runs the graph's static step functions (uncaptured off CUDA: how tests check them); False is
    the eager loop. A failed capture warns once and trains eagerly. `precision`: "fp32" or "bf16"
    (autocast around forward and loss).
    """
    gen = torch.Generator(device=data.x_train.device).manual_seed(seed)
    n = len(data.x_train)
    # A recipe's own loss trains eagerly unless asked (`graph=True` captures it too): it may sync.
    use_graph = data.x_train.is_cuda and loss_fn is F.cross_entropy if graph is None else graph
    began = time.perf_counter()  # the first epoch's time includes the graph capture
    graphed = (graphs.prepare(model, optimizer, schedule, data, batch_size, epochs, precision,
                              loss_fn) if use_graph else None)
    cast = graphs.autocast(precision, data.x_train.device)  # one context, entered per step
    history = []
    for epoch in range(1, epochs + 1):
        start = began if epoch == 1 else time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        total = torch.zeros((), device=data.x_train.device)
        order = (torch.randperm(n, generator=gen, device=data.x_train.device) if shuffle
                 else torch.arange(n, device=data.x_train.device))
        if graphed:
            lr, total = graphed.epoch(order)
        else:
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]  # index_select: 3x faster than x[idx] on a CPU
                with cast:
                    loss = loss_fn(model(data.x_train.index_select(0, idx)),
                                   data.y_train.index_select(0, idx))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach() * len(idx)
        train_loss = total.item() / n
        val_loss, val_acc = (evaluate(model, data.x_val, data.y_val) if len(data.x_val)
                             else (math.nan, math.nan))
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "val_acc": val_acc, "lr": lr, "seconds": time.perf_counter() - start}
        history.append(metrics)
        stop = on_epoch(epoch, metrics) if on_epoch else False
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"train loss {train_loss} at epoch {epoch}")
        if stop:
            break
    return history
