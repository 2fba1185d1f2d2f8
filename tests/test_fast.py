"""The CUDA-graph training path: its static step functions, run uncaptured on a CPU, must train
exactly as the eager loop does; on a GPU the captured graphs must reach eager's accuracy."""

import warnings
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from bench import data, fast, optim, train

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
        raise fast._CaptureError("RuntimeError: operation not permitted when stream is capturing")

    monkeypatch.setattr(fast, "_warm_up_and_capture", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = _history(tiny_split, RECIPE, graph=True)
    assert [str(w.message) for w in caught] == [
        "CUDA graph capture failed (RuntimeError: operation not permitted when stream is "
        "capturing); training eagerly"]
    assert caught[0].category is fast.CaptureFailed
    assert history == _history(tiny_split, RECIPE, graph=False)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"),
                                   RuntimeError("a warm-up step failed")])
def test_out_of_memory_and_errors_outside_the_capture_propagate_after_the_restore(
        tiny_split, monkeypatch, error):
    # Eager training would meet them too, so the study must record oom/error, not a fallback.
    real = fast._warm_up_and_capture

    def broken(fns, buf, device):
        real(fns, buf, device)
        raise error

    monkeypatch.setattr(fast, "_warm_up_and_capture", broken)
    train.seed_everything(1)
    model, opt, sched = train.build(RECIPE, len(tiny_split.x_train), tiny_split.x_train.device)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", fast.CaptureFailed)
        with pytest.raises(type(error), match=str(error)):
            train.fit(model, opt, sched, tiny_split, RECIPE.batch_size, RECIPE.epochs, 3,
                      graph=True)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert not opt.state


class _FakeCapture:
    """`torch.cuda.graph` whose `__exit__` (capture_end) can raise, as a broken capture does:
    then the real one never leaves the side stream."""

    exit_error: Exception | None = None

    def __init__(self, graph, stream):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.exit_error:
            raise self.exit_error


@pytest.mark.parametrize("step_error,exit_error,expected", [
    (RuntimeError("operation not permitted when stream is capturing"),
     RuntimeError("CUDA error: operation failed due to a previous error during capture"),
     (fast._CaptureError, "RuntimeError: CUDA error: operation failed due to a previous error "
      "during capture; raised after RuntimeError: operation not permitted when stream is "
      "capturing")),
    (RuntimeError("operation not permitted when stream is capturing"), None,
     (fast._CaptureError, "RuntimeError: operation not permitted when stream is capturing")),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), RuntimeError("capture invalidated"),
     (torch.cuda.OutOfMemoryError, "CUDA out of memory")),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), None,
     (torch.cuda.OutOfMemoryError, "CUDA out of memory")),
])
def test_a_broken_capture_restores_the_stream_and_names_its_cause(monkeypatch, step_error,
                                                                  exit_error, expected):
    events = []
    monkeypatch.setattr(_FakeCapture, "exit_error", exit_error)
    monkeypatch.setattr(torch.cuda, "graph", _FakeCapture)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"default of {device}")
    monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: events.append(stream))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: events.append(f"sync {device}"))
    side = SimpleNamespace(device="cuda:0")

    def step():
        raise step_error

    with pytest.raises(expected[0]) as info:
        fast._capture(step, side)
    assert str(info.value) == expected[1]
    assert events == ["default of cuda:0", "sync cuda:0"]


def test_the_cuda_random_state_is_saved_and_restored_with_the_cpu_one(monkeypatch):
    # Dropout on CUDA draws from the device's generator, which the warm-up advances.
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: f"state of {device}")
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: calls.append((state, device)))
    cuda = torch.device("cuda", 0)
    state = fast._rng_state(cuda)
    assert torch.equal(state[0], torch.get_rng_state()) and state[1] == "state of cuda:0"
    torch.rand(3)
    fast._set_rng_state(state, cuda)
    assert torch.equal(torch.get_rng_state(), state[0])
    assert calls == [("state of cuda:0", cuda)]
    assert fast._rng_state(torch.device("cpu"))[1] is None


def test_prepare_captures_in_train_mode_whatever_mode_the_model_arrives_in(tiny_split):
    train.seed_everything(1)
    model, opt, sched = train.build(RECIPE, len(tiny_split.x_train), tiny_split.x_train.device)
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    model.eval()
    assert fast.prepare(model, opt, sched, tiny_split, RECIPE.batch_size, RECIPE.epochs)
    assert modes and all(modes) and model.training


def _onecycle_cycling_momentum(opt, total_steps, epoch_steps):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total_steps)


@pytest.mark.parametrize("optimizer,changed", [("sgd", "momentum"), ("adam", "betas")])
def test_a_schedule_that_changes_more_than_the_lr_is_refused_before_anything_changes(
        tiny_split, optimizer, changed):
    recipe = replace(RECIPE, optimizer=optimizer, optimizer_kwargs=KNOBS.get(optimizer, {}))
    model, opt, _ = train.build(recipe, len(tiny_split.x_train), tiny_split.x_train.device)
    sched = _onecycle_cycling_momentum(opt, 10, 5)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"schedule OneCycleLR changes {changed} during training"
                                         ", which a CUDA graph would freeze at capture; valid:"):
        train.fit(model, opt, sched, tiny_split, recipe.batch_size, 2, 3, graph=True)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups
    assert sched.last_epoch == 0 and not opt.state
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_an_optimizer_with_state_or_step_hooks_is_refused(tiny_split):
    model, opt, sched = train.build(RECIPE, len(tiny_split.x_train), tiny_split.x_train.device)
    handle = opt.register_step_post_hook(lambda *args: None)
    with pytest.raises(ValueError, match="the optimizer has step hooks, which a CUDA graph would "
                                         "run only at capture; valid: no step hooks"):
        train.fit(model, opt, sched, tiny_split, RECIPE.batch_size, 1, 3, graph=True)
    handle.remove()
    model(tiny_split.x_train[:8]).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="CUDA-graph training needs a fresh optimizer, but this "
                                         "one has state for 6 tensors; valid: an optimizer"):
        train.fit(model, opt, sched, tiny_split, RECIPE.batch_size, 1, 3, graph=True)


def test_a_custom_loss_reaches_the_graphed_step(tiny_split):
    def smoothed(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    def history(graph, loss_fn):
        train.seed_everything(1)
        model, opt, sched = train.build(RECIPE, len(tiny_split.x_train), torch.device("cpu"))
        return [{k: v for k, v in h.items() if k != "seconds"} for h in train.fit(
            model, opt, sched, tiny_split, RECIPE.batch_size, RECIPE.epochs, 3, graph=graph,
            loss_fn=loss_fn)]

    graphed = history(True, smoothed)
    assert graphed == history(False, smoothed)
    assert graphed != history(True, F.cross_entropy)


@pytest.mark.parametrize("schedule,knobs", [("constant", {}), ("step", {"every": 1}),
                                            ("multistep", {"at": (0, 2), "gamma": 0.1}),
                                            ("cosine", {}), ("onecycle", {"pct_start": 0.3})])
def test_the_lr_table_is_what_the_schedule_sets_at_each_step(schedule, knobs):
    assert schedule in optim.SCHEDULES  # every registered schedule is listed here
    w = [torch.nn.Parameter(torch.ones(2)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [w[0]]}, {"params": [w[1]], "lr": 0.05}], lr=0.1,
                          momentum=0.9)
    sched = optim.create_schedule(schedule, opt, total_steps=20, epoch_steps=5, **knobs)
    table = fast.lr_table(opt, sched, 20)
    eager = []  # the same objects stepped as train.fit does: the table left them as found
    for _ in range(20):
        eager.append([g["lr"] for g in opt.param_groups])
        (w[0].sum() + w[1].sum()).backward()
        opt.step()
        sched.step()
    assert table == eager
    assert len({row[0] for row in table}) > (schedule != "constant")


def test_every_registered_schedule_is_in_the_lr_table_test():
    marks = test_the_lr_table_is_what_the_schedule_sets_at_each_step.pytestmark
    listed = {params[0] for m in marks if m.name == "parametrize" for params in m.args[1]}
    assert listed == set(optim.SCHEDULES)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_graph_flags_are_set_only_while_a_graph_is_captured(tiny_split, monkeypatch, optimizer):
    # A CPU cannot capture, so pretend it can and fail the capture: the flags must be on for
    # warm-up and capture, and off again for the eager training that follows; eager training
    # never sets them (the optimizer comes from train.build without them).
    recipe = replace(RECIPE, optimizer=optimizer, optimizer_kwargs=KNOBS.get(optimizer, {}),
                     epochs=1)
    seen, asked = [], []
    real_flags = optim.graph_flags
    monkeypatch.setattr(optim, "graph_flags", lambda o: asked.append(o) or real_flags(o))
    monkeypatch.setattr(fast, "_captures", lambda device: True)
    eager = _history(tiny_split, recipe, graph=False)
    assert asked == []
    train.seed_everything(1)
    model, opt, sched = train.build(recipe, len(tiny_split.x_train), torch.device("cpu"))
    flags = optim.GRAPH_FLAGS[type(opt)]
    before = [{k: g[k] for k in flags} for g in opt.param_groups]
    assert not any(v for group in before for v in group.values())

    def capture_fails(fns, buf, device):
        seen.append([{k: g[k] for k in flags} for g in opt.param_groups])
        raise fast._CaptureError("RuntimeError: no capture on a CPU")

    monkeypatch.setattr(fast, "_warm_up_and_capture", capture_fails)
    with pytest.warns(fast.CaptureFailed, match="no capture on a CPU"):
        history = train.fit(model, opt, sched, tiny_split, recipe.batch_size, 1, 3, graph=True)
    assert seen == [[flags] * len(opt.param_groups)] and asked == [opt]
    assert [{k: g[k] for k in flags} for g in opt.param_groups] == before
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in history] == eager


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
@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_graphed_training_on_cuda_is_eager_training_on_cuda(cuda_tiny_split, optimizer, dropout):
    """The exactness check for the first GPU run: one BatchNorm recipe (with and without dropout,
    cosine lr) fitted with graph=True and graph=False from the same seed must agree per epoch in
    train loss (rtol 1e-5) and end with allclose weights and BatchNorm buffers. The graphed run
    must really capture, with the optimizer's capture flags on; the eager one without them."""
    recipe = replace(RECIPE, optimizer=optimizer, optimizer_kwargs=KNOBS.get(optimizer, {}),
                     arch_kwargs={**RECIPE.arch_kwargs, "dropout": dropout})
    split = cuda_tiny_split
    runs = {}
    for graph in (True, False):
        train.seed_everything(1)
        model, opt, sched = train.build(recipe, len(split.x_train), split.x_train.device)
        with warnings.catch_warnings():
            warnings.simplefilter("error", fast.CaptureFailed)
            history = train.fit(model, opt, sched, split, recipe.batch_size, recipe.epochs, 3,
                                graph=graph)
        flags = optim.GRAPH_FLAGS[type(opt)]
        assert all(bool(g[k]) is graph for g in opt.param_groups for k in flags), opt.param_groups
        runs[graph] = [h["train_loss"] for h in history], model.state_dict()
    (graphed_losses, graphed), (eager_losses, eager) = runs[True], runs[False]
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-5)
    assert any(".running_mean" in k for k in graphed)  # BatchNorm buffers are compared too
    for name, value in graphed.items():
        torch.testing.assert_close(value, eager[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.gpu
def test_a_failed_capture_on_cuda_leaves_cuda_usable(cuda_tiny_split):
    """A loss that syncs with the host cannot be captured, and then `capture_end` raises too:
    one warning naming the cause, the default stream current again, eager training."""

    def syncing(out, y):
        loss = F.cross_entropy(out, y)
        assert loss.item() >= 0  # a host sync: not permitted while the stream is capturing
        return loss

    split = cuda_tiny_split
    cuda = split.x_train.device
    train.seed_everything(0)
    model, opt, sched = train.build(RECIPE, len(split.x_train), cuda)
    with pytest.warns(fast.CaptureFailed, match="not permitted when stream is capturing"):
        history = train.fit(model, opt, sched, split, RECIPE.batch_size, RECIPE.epochs, 0,
                            graph=True, loss_fn=syncing)
    assert torch.cuda.current_stream(cuda) == torch.cuda.default_stream(cuda)
    assert not any(g["capturable"] or g["fused"] for g in opt.param_groups)
    assert history[-1]["val_acc"] > 0.9
