from dataclasses import replace

import optuna
import pytest

from bench.space import Space, SpaceError, narrow


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
        replace(Space(), **change).validate()


def test_unknown_architecture_lists_registry():
    with pytest.raises(SpaceError, match="unknown architecture 'vit'; valid: cnn, cnn-bn"):
        Space(archs=("vit",)).validate()


def test_sample_covers_every_knob_and_respects_ranges():
    space = Space(archs=("mlp",), batch_size=(32,), lr=(1e-3, 1e-2), epochs=(2, 3),
                  arch_ranges={"mlp": {"depth": (2, 2), "width": (16, 16)}})
    space.validate()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        r = space.sample(trial)
        study.tell(trial, 0.0)
        assert r.arch == "mlp" and r.arch_kwargs["widths"] == [16, 16]
        assert r.batch_size == 32 and 1e-3 <= r.lr <= 1e-2 and r.epochs in (2, 3)
        assert 1e-6 <= r.weight_decay <= 1e-2
        seen |= {r.optimizer, r.schedule}
    assert seen == {"sgd", "adam", "adamw", "rmsprop", "constant", "step", "cosine", "onecycle"}
    assert study.trials[0].distributions["lr"].log


def test_a_string_where_a_tuple_belongs_is_named():
    with pytest.raises(SpaceError, match=r"^archs must be a tuple of choices, e.g. "
                                         r"archs=\('mlp', 'cnn'\); got 'mlp'$"):
        Space(archs="mlp").validate()


STUDY_SPACE = Space(archs=("mlp", "cnn"), batch_size=(64, 128), lr=(1e-4, 1e-1),
                    arch_ranges={"mlp": {"width": (32, 512)}},
                    normalization=("none", "half", "mnist"))


@pytest.mark.parametrize(("fields", "message"), [
    ("mlp", r"family 'f' must be a dict of the Space fields it narrows, e.g. "
            r"\{'archs': \('mlp',\)\}; got 'mlp'"),
    (("mlp",), r"family 'f' must be a dict .* got \('mlp',\)"),
    ({"optimizer": ("sgd",)}, "family 'f': unknown field 'optimizer'; valid: archs, optimizers"),
    ({"archs": ("lenet5",)}, "family 'f': archs: 'lenet5' is not among the study's choices "
                             r"\('mlp', 'cnn'\)"),
    ({"archs": "mlp"}, "family 'f': archs must be a non-empty tuple of choices"),
    ({"archs": ()}, r"family 'f' has no architecture; choose from \('mlp', 'cnn'\)"),
    ({"batch_size": (256,)}, "family 'f': batch_size: 256 is not among the study's choices"),
    ({"lr": (1e-5, 1e-3)}, r"family 'f': lr=\(1e-05, 0.001\) is not a range inside the "
                           r"study's \(0.0001, 0.1\)"),
    ({"normalization": ("zscore",)}, "family 'f': normalization: 'zscore' is not among"),
    ({"arch_ranges": {"mlp": {"width": (16, 64)}}}, r"arch_ranges.mlp.width=\(16, 64\) is not "
                                                    r"a range inside the study's \(32, 512\)"),
    ({"arch_ranges": {"mlp": {"batch_norm": (None,)}}}, "arch_ranges.mlp.batch_norm: None is "
                                                        "not among the study's choices"),
    ({"arch_ranges": {"mlp": {"widht": (32, 64)}}}, "family 'f': mlp has no range 'widht'"),
    ({"archs": ("cnn",), "arch_ranges": {"mlp": {"width": (32, 64)}}},
     "family 'f': arch_ranges names 'mlp', which is not in play; in play: cnn"),
])
def test_a_family_must_narrow_the_study_space(fields, message):
    with pytest.raises(SpaceError, match=message):
        narrow(STUDY_SPACE, "f", fields)


def test_narrowing_fixes_fields_and_merges_ranges():
    space = narrow(STUDY_SPACE, "bn", {"archs": ("mlp",), "normalization": ("half",),
                                       "arch_ranges": {"mlp": {"batch_norm": (True,)}},
                                       "lr": (1e-3, 1e-2)})
    assert space.archs == ("mlp",) and space.normalization == ("half",)
    assert space.arch_ranges == {"mlp": {"width": (32, 512), "batch_norm": (True,)}}
    assert space.lr == (1e-3, 1e-2) and space.batch_size == STUDY_SPACE.batch_size
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        recipe = space.sample(trial)
        study.tell(trial, 0.0)
        assert recipe.arch_kwargs["batch_norm"] is True and 1e-3 <= recipe.lr <= 1e-2
        assert space.normalization_of(trial) == "half"


def test_several_normalizations_are_sampled():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        STUDY_SPACE.sample(trial)
        seen.add(STUDY_SPACE.normalization_of(trial))
        study.tell(trial, 0.0)
    assert seen == {"none", "half", "mnist"}
