"""The CUDA-graph training path: its static step functions, run uncaptured on a CPU, must train
exactly as the eager loop does; on a GPU the captured graphs must reach eager's accuracy."""

import warnings
from dataclasses import replace

import pytest
import torch

from bench import data, fast, train

RECIPE = train.Recipe(arch="mlp", lr=3e-3, batch_size=96, epochs=2, optimizer="adam",
                      schedule="cosine", weight_decay=1e-4,
                      arch_kwargs={"widths": [64], "dropout": 0.2, "batch_norm": True})
KNOBS = {"sgd": {"momentum": 0.9, "nesterov": True}, "rmsprop": {"momentum": 0.5}}


def _history(split, recipe, graph, seed=3):
    train.seed_everything(1)
    model, opt, sched = train.build(recipe, len(split.x_train), split.x_train.device)
    history = train.fit(model, opt, sched, split, recipe.batch_size, recipe.epochs, seed,
                        graph=graph, precision=recipe.precision)
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine", "onecycle"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_static_steps_train_exactly_as_eager(tiny_split, optimizer, schedule):
    # 400 training images at batch 96: four full batches and a partial one of 16 per epoch, with
    # dropout and batch-norm, so warm-up leftovers (weights, buffers, optimizer state, random
    # state) or a wrong lr anywhere would show.
    recipe = replace(RECIPE, optimizer=optimizer, schedule=schedule,
                     optimizer_kwargs=KNOBS.get(optimizer, {}))
    assert _history(tiny_split, recipe, graph=True) == _history(tiny_split, recipe, graph=False)


def test_static_steps_in_bf16_train_exactly_as_eager_bf16(tiny_split):
    recipe = replace(RECIPE, precision="bf16")
    graphed = _history(tiny_split, recipe, graph=True)
    assert graphed == _history(tiny_split, recipe, graph=False)
    assert graphed != _history(tiny_split, RECIPE, graph=True)  # autocast reached the step


@pytest.mark.parametrize("batch_size", [400, 500, 9])
def test_batch_shapes_without_remainder_or_without_full_batches(tiny_split, batch_size):
    # 400 = one full batch and no remainder; 500 = only a partial batch; 9 = many steps.
    recipe = replace(RECIPE, batch_size=batch_size, epochs=1)
    assert _history(tiny_split, recipe, graph=True) == _history(tiny_split, recipe, graph=False)


def test_failed_capture_warns_once_and_trains_eagerly_from_the_same_start(tiny_split,
                                                                          monkeypatch):
    real = fast._warm_up_and_capture

    def broken(fns, buf, device):
        real(fns, buf, device)  # the warm-up really changes weights and optimizer state
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(fast, "_warm_up_and_capture", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = _history(tiny_split, RECIPE, graph=True)
    assert [str(w.message) for w in caught] == [
        "CUDA graph capture failed (RuntimeError: operation not permitted when stream is "
        "capturing); training eagerly"]
    assert caught[0].category is fast.CaptureFailed
    assert history == _history(tiny_split, RECIPE, graph=False)


def test_graphs_are_the_default_only_on_cuda(tiny_split, monkeypatch):
    calls = []
    monkeypatch.setattr(fast, "prepare", lambda *a: calls.append(a) or None)
    _history(tiny_split, replace(RECIPE, epochs=1), graph=None)
    assert calls == []  # CPU data: eager
    _history(tiny_split, replace(RECIPE, epochs=1), graph=True)
    assert len(calls) == 1


@pytest.mark.gpu
def test_captured_graphs_reach_eager_accuracy_on_cuda(real_mnist):
    """Same recipe, seeds 0-2, graphed vs eager on CUDA: mean validation accuracy within 0.5 pp
    (seed noise of this recipe is a few tenths), and the graphs must really be captured."""
    cuda = train.resolve_device("cuda")
    split = data.train_val(data.load_train(), 10_000, 0, "mnist", cuda)
    for recipe in (train.Recipe(arch="mlp-400-200-100", lr=0.1, batch_size=64, epochs=2,
                                optimizer="sgd", schedule="cosine"),
                   train.Recipe(arch="cnn-conv32", lr=1e-3, batch_size=64, epochs=2,
                                optimizer="adam", schedule="onecycle")):
        accs = {True: [], False: []}
        for graphed in accs:
            for seed in range(3):
                train.seed_everything(seed)
                model, opt, sched = train.build(recipe, len(split.x_train), cuda, fast=graphed)
                with warnings.catch_warnings():
                    warnings.simplefilter("error", fast.CaptureFailed)
                    history = train.fit(model, opt, sched, split, recipe.batch_size,
                                        recipe.epochs, seed, graph=graphed)
                accs[graphed].append(history[-1]["val_acc"])
        mean = {k: sum(v) / len(v) for k, v in accs.items()}
        assert min(accs[True]) > 0.95, (recipe.arch, accs)
        assert abs(mean[True] - mean[False]) < 0.005, (recipe.arch, accs)


@pytest.mark.gpu
def test_bf16_steps_capture_on_cuda_and_match_float32_accuracy(real_mnist):
    """PRECISION=bf16 on CUDA: the autocast step must capture, and over seeds 0-2 its mean
    validation accuracy must stay within 0.5 pp of float32 graphs (not yet run on a GPU)."""
    cuda = train.resolve_device("cuda")
    split = data.train_val(data.load_train(), 10_000, 0, "mnist", cuda)
    recipe = train.Recipe(arch="cnn-conv32", lr=1e-3, batch_size=64, epochs=2, optimizer="adam")
    accs = {"fp32": [], "bf16": []}
    for precision, found in accs.items():
        for seed in range(3):
            train.seed_everything(seed)
            model, opt, sched = train.build(recipe, len(split.x_train), cuda)
            with warnings.catch_warnings():
                warnings.simplefilter("error", fast.CaptureFailed)
                history = train.fit(model, opt, sched, split, recipe.batch_size, recipe.epochs,
                                    seed, precision=precision)
            found.append(history[-1]["val_acc"])
    assert min(accs["bf16"]) > 0.95, accs
    assert abs(sum(accs["bf16"]) - sum(accs["fp32"])) / 3 < 0.005, accs


@pytest.mark.gpu
def test_graph_safe_optimizers_on_cuda():
    from bench import optim

    params = [torch.nn.Parameter(torch.zeros(3, device="cuda"))]
    assert optim.create_optimizer("sgd", params, 0.1, graph_safe=True).defaults["fused"]
    for name in ("adam", "adamw", "rmsprop"):
        assert optim.create_optimizer(name, params, 0.1, graph_safe=True).defaults["capturable"]


@pytest.mark.gpu
def test_a_failed_capture_on_cuda_leaves_cuda_usable(cuda_tiny_split):
    """An optimizer built without graph flags cannot be captured: one warning, eager training."""
    split = cuda_tiny_split
    cuda = split.x_train.device
    train.seed_everything(0)
    model, opt, sched = train.build(RECIPE, len(split.x_train), cuda, fast=False)
    with pytest.warns(fast.CaptureFailed):
        history = train.fit(model, opt, sched, split, RECIPE.batch_size, RECIPE.epochs, 0,
                            graph=True)
    assert history[-1]["val_acc"] > 0.9
