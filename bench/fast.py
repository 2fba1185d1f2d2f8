"""Training steps captured as CUDA graphs: forward, loss, backward, optimizer step and the lr.

Why: a small MNIST model's arithmetic takes microseconds a step, so an eager loop is bound by
Python and kernel launches (dozens per step). A captured step is launched as one graph, and the
host does nothing else per batch. Everything a step reads stays at a fixed address: the images and
labels (already on the device), the epoch's permutation, a batch cursor, a run-wide step counter
and the learning rates of every step of the run. The schedule is evaluated on the host once, in
`prepare`, for the whole run (the same float values eager training would set) and copied to the
device in one transfer; each replay picks its step's lr with the device-side counter, so the
optimizer's kernels read a tensor lr (`optim.GRAPH_FLAGS`, set only here, make them able to).
Whatever else a captured step reads from Python (momentum, betas, hooks) is frozen at capture, so
a schedule that changes more than the lr, or an optimizer with step hooks, is refused.

The last batch of an epoch (n % batch_size images) has a shape of its own and a graph of its own,
so every image is seen once per epoch with the exact gradient eager training takes: no padding,
no mask. Capture needs warm-up steps first (they create the optimizer state and the libraries'
workspaces); they change parameters, buffers, optimizer state and the CPU and CUDA random states,
so all of them are restored afterwards and graphed training starts where eager training starts.
Restoring optimizer state means zeroing it, which is every registered optimizer's fresh state
(SGD's first momentum buffer is the gradient itself, i.e. momentum * 0 + gradient); so `prepare`
refuses an optimizer that already has state.

Only an error inside the capture means "train eagerly" (`CaptureFailed`); out-of-memory, and any
error of the warm-up (eager training would hit it too), propagate after the restore.
Off CUDA the same step functions run uncaptured, with the lr handed to the optimizer as a Python
float; that is how the tests check them against eager `train.fit` bit for bit on a CPU.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import optimizer as torch_optimizer

from bench import optim
from bench.data import Split

PRECISIONS = ("fp32", "bf16")  # what a training step runs in (train.resolve_precision picks)
WARMUP_STEPS = 3  # per step shape, before capture (the PyTorch CUDA-graph notes use 3)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Steps = list[tuple[Callable[[], None], int]]  # each step function and how often an epoch runs it


class CaptureFailed(RuntimeWarning):
    """Capturing a training step failed; training goes on eagerly from the same start."""


class _CaptureError(RuntimeError):
    """An error inside a CUDA-graph capture: this step cannot be graphed, eager training can."""


@dataclass
class _Buffers:
    """Device tensors every captured step reads or updates in place."""

    order: torch.Tensor  # the epoch's permutation of the training images
    cursor: torch.Tensor  # (1,) int64: position of the next batch in `order`
    step: torch.Tensor  # (1,) int64: step of the run, indexes `rates`
    rates: torch.Tensor  # (steps of the run, param groups): each step's learning rates
    lrs: list[torch.Tensor]  # one 0-d lr per param group, read by the optimizer's kernels
    total: torch.Tensor  # sum of the epoch's per-image training losses


@contextmanager
def _optimizer_reads(optimizer: torch.optim.Optimizer, lrs: list[torch.Tensor]) -> Iterator[None]:
    """Hand the optimizer the lr tensors for one `step()`; its groups keep their floats otherwise.

    A captured step records the tensors' addresses. Off CUDA nothing is captured and the
    optimizer gets each tensor's value.
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


def lr_table(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
             steps: int) -> list[list[float]]:
    """Each param group's lr before each of `steps` steps, exactly as eager training sets them.

    The schedule is stepped here once for the whole run, so no epoch waits on it; the schedule
    and the groups are put back as found. A captured step would freeze anything else a schedule
    changes (momentum, betas), so such a schedule is refused with ValueError.
    """
    groups = optimizer.param_groups
    before = [dict(g) for g in groups]
    expected = [dict(g) for g in groups]  # each step: `before` with that step's lr
    state = copy.deepcopy(schedule.state_dict())
    rows = []
    try:
        with warnings.catch_warnings():  # no optimizer.step() has run yet: torch would warn
            warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)` before")
            for _ in range(steps):
                rows.append([g["lr"] for g in groups])
                schedule.step()
                for g, e in zip(groups, expected, strict=True):
                    e["lr"] = g["lr"]
                if groups != expected:  # one C-level comparison a step
                    changed = sorted({k for g, e in zip(groups, expected, strict=True)
                                      for k in g.keys() | e.keys() if g.get(k) != e.get(k)})
                    raise ValueError(
                        f"schedule {type(schedule).__name__} changes {', '.join(changed)} during "
                        "training, which a CUDA graph would freeze at capture; valid: a "
                        "schedule that changes only the lr, or graph=False")
    finally:
        schedule.load_state_dict(state)
        for g, b in zip(groups, before, strict=True):
            g.update(b)
    return rows


def _step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, data: Split, buf: _Buffers,
             size: int, precision: str, loss_fn: LossFn) -> Callable[[], None]:
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
            loss = loss_fn(model(data.x_train.index_select(0, idx)),
                           data.y_train.index_select(0, idx))
        optimizer.zero_grad(set_to_none=True)  # capture then allocates grads the graph owns
        loss.backward()
        with _optimizer_reads(optimizer, buf.lrs):
            optimizer.step()
        buf.total.add_(loss.detach() * size)

    return step


class Graphed:
    """Training epochs whose steps are CUDA-graph replays (plain calls off CUDA)."""

    def __init__(self, steps: Steps, buf: _Buffers, rows: list[list[float]]):
        self.steps, self.buf, self.rows = steps, buf, rows
        self.per_epoch = sum(count for _, count in steps)
        self.epochs_run = 0

    def epoch(self, order: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Train one epoch over `order`: returns (lr at its start, summed training loss)."""
        lr = self.rows[self.epochs_run * self.per_epoch][0]  # IndexError past the planned run
        self.epochs_run += 1
        self.buf.order.copy_(order)
        self.buf.cursor.zero_()
        self.buf.total.zero_()
        for step, count in self.steps:
            for _ in range(count):
                step()
        return lr, self.buf.total


def _captures(device: torch.device) -> bool:
    """Whether steps on `device` are captured as CUDA graphs (elsewhere they run as calls)."""
    return device.type == "cuda"


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU generator's state and, on CUDA, the device's: dropout draws from that one there."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _refuse(optimizer: torch.optim.Optimizer) -> None:
    """What `prepare` cannot restore or capture: optimizer state, Python step hooks."""
    if optimizer.state:
        raise ValueError(f"CUDA-graph training needs a fresh optimizer, but this one has state "
                         f"for {len(optimizer.state)} tensors; valid: an optimizer that has not "
                         "stepped yet (train.build), or graph=False")
    hooks = (optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks,
             torch_optimizer._global_optimizer_pre_hooks,
             torch_optimizer._global_optimizer_post_hooks)
    if any(hooks):
        raise ValueError("the optimizer has step hooks, which a CUDA graph would run only at "
                         "capture; valid: no step hooks, or graph=False")


def prepare(model: nn.Module, optimizer: torch.optim.Optimizer,
            schedule: torch.optim.lr_scheduler.LRScheduler, data: Split, batch_size: int,
            epochs: int, precision: str = "fp32",
            loss_fn: LossFn = F.cross_entropy) -> Graphed | None:
    """Graphed epochs for `train.fit`, or None after one warning when capture fails.

    On failure everything is put back as it was, so the caller trains eagerly from the same start.
    Raises ValueError, before changing anything, for an optimizer that already has state or step
    hooks and for a schedule that changes more than the lr.
    """
    _refuse(optimizer)
    device = data.x_train.device
    n = len(data.x_train)
    full, rest = divmod(n, batch_size)
    counts = [(size, count) for size, count in ((batch_size, full), (rest, 1)) if size and count]
    rows = lr_table(optimizer, schedule, (full + (rest > 0)) * epochs)
    groups = optimizer.param_groups
    dtype = torch.float32 if device.type == "cuda" else torch.float64  # floats exact off CUDA
    buf = _Buffers(
        order=torch.zeros(n, dtype=torch.long, device=device),
        cursor=torch.zeros(1, dtype=torch.long, device=device),
        step=torch.zeros(1, dtype=torch.long, device=device),
        rates=torch.tensor(rows, dtype=dtype, device=device),
        lrs=[torch.zeros((), dtype=dtype, device=device) for _ in groups],
        total=torch.zeros((), device=device),
    )
    model.train()  # a graph keeps the mode it was captured in: eager `fit` trains in train mode
    flags = optim.graph_flags(optimizer) if _captures(device) else {}
    saved = _Saved({k: v.clone() for k, v in model.state_dict().items()}, _rng_state(device),
                   [{k: g.get(k) for k in flags} for g in groups])
    for group in groups:
        group.update(flags)
    fns = [(_step_fn(model, optimizer, data, buf, size, precision, loss_fn), count)
           for size, count in counts]
    try:
        steps = _warm_up_and_capture(fns, buf, device)
    except _CaptureError as exc:
        _restore(model, optimizer, saved, device, fresh=True)
        warnings.warn(f"CUDA graph capture failed ({exc}); training eagerly", CaptureFailed,
                      stacklevel=3)
        return None
    except BaseException:  # out of memory, or an error eager training would meet too
        _restore(model, optimizer, saved, device, fresh=True)
        raise
    _restore(model, optimizer, saved, device, fresh=False)
    buf.step.zero_()
    return Graphed(steps, buf, rows)


def _warm_up_and_capture(fns: Steps, buf: _Buffers, device: torch.device) -> Steps:
    """Warm every step shape up, then capture each (on CUDA) on the stream that warmed it."""

    def warm_up() -> None:
        with warnings.catch_warnings():  # "capturable=True ... running without graph capture"
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            for fn, _ in fns:
                for _ in range(WARMUP_STEPS):
                    buf.cursor.zero_()
                    buf.step.zero_()
                    fn()

    if not _captures(device):
        warm_up()
        return fns
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        warm_up()
    torch.cuda.current_stream(device).wait_stream(stream)
    return [(_capture(fn, stream), count) for fn, count in fns]


def _capture(step: Callable[[], None], stream: torch.cuda.Stream) -> Callable[[], None]:
    """One step captured as a graph; any error inside the capture becomes `_CaptureError`,
    except running out of memory, which eager training would meet as well.

    When `capture_end()` itself raises (the capture was invalidated, say by a sync inside the
    step), `torch.cuda.graph.__exit__` never leaves the side stream: put the caller's stream back
    and wait for the device, then name the error that broke the capture (`__context__`).
    """
    graph = torch.cuda.CUDAGraph()
    previous = torch.cuda.current_stream(stream.device)
    try:
        with torch.cuda.graph(graph, stream=stream):
            step()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        if isinstance(exc.__context__, torch.cuda.OutOfMemoryError):  # capture_end failed after
            raise exc.__context__ from None
        cause = f"; raised after {_one_line(exc.__context__)}" if exc.__context__ else ""
        raise _CaptureError(_one_line(exc) + cause) from exc
    finally:
        torch.cuda.set_stream(previous)
        torch.cuda.synchronize(stream.device)
    return graph.replay


@dataclass
class _Saved:
    """What the warm-up changes: weights and buffers, random states, the capture flags."""

    model: dict[str, torch.Tensor]
    rng: tuple[torch.Tensor, torch.Tensor | None]
    flags: list[dict[str, Any]]  # each param group's values of the flags set for capture


@torch.no_grad()
def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: _Saved,
             device: torch.device, fresh: bool) -> None:
    """Undo the warm-up in place (captured graphs keep the addresses) or, if `fresh`, for good."""
    model.load_state_dict(saved.model)  # copies into the existing tensors
    _set_rng_state(saved.rng, device)  # outside any capture
    if fresh:  # eager from here: a capturable optimizer would only be slower (and warn)
        optimizer.state.clear()
        optimizer.zero_grad(set_to_none=True)
        for group, flags in zip(optimizer.param_groups, saved.flags, strict=True):
            group.update(flags)
        return
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.zero_()
