from dataclasses import replace

import optuna
import pytest

from bench.space import Space, SpaceError

ARCHS = ("mlp", "cnn")


@pytest.mark.parametrize(("change", "message"), [
    ({"lr": (0.0, 0.1)}, r"lr range \(0.0, 0.1\) must be > 0"),
    ({"lr": (0.1, 0.01)}, r"lr range \(0.1, 0.01\) has low > high"),
    ({"epochs": (5, 2)}, "epochs range .* has low > high"),
    ({"batch_size": (64, 0)}, "batch sizes .* must all be > 0"),
    ({"optimizers": ("adam", "lion")}, "unknown optimizer 'lion'; valid: adam, adamw"),
    ({"schedules": ("warmup",)}, "unknown schedule 'warmup'; valid: constant"),
    ({"arch_ranges": {"mlp": {"widht": (8, 16)}}}, "mlp has no range 'widht'; valid: depth"),
    ({"arch_ranges": {"lenet5": {}}}, "ranges given for 'lenet5', which is not in play"),
    ({"arch_ranges": {"mlp": {"width": (1024, 64)}}}, r"mlp.width range \(1024, 64\) has low"),
    ({"optimizer_ranges": {"sgd": {"momentum": (0.9, 0.1)}}}, "sgd.momentum range"),
])
def test_invalid_spaces_raise_one_clear_error(change, message):
    with pytest.raises(SpaceError, match=message):
        replace(Space(), **change).validate(ARCHS)


def test_unknown_architecture_lists_registry():
    with pytest.raises(SpaceError, match="unknown architecture 'vit'; valid: cnn, cnn-bn"):
        Space().validate(("vit",))


def test_sample_covers_every_knob_and_respects_ranges():
    space = Space(batch_size=(32,), lr=(1e-3, 1e-2), epochs=(2, 3),
                  arch_ranges={"mlp": {"depth": (2, 2), "width": (16, 16)}})
    space.validate(("mlp",))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        r = space.sample(trial, ("mlp",))
        study.tell(trial, 0.0)
        assert r.arch == "mlp" and r.arch_kwargs["widths"] == [16, 16]
        assert r.batch_size == 32 and 1e-3 <= r.lr <= 1e-2 and r.epochs in (2, 3)
        assert 1e-6 <= r.weight_decay <= 1e-2
        seen |= {r.optimizer, r.schedule}
    assert seen == {"sgd", "adam", "adamw", "rmsprop", "constant", "step", "cosine", "onecycle"}
    assert study.trials[0].distributions["lr"].log
