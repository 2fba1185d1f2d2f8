import pytest
import torch

from bench import optim


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_every_optimizer_takes_a_step(name):
    model = _model()
    opt = optim.create_optimizer(name, model.parameters(), lr=0.1, weight_decay=1e-4)
    before = model.weight.detach().clone()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name", sorted(optim.SCHEDULES))
def test_every_schedule_runs_its_total_steps(name):
    opt = optim.create_optimizer("sgd", _model().parameters(), lr=0.1, momentum=0.9)
    sched = optim.create_schedule(name, opt, total_steps=20, epoch_steps=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0 <= lr <= 0.1 + 1e-12 for lr in lrs)
    assert opt.param_groups[0]["momentum"] == 0.9  # schedules leave sampled knobs alone


def test_schedule_shapes():
    def lrs(name, **kw):
        opt = optim.create_optimizer("sgd", _model().parameters(), lr=0.1)
        sched = optim.create_schedule(name, opt, total_steps=20, epoch_steps=5, **kw)
        out = []
        for _ in range(20):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("constant") == [0.1] * 20
    step = lrs("step", every=2, gamma=0.5)
    assert step[:10] == [0.1] * 10 and step[10:] == pytest.approx([0.05] * 10)
    cosine = lrs("cosine")
    assert cosine[0] == 0.1 and cosine[-1] < 0.01 and cosine == sorted(cosine, reverse=True)
    onecycle = lrs("onecycle", pct_start=0.25)
    assert max(onecycle) == pytest.approx(0.1) and onecycle[0] < 0.01 and onecycle[-1] < 0.001


def test_unknown_names_list_choices():
    message = "unknown optimizer 'lion'; valid: adam, adamw, rmsprop, sgd"
    with pytest.raises(KeyError, match=message):
        optim.create_optimizer("lion", _model().parameters(), lr=0.1)
    with pytest.raises(KeyError, match="unknown schedule 'warm'; valid: constant, cosine"):
        optim.create_schedule("warm", None, 1, 1)


def test_every_optimizer_has_graph_flags_and_building_sets_none():
    for name in optim.OPTIMIZERS:
        opt = optim.create_optimizer(name, _model().parameters(), lr=0.1)
        flags = optim.graph_flags(opt)
        assert flags.get("capturable") or flags.get("fused"), name
        assert not any(opt.defaults.get(k) for k in flags), name  # set by bench.fast, not here
    with pytest.raises(ValueError, match="no CUDA-graph flags for optimizer Adagrad; valid: Adam, "
                                         "AdamW, RMSprop, SGD"):
        optim.graph_flags(torch.optim.Adagrad(_model().parameters()))


@pytest.mark.parametrize("name,kernel", [("sgd", "_fused_sgd_"), ("adam", "_fused_adam_"),
                                         ("adamw", "_fused_adamw_")])
def test_graph_flags_set_after_construction_run_the_fused_kernel_with_a_tensor_lr(
        monkeypatch, name, kernel):
    # What a CPU can check of the CUDA-graph flags: torch accepts them on the param groups of a
    # built optimizer, and step() then runs the one fused kernel, handed the 0-d tensor lr.
    # (RMSprop's capturable step refuses CPU tensors, so it is checked on CUDA only.)
    real, lrs = getattr(torch, kernel), []
    monkeypatch.setattr(torch, kernel, lambda *a, **kw: lrs.append(kw["lr"]) or real(*a, **kw))
    plain_model, fused_model = _model(), _model()
    fused_model.load_state_dict(plain_model.state_dict())
    knobs = {"momentum": 0.9} if name == "sgd" else {}
    plain = optim.create_optimizer(name, plain_model.parameters(), lr=0.1, **knobs)
    fused = optim.create_optimizer(name, fused_model.parameters(), lr=0.1, **knobs)
    for group in fused.param_groups:
        group.update(optim.graph_flags(fused))
    lr = torch.tensor(0.1)
    for _ in range(3):
        for model, opt in ((plain_model, plain), (fused_model, fused)):
            opt.zero_grad()
            model(torch.ones(2, 4)).sum().backward()
        plain.step()
        saved, fused.param_groups[0]["lr"] = fused.param_groups[0]["lr"], lr
        fused.step()
        fused.param_groups[0]["lr"] = saved
    assert len(lrs) == 3 and all(x is lr for x in lrs)
    for a, b in zip(plain_model.parameters(), fused_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_multistep_decays_at_the_start_of_listed_epochs():
    def lr_per_epoch(at):
        opt = optim.create_optimizer("sgd", _model().parameters(), lr=0.01)
        sched = optim.create_schedule("multistep", opt, total_steps=20, epoch_steps=5, at=at)
        out = []
        for step in range(20):
            if step % 5 == 0:
                out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    # epoch 0 in `at` lowers the lr before the first step
    assert lr_per_epoch((0, 2)) == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert lr_per_epoch((2,)) == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])
    assert lr_per_epoch(()) == pytest.approx([1e-2] * 4)
