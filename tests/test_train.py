import copy
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from bench import models, train


def _fit(split, recipe, seed=0, on_epoch=None):
    train.seed_everything(seed)
    model, opt, sched = train.build(recipe, len(split.x_train), torch.device("cpu"))
    return train.fit(model, opt, sched, split, recipe.batch_size, recipe.epochs, seed, on_epoch)


RECIPE = train.Recipe(arch="mlp", lr=3e-3, batch_size=64, epochs=3, optimizer="adam",
                      schedule="cosine", arch_kwargs={"widths": [64]})


def test_fit_learns_and_reports_every_epoch(tiny_split):
    seen = []
    history = _fit(tiny_split, RECIPE, on_epoch=lambda e, m: seen.append(e) or False)
    assert seen == [1, 2, 3] and [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["val_acc"] > 0.9  # the synthetic classes are easy
    assert history[0]["lr"] == pytest.approx(3e-3) and history[-1]["lr"] < 3e-3
    assert set(history[0]) == {"epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"}


def test_fit_is_deterministic_per_seed(tiny_split):
    a, b = _fit(tiny_split, RECIPE, seed=5), _fit(tiny_split, RECIPE, seed=5)
    c = _fit(tiny_split, RECIPE, seed=6)
    strip = lambda h: [(x["train_loss"], x["val_acc"]) for x in h]  # noqa: E731
    assert strip(a) == strip(b) and strip(a) != strip(c)


def test_callback_stops_training(tiny_split):
    history = _fit(tiny_split, RECIPE, on_epoch=lambda e, m: e == 2)
    assert len(history) == 2


def test_partial_last_batch_is_trained(tiny_split):
    # 400 train images at bs 128: 3 full batches and one of 16, so 4 steps per epoch.
    recipe = replace(RECIPE, batch_size=128, epochs=1, schedule="constant", optimizer="sgd")
    train.seed_everything(0)
    model, opt, sched = train.build(recipe, len(tiny_split.x_train), torch.device("cpu"))
    train.fit(model, opt, sched, tiny_split, 128, 1, 0)
    assert sched.last_epoch == train.steps_per_epoch(400, 128) == 4


def test_nonfinite_loss_raises_after_reporting(tiny_split):
    bad = replace(tiny_split, x_train=tiny_split.x_train.clone().fill_(float("nan")))
    seen = []
    with pytest.raises(train.NonFiniteLoss, match="train loss nan at epoch 1"):
        _fit(bad, RECIPE, on_epoch=lambda e, m: seen.append(m) or False)
    assert len(seen) == 1


def test_device_resolution():
    assert train.resolve_device("cpu").type == "cpu"
    assert train.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'; valid: auto, cpu, cuda"):
        train.resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_gpu_is_an_error():
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        train.resolve_device("cuda")


@pytest.mark.gpu
def test_fit_on_cuda_matches_cpu_quality(cuda_tiny_split):
    split = cuda_tiny_split
    cuda = split.x_train.device
    train.seed_everything(0)
    model, opt, sched = train.build(RECIPE, len(split.x_train), cuda)
    history = train.fit(model, opt, sched, split, RECIPE.batch_size, RECIPE.epochs, 0)
    assert history[-1]["val_acc"] > 0.9


def test_fast_build_makes_conv_weights_channels_last_on_cpu_only_for_conv_nets():
    cpu = torch.device("cpu")
    conv = train.Recipe(arch="cnn-conv32", lr=1e-3, batch_size=64, epochs=1)
    assert train.build(conv, 100, cpu)[0][0].weight.stride() == (9, 1, 3, 1)  # channels-last
    assert train.build(conv, 100, cpu, fast=False)[0][0].weight.stride() == (9, 9, 3, 1)
    model = train.build(conv, 100, cpu)[0]
    flatten = next(m for m in model.modules() if isinstance(m, nn.Flatten))
    x = torch.randn(2, 32, 13, 13).contiguous(memory_format=torch.channels_last)
    grad = torch.autograd.grad(flatten(x.requires_grad_()).sum(), x)[0]
    assert grad.is_contiguous(memory_format=torch.channels_last)  # the hook from build()
    mlp = train.build(RECIPE, 100, cpu)[0]
    assert all(p.is_contiguous() for p in mlp.parameters())


def test_evaluate_is_the_same_whatever_the_batch(tiny_split):
    train.seed_everything(0)
    model = train.build(RECIPE, len(tiny_split.x_train), torch.device("cpu"))[0]
    loss, acc = train.evaluate(model, tiny_split.x_val, tiny_split.y_val)  # CPU default: 128
    loss_all, acc_all = train.evaluate(model, tiny_split.x_val, tiny_split.y_val, batch_size=200)
    assert acc == acc_all and loss == pytest.approx(loss_all, rel=1e-6)


def test_unshuffled_fit_takes_batches_in_stored_order(tiny_split):
    recipe = replace(RECIPE, epochs=2, batch_size=100)

    def run(shuffle):
        seen = []

        def loss_fn(out, y):
            seen.append(y.clone())
            return torch.nn.functional.cross_entropy(out, y)

        train.seed_everything(0)
        model, opt, sched = train.build(recipe, len(tiny_split.x_train), torch.device("cpu"))
        train.fit(model, opt, sched, tiny_split, 100, 2, 0, shuffle=shuffle, loss_fn=loss_fn)
        return torch.cat(seen)

    stored = tiny_split.y_train
    assert torch.equal(run(False), torch.cat([stored, stored]))  # both epochs in file order
    shuffled = run(True)
    assert not torch.equal(shuffled[:400], stored)
    assert torch.equal(shuffled[:400].sort().values, stored.sort().values)  # same images


def test_batch_mean_weighs_each_batch_equally():
    # Three images, batches of two: the first batch is right twice, the short last batch wrong.
    model = torch.nn.Flatten()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]).view(3, 2)
    y = torch.tensor([0, 1, 1])
    assert train.evaluate(model, x, y, batch_size=2)[1] == pytest.approx(2 / 3)
    assert train.evaluate(model, x, y, batch_size=2, batch_mean=True)[1] == pytest.approx(0.5)
    assert train.evaluate(model, x, y, batch_size=3, batch_mean=True)[1] == pytest.approx(2 / 3)


def test_fit_without_validation_images_skips_validation(tiny_split):
    split = replace(tiny_split, x_val=tiny_split.x_val[:0], y_val=tiny_split.y_val[:0])
    history = _fit(split, replace(RECIPE, epochs=1))
    assert math.isnan(history[0]["val_acc"]) and math.isnan(history[0]["val_loss"])
    assert math.isfinite(history[0]["train_loss"])


def test_precision_auto_is_bf16_only_on_a_cpu_that_computes_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # resolving needs no GPU
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    assert train.resolve_precision("auto", cpu) == "bf16"
    assert train.resolve_precision("auto", cuda) == "fp32"  # not measured on a GPU yet
    assert train.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    assert train.resolve_precision("auto", cpu) == "fp32"
    assert train.resolve_precision("bf16", cpu) == "bf16"  # asked for: slow, but honoured
    with pytest.raises(ValueError, match=r"^unknown precision 'fp16'; valid: auto, fp32, bf16$"):
        train.resolve_precision("fp16", cpu)


@pytest.mark.parametrize("graph", [False, True])
def test_bf16_trains_under_autocast_keeps_fp32_weights_and_scores_in_fp32(tiny_split, graph):
    recipe = replace(RECIPE, precision="bf16")
    train.seed_everything(0)
    model, opt, sched = train.build(recipe, len(tiny_split.x_train), torch.device("cpu"))
    seen = set()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(lambda mod, i, out: seen.add((mod.training, out.dtype)))
    history = train.fit(model, opt, sched, tiny_split, recipe.batch_size, recipe.epochs, 0,
                        graph=graph, precision="bf16")
    assert seen == {(True, torch.bfloat16), (False, torch.float32)}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {v.dtype for s in opt.state.values() for v in s.values() if v.dim()} == {
        torch.float32}
    fp32 = _fit(tiny_split, RECIPE)
    assert history[-1]["val_acc"] > 0.9
    assert abs(history[-1]["val_acc"] - fp32[-1]["val_acc"]) <= 0.03  # 6 of 200 images
    assert history[-1]["train_loss"] != fp32[-1]["train_loss"]  # it did run in bf16


def test_channels_last_model_keeps_its_gradients_channels_last_and_equal():
    torch.manual_seed(0)
    nchw = models.create_model("cnn-conv32").eval()  # eval: dropout off, same function twice
    fast = train.to_channels_last(copy.deepcopy(nchw))
    plain = copy.deepcopy(nchw).to(memory_format=torch.channels_last)  # no gradient hook
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    into_pool = {}
    for name, model in (("nchw", nchw), ("fast", fast), ("plain", plain)):
        pool = next(m for m in model.modules() if isinstance(m, nn.MaxPool2d))
        pool.register_full_backward_hook(
            lambda mod, gin, gout, name=name: into_pool.update({name: gout[0]}))
        torch.nn.functional.nll_loss(model(x), y).backward()
    cl = torch.channels_last
    assert into_pool["fast"].is_contiguous(memory_format=cl)
    assert not into_pool["plain"].is_contiguous(memory_format=cl)  # what the hook fixes
    for a, b in zip(nchw.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
