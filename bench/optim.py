"""Optimizer and learning-rate-schedule registries: the one place either is named.

An optimizer entry builds `torch.optim` from (params, lr, weight_decay, **knobs) and samples its
own knobs from a trial; a schedule entry builds a `torch.optim.lr_scheduler` from the total
number of steps and the steps in one epoch, so every schedule is stepped once per batch.
`GRAPH_FLAGS` names, per torch class, the flags that let a CUDA `step()` be captured in a CUDA
graph with the learning rate held in a device tensor. `bench.fast` sets them on the param groups
only when it captures: a capturable optimizer stepped eagerly is slower (and warns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from torch.optim import lr_scheduler


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[..., Any]
    space: Callable[..., dict[str, Any]]


OPTIMIZERS: dict[str, Entry] = {}
SCHEDULES: dict[str, Entry] = {}


def _register(table: dict[str, Entry], kind: str, name: str, space=None):
    def wrap(build):
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = Entry(name, build, space or (lambda trial: {}))
        return build

    return wrap


def _get(table: dict[str, Entry], kind: str, name: str) -> Entry:
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(table))}")
    return table[name]


def create_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                     weight_decay: float = 0.0, **knobs: Any) -> torch.optim.Optimizer:
    """The lr stays a float here, so schedules compute in plain Python; `bench.fast` hands the
    optimizer a device tensor for each captured step."""
    return _get(OPTIMIZERS, "optimizer", name).build(list(params), lr, weight_decay, **knobs)


def graph_flags(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The param-group flags under which `optimizer.step()` can be captured with a tensor lr."""
    kind = type(optimizer)
    if kind not in GRAPH_FLAGS:
        valid = ", ".join(sorted(k.__name__ for k in GRAPH_FLAGS))
        raise ValueError(f"no CUDA-graph flags for optimizer {kind.__name__}; valid: {valid}")
    return GRAPH_FLAGS[kind]


def create_schedule(name: str, optimizer: torch.optim.Optimizer, total_steps: int,
                    epoch_steps: int, **knobs: Any) -> lr_scheduler.LRScheduler:
    return _get(SCHEDULES, "schedule", name).build(optimizer, total_steps, epoch_steps, **knobs)


def optimizer_space(name: str, trial: optuna.Trial, **ranges: Any) -> dict[str, Any]:
    return _get(OPTIMIZERS, "optimizer", name).space(trial, **ranges)


def schedule_space(name: str, trial: optuna.Trial, **ranges: Any) -> dict[str, Any]:
    return _get(SCHEDULES, "schedule", name).space(trial, **ranges)


# --- optimizers ------------------------------------------------------------


def _sgd_space(trial, momentum=(0.0, 0.99), nesterov=(False, True)):
    m = trial.suggest_float("sgd.momentum", *momentum)
    nest = trial.suggest_categorical("sgd.nesterov", list(nesterov)) if m > 0 else False
    return {"momentum": m, "nesterov": nest}


@_register(OPTIMIZERS, "optimizer", "sgd", _sgd_space)
def _sgd(params, lr, weight_decay, momentum=0.0, nesterov=False, **flags):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay, **flags)


def _beta1_space(prefix):
    def space(trial, beta1=(0.8, 0.95)):
        return {"beta1": trial.suggest_float(f"{prefix}.beta1", *beta1)}

    return space


@_register(OPTIMIZERS, "optimizer", "adam", _beta1_space("adam"))
def _adam(params, lr, weight_decay, beta1=0.9, **flags):
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), weight_decay=weight_decay,
                            **flags)


@_register(OPTIMIZERS, "optimizer", "adamw", _beta1_space("adamw"))
def _adamw(params, lr, weight_decay, beta1=0.9, **flags):
    return torch.optim.AdamW(params, lr=lr, betas=(beta1, 0.999), weight_decay=weight_decay,
                             **flags)


def _rmsprop_space(trial, alpha=(0.9, 0.999), momentum=(0.0, 0.9)):
    return {"alpha": trial.suggest_float("rmsprop.alpha", *alpha),
            "momentum": trial.suggest_float("rmsprop.momentum", *momentum)}


@_register(OPTIMIZERS, "optimizer", "rmsprop", _rmsprop_space)
def _rmsprop(params, lr, weight_decay, alpha=0.99, momentum=0.0, **flags):
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, momentum=momentum,
                               weight_decay=weight_decay, **flags)


# What torch 2.14's optimizer sources accept (torch/optim/adam.py, sgd.py, rmsprop.py): the
# capture health check (`Optimizer._accelerator_graph_capture_health_check`, called by Adam(W) and
# RMSprop) demands `capturable` in every group; Adam(W) also take `fused` with it, one kernel for
# all parameters that reads the lr from a float32 device tensor (`_fused_adam_.tensor_lr`), where
# capturable foreach Adam launches a dozen; SGD has no `capturable` and no health check, and its
# fused kernel reads a tensor lr too (`_fused_sgd_.tensor_lr`); RMSprop has no fused kernel.
_CAPTURABLE_FUSED = {"capturable": True, "fused": True}
GRAPH_FLAGS: dict[type[torch.optim.Optimizer], dict[str, Any]] = {
    torch.optim.SGD: {"fused": True},
    torch.optim.Adam: _CAPTURABLE_FUSED,
    torch.optim.AdamW: _CAPTURABLE_FUSED,
    torch.optim.RMSprop: {"capturable": True},
}


# --- schedules (stepped once per batch) ----------------------------------------


@_register(SCHEDULES, "schedule", "constant")
def _constant(opt, total_steps, epoch_steps):
    return lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def _step_space(trial, every=(1, 5), gamma=(0.1, 0.5)):
    return {"every": trial.suggest_int("step.every", *every),
            "gamma": trial.suggest_float("step.gamma", *gamma)}


@_register(SCHEDULES, "schedule", "step", _step_space)
def _step(opt, total_steps, epoch_steps, every=1, gamma=0.5):
    """Multiply the lr by `gamma` every `every` epochs."""
    return lr_scheduler.StepLR(opt, step_size=every * epoch_steps, gamma=gamma)


@_register(SCHEDULES, "schedule", "multistep")
def _multistep(opt, total_steps, epoch_steps, at=(), gamma=0.1):
    """Multiply the lr by `gamma` at the start of each epoch listed in `at` (counted from 0).

    Epoch 0 in `at` lowers the lr before the first step, as a recipe whose loop decays the lr at
    the top of every fifth epoch does; the effective lr of epoch e is lr * gamma**#{a <= e}.
    """
    milestones = sorted(at)
    return lr_scheduler.LambdaLR(
        opt, lambda step: gamma ** sum(step // epoch_steps >= a for a in milestones))


@_register(SCHEDULES, "schedule", "cosine")
def _cosine(opt, total_steps, epoch_steps):
    return lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


def _onecycle_space(trial, pct_start=(0.1, 0.4)):
    return {"pct_start": trial.suggest_float("onecycle.pct_start", *pct_start)}


@_register(SCHEDULES, "schedule", "onecycle", _onecycle_space)
def _onecycle(opt, total_steps, epoch_steps, pct_start=0.25):
    """Warm up to the sampled lr, then anneal; the sampled lr is the peak.

    Momentum is left as sampled (no cycling), so the optimizer's knobs mean what the trial says.
    """
    max_lr = [g["lr"] for g in opt.param_groups]
    return lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps,
                                   pct_start=pct_start, cycle_momentum=False)
