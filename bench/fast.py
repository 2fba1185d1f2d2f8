"""Training steps captured as CUDA graphs: forward, loss, backward, optimizer step and the lr.

Why: a small MNIST model's arithmetic takes microseconds a step, so an eager loop is bound by
Python and kernel launches (dozens per step). A captured step is launched as one graph, and the
host does nothing else per batch. Everything a step reads stays at a fixed address: the images and
labels (already on the device), the epoch's permutation, a batch cursor, a step counter and the
learning rate of each step of the epoch. The schedule is evaluated on the host once per epoch for
that epoch's steps (the same float values eager training would set) and copied to the device in
one transfer; each replay picks its step's lr with the device-side counter, so the optimizer's
kernels read a tensor lr (`optim.create_optimizer(graph_safe=True)` makes them able to).

The last batch of an epoch (n % batch_size images) has a shape of its own and a graph of its own,
so every image is seen once per epoch with the exact gradient eager training takes: no padding,
no mask. Capture needs warm-up steps first (they create the optimizer state and the libraries'
workspaces); they change parameters, buffers, optimizer state and the CPU random state, so all of
them are restored afterwards and graphed training starts where eager training starts. Restoring
optimizer state means zeroing it, which is every registered optimizer's fresh state (SGD's first
momentum buffer is the gradient itself, i.e. momentum * 0 + gradient).

Off CUDA the same step functions run uncaptured, with the lr handed to the optimizer as a Python
float; that is how the tests check them against eager `train.fit` bit for bit on a CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.data import Split

PRECISIONS = ("fp32", "bf16")  # what a training step runs in (train.resolve_precision picks)
WARMUP_STEPS = 3  # per step shape, before capture (the PyTorch CUDA-graph notes use 3)


class CaptureFailed(RuntimeWarning):
    """Capturing a training step failed; training goes on eagerly from the same start."""


@dataclass
class _Buffers:
    """Device tensors every captured step reads or updates in place."""

    order: torch.Tensor  # the epoch's permutation of the training images
    cursor: torch.Tensor  # (1,) int64: position of the next batch in `order`
    step: torch.Tensor  # (1,) int64: step within the epoch, indexes `rates`
    rates: torch.Tensor  # (steps per epoch, param groups): each step's learning rates
    lrs: list[torch.Tensor]  # one 0-d lr per param group, read by the optimizer's kernels
    total: torch.Tensor  # sum of the epoch's per-image training losses


@contextmanager
def _optimizer_reads(optimizer: torch.optim.Optimizer, lrs: list[torch.Tensor]) -> Iterator[None]:
    """Hand the optimizer the lr tensors for one `step()`; its groups keep their floats otherwise.

    A captured step records the tensors' addresses, so the schedule can keep working on floats
    between replays. Off CUDA nothing is captured and the optimizer gets each tensor's value.
    """
    saved = [g["lr"] for g in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr if lr.is_cuda else lr.item()
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved, strict=True):
            group["lr"] = lr


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """Forward and loss of a training step in `precision` ("fp32" or "bf16"); the weight casts
    are not cached, so a captured graph re-reads the weights the optimizer updates in place."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=False)


def _step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, data: Split, buf: _Buffers,
             size: int, precision: str) -> Callable[[], None]:
    """One training step on the `size` images at the cursor: the body each graph captures."""
    offsets = torch.arange(size, device=buf.order.device)
    cast = autocast(precision, data.x_train.device)

    def step() -> None:
        idx = buf.order.index_select(0, buf.cursor + offsets)
        rates = buf.rates.index_select(0, buf.step)[0]
        for j, lr in enumerate(buf.lrs):
            lr.copy_(rates[j])
        buf.cursor.add_(size)
        buf.step.add_(1)
        with cast:
            loss = F.cross_entropy(model(data.x_train.index_select(0, idx)),
                                   data.y_train.index_select(0, idx))
        optimizer.zero_grad(set_to_none=True)  # capture then allocates grads the graph owns
        loss.backward()
        with _optimizer_reads(optimizer, buf.lrs):
            optimizer.step()
        buf.total.add_(loss.detach() * size)

    return step


class Graphed:
    """Training epochs whose steps are CUDA-graph replays (plain calls off CUDA)."""

    def __init__(self, steps: list[tuple[Callable[[], None], int]], buf: _Buffers,
                 schedule: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer):
        self.steps, self.buf, self.schedule, self.optimizer = steps, buf, schedule, optimizer
        self.per_epoch = sum(count for _, count in steps)

    def epoch(self, order: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Train one epoch over `order`: returns (lr at its start, summed training loss)."""
        rows = []
        for _ in range(self.per_epoch):  # exactly what eager training sets, step by step
            rows.append([g["lr"] for g in self.optimizer.param_groups])
            self.schedule.step()
        self.buf.rates.copy_(torch.tensor(rows, dtype=self.buf.rates.dtype))
        self.buf.order.copy_(order)
        for t in (self.buf.cursor, self.buf.step, self.buf.total):
            t.zero_()
        for step, count in self.steps:
            for _ in range(count):
                step()
        return rows[0][0], self.buf.total


def _capture(step: Callable[[], None], stream: torch.cuda.Stream) -> Callable[[], None]:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        step()
    return graph.replay


def prepare(model: nn.Module, optimizer: torch.optim.Optimizer,
            schedule: torch.optim.lr_scheduler.LRScheduler, data: Split,
            batch_size: int, precision: str = "fp32") -> Graphed | None:
    """Graphed epochs for `train.fit`, or None after one warning when capture fails.

    On failure everything is put back as it was, so the caller trains eagerly from the same start.
    Expects a fresh optimizer (no state yet), as `train.build` returns.
    """
    device = data.x_train.device
    n = len(data.x_train)
    full, rest = divmod(n, batch_size)
    counts = [(batch_size, full), (rest, 1)]
    counts = [(size, count) for size, count in counts if size and count]
    groups = optimizer.param_groups
    dtype = torch.float32 if device.type == "cuda" else torch.float64  # floats exact off CUDA
    buf = _Buffers(
        order=torch.zeros(n, dtype=torch.long, device=device),
        cursor=torch.zeros(1, dtype=torch.long, device=device),
        step=torch.zeros(1, dtype=torch.long, device=device),
        rates=torch.zeros(full + (rest > 0), len(groups), dtype=dtype, device=device),
        lrs=[torch.zeros((), dtype=dtype, device=device) for _ in groups],
        total=torch.zeros((), device=device),
    )
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_rng = torch.get_rng_state()
    fns = [(_step_fn(model, optimizer, data, buf, size, precision), count)
           for size, count in counts]
    try:
        steps = _warm_up_and_capture(fns, buf, device)
    except Exception as exc:  # noqa: BLE001 - any capture failure means: train eagerly
        _restore(model, saved_model, saved_rng, optimizer, fresh=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {reason}); "
                      "training eagerly", CaptureFailed, stacklevel=3)
        return None
    _restore(model, saved_model, saved_rng, optimizer, fresh=False)
    return Graphed(steps, buf, schedule, optimizer)


def _warm_up_and_capture(fns: list[tuple[Callable[[], None], int]], buf: _Buffers,
                         device: torch.device) -> list[tuple[Callable[[], None], int]]:
    """Warm every step shape up, then capture each (on CUDA) on the stream that warmed it."""

    def warm_up() -> None:
        with warnings.catch_warnings():  # "capturable=True ... running without graph capture"
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            for fn, _ in fns:
                for _ in range(WARMUP_STEPS):
                    buf.cursor.zero_()
                    buf.step.zero_()
                    fn()

    if device.type != "cuda":
        warm_up()
        return fns
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        warm_up()
    torch.cuda.current_stream(device).wait_stream(stream)
    return [(_capture(fn, stream), count) for fn, count in fns]


@torch.no_grad()
def _restore(model: nn.Module, saved: dict[str, torch.Tensor], rng: torch.Tensor,
             optimizer: torch.optim.Optimizer, fresh: bool) -> None:
    """Undo the warm-up in place (captured graphs keep the addresses) or, if `fresh`, for good."""
    model.load_state_dict(saved)  # copies into the existing tensors
    torch.set_rng_state(rng)
    if fresh:  # eager from here: a capturable optimizer would only be slower (and warn)
        optimizer.state.clear()
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            if group.get("capturable"):
                group["capturable"] = False
        return
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.zero_()
