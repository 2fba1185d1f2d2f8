"""What a study file may declare: each Study and Space field checked when the file loads, plain
numbers where their meaning is plain, and families compared as the spaces they sample (issue 21,
items 5 and 6)."""

import re

import optuna
import pytest
import torch

from bench import cli, study, train
from bench.space import Space, SpaceError, canonical, narrow
from bench.study import Study

SPACE = Space(archs=("mlp", "cnn"), batch_size=(64, 128), lr=(1e-3, 1e-2), epochs=(2, 10),
              optimizers=("sgd", "adam", "adamw"), arch_ranges={"mlp": {"width": (32, 512)}})
TWO = {"mlp": {"archs": ("mlp",)}, "cnn": {"archs": ("cnn",)}}


# --- item 5: family spaces compared in one form, each validated, smoke after narrowing ---------

@pytest.mark.parametrize(("a", "b"), [
    ({"optimizers": ("sgd", "adam")}, {"optimizers": ("adam", "sgd")}),
    ({"archs": ("mlp",)}, {"archs": ("mlp",), "arch_ranges": {"mlp": {"depth": (1, 3)}}}),
    ({"archs": ("mlp",), "batch_size": (128, 64)}, {"archs": ("mlp",)}),
    ({"archs": ("mlp",), "arch_ranges": {"mlp": {"batch_norm": (True, False)}}},
     {"archs": ("mlp",), "arch_ranges": {"mlp": {"batch_norm": (False, True)}}}),
    ({"lr": (0.001, 0.01)}, {"lr": (1e-3, 1e-2)}),
])
def test_families_that_sample_the_same_space_are_refused(a, b):
    with pytest.raises(SpaceError, match="families 'a' and 'b' are the same space"):
        study.family_spaces({"a": a, "b": b}, SPACE)


def test_families_that_differ_are_kept_as_written():
    spaces = study.family_spaces({"a": {"optimizers": ("sgd", "adam")},
                                  "b": {"optimizers": ("adam",)}}, SPACE)
    assert spaces["a"].optimizers == ("sgd", "adam")  # the hash of a stored study keeps its order
    assert canonical(spaces["a"])["optimizers"] == ["adam", "sgd"]


def test_a_float_range_for_an_integer_knob_is_one_error_when_the_families_are_narrowed():
    families = {"narrow": {"archs": ("mlp",), "arch_ranges": {"mlp": {"width": (32.5, 64.0)}}},
                "cnn": {"archs": ("cnn",)}}
    assert narrow(SPACE, "narrow", families["narrow"])  # inside the study's (32, 512)
    with pytest.raises(SpaceError, match=r"^family 'narrow': mlp.width=\(32.5, 64.0\): expected "
                                         r"a \(low, high\) pair of whole numbers, like its "
                                         r"default \(64, 1024\)$"):
        study.family_spaces(families, SPACE)
    with pytest.raises(SpaceError, match=r"^mlp.width=\(32.0, 512\): expected a \(low, high\) "
                                         "pair of whole numbers"):
        Space(arch_ranges={"mlp": {"width": (32.0, 512)}}).validate()
    with pytest.raises(SpaceError, match=r"^mlp.batch_norm=True: expected a non-empty tuple of "
                                         r"choices, like its default \(False, True\)$"):
        Space(arch_ranges={"mlp": {"batch_norm": True}}).validate()
    Space(arch_ranges={"mlp": {"dropout": (0, 1)}}).validate()  # whole numbers fit a float knob


def test_a_family_that_narrows_the_epochs_runs_under_smoke():
    families = {"short": {"epochs": (2, 4)}, "long": {"epochs": (8, 10)}}
    real = study.family_spaces(families, SPACE)
    assert (real["short"].epochs, real["long"].epochs) == ((2, 4), (8, 10))
    smoke = study.family_spaces(families, SPACE, smoke=True)
    assert {s.epochs for s in smoke.values()} == {study.SMOKE_EPOCHS}
    definition = Study(question="q", families=families, space=SPACE)
    cfg = study.RunConfig(name="x", trials=2, timeout=None, device="cpu", seed=0, smoke=True,
                          results_dir="r")
    assert study.space_for(definition, cfg).epochs == study.SMOKE_EPOCHS  # as printed
    base = study.space_for(definition, cfg, smoke=False)
    assert base == SPACE
    assert study.family_spaces(families, base, smoke=cfg.smoke) == smoke


# --- item 6: every field's form, plain numbers where the meaning is plain ---------------------

def test_plain_numbers_fix_a_value_or_mean_both_devices():
    space = Space(lr=1e-3, epochs=3, weight_decay=0.0, batch_size=256)
    assert (space.lr, space.epochs, space.weight_decay, space.batch_size) == (
        (1e-3, 1e-3), (3, 3), (0.0, 0.0), (256,))
    space.validate()
    trial = optuna.create_study().ask()
    recipe = space.sample(trial)
    assert (recipe.lr, recipe.epochs, recipe.weight_decay, recipe.batch_size) == (
        1e-3, 3, 0.0, 256)
    definition = Study(question="q", families=TWO, space=SPACE, timeout=120, trials=500,
                       replicates=2)
    assert definition.timeout == {"cpu": 120, "cuda": 120}
    assert definition.trials == {"cpu": 500, "cuda": 500}
    assert definition.replicates == {"cpu": 2, "cuda": 2}
    assert Study(question="q", families=TWO, space=SPACE, timeout=None).timeout == {
        "cpu": None, "cuda": None}
    fixed = narrow(SPACE, "f", {"lr": 2e-3, "epochs": 4, "batch_size": 64})
    assert (fixed.lr, fixed.epochs, fixed.batch_size) == ((2e-3, 2e-3), (4, 4), (64,))
    with pytest.raises(SpaceError, match=r"family 'f': lr=\(0.5, 0.5\) is not a range inside"):
        narrow(SPACE, "f", {"lr": 0.5})


def test_weight_decay_may_be_exactly_zero_but_a_log_range_may_not_start_there():
    spaces = study.family_spaces({"decay": {}, "none": {"weight_decay": 0}}, SPACE)
    assert spaces["none"].weight_decay == (0, 0)
    assert spaces["decay"].weight_decay == SPACE.weight_decay
    with pytest.raises(SpaceError, match=r"weight_decay range \(0.0, 0.01\) must be > 0 .*"
                                         "weight_decay=0 alone means no decay"):
        Space(weight_decay=(0.0, 1e-2)).validate()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": (1.5, 3)}, r"epochs=\(1.5, 3\): expected a \(low, high\) pair of whole numbers, "
                           "or one whole number for a fixed value"),
    ({"epochs": 2.5}, r"epochs=2.5: expected a \(low, high\) pair of whole numbers"),
    ({"lr": "1e-3"}, r"lr='1e-3': expected a \(low, high\) pair of numbers, or one number"),
    ({"lr": (1e-3, 1e-2, 1e-1)}, r"lr=\(0.001, 0.01, 0.1\): expected a \(low, high\) pair"),
    ({"weight_decay": [0, 1e-3]}, r"weight_decay=\[0, 0.001\]: expected a \(low, high\) pair"),
    ({"batch_size": (64.0,)}, r"batch_size must be a tuple of choices, e.g. "
                              r"batch_size=\(64, 128, 256, 512\); got \(64.0,\)"),
    ({"batch_size": (True,)}, r"batch_size must be a tuple of choices"),
    ({"optimizers": ()}, r"optimizers must be a tuple of choices, e.g. optimizers="),
    ({"arch_ranges": {"mlp": (32, 64)}}, r"arch_ranges=\{'mlp': \(32, 64\)\}: expected a dict"),
])
def test_a_space_field_of_the_wrong_form_is_refused_when_made(kwargs, message):
    with pytest.raises(SpaceError, match=f"^{message}"):
        Space(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"trials": {"cpu": 5}}, r"Study.trials=\{'cpu': 5\}: expected a whole number > 0 for both "
                             r"devices, or \{'cpu': a whole number > 0, 'cuda': "),
    ({"trials": 0}, "Study.trials=0: expected a whole number > 0"),
    ({"trials": 2.5}, "Study.trials=2.5: expected"),
    ({"timeout": -1}, r"Study.timeout=-1: expected seconds >= 0 or None \(no limit\)"),
    ({"timeout": {"cpu": 60, "gpu": 60}}, "Study.timeout=.*'gpu'.*: expected"),
    ({"replicates": {"cpu": 3, "cuda": 0}}, "Study.replicates=.*: expected a whole number > 0"),
    ({"val_size": 0}, "Study.val_size=0: expected a whole number of images > 0"),
    ({"question": ""}, "Study.question='': expected a non-empty string"),
    ({"space": {"archs": ("mlp",)}}, r"Study.space=\{'archs': \('mlp',\)\}: expected a Space"),
    ({"cpu_space": "small"}, "Study.cpu_space='small': expected None or a Space"),
    ({"families": ["mlp", "cnn"]}, r"Study.families=\['mlp', 'cnn'\]: expected a dict"),
    ({"sampler": optuna.samplers.RandomSampler()}, "Study.sampler=.*: expected a function"),
])
def test_a_study_field_of_the_wrong_form_is_refused_when_made(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        Study(**{"question": "q", "families": TWO, "space": SPACE, **kwargs})


# --- through the CLI: one line naming the file, the field, the value and the form; exit 2 ------

def _study(capsys, tmp_path, name="bad"):
    code = cli.main(["study", name, "DEVICE=cpu", "SMOKE=1", f"RESULTS_DIR={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    return code, err


@pytest.mark.parametrize(("edit", "message"), [
    (("epochs=(1, 1)", "epochs=(1.5, 3)"),
     r"error: studies/bad.py:\d+: SpaceError: epochs=\(1.5, 3\): expected a \(low, high\) pair "
     "of whole numbers, or one whole number for a fixed value"),
    (('trials={"cpu": 8, "cuda": 8}', 'trials={"cpu": 8}'),
     r"error: studies/bad.py:\d+: ValueError: Study.trials=\{'cpu': 8\}: expected a whole "
     "number > 0 for both devices"),
    (('trials={"cpu": 8, "cuda": 8}', 'timeout="2m"'),
     r"error: studies/bad.py:\d+: ValueError: Study.timeout='2m': expected seconds >= 0"),
    # the GPU's families are checked on a CPU run too, before the real run could find them
    (('families={"mlp": {"archs": ("mlp",)}, "cnn": {"archs": ("cnn",)}},',
      'families={"mlp": {"archs": ("mlp",)}, "cnn": {"archs": ("lenet5",)}}, '
      'cpu_families={"mlp": {"archs": ("mlp",)}, "cnn": {"archs": ("cnn",)}},'),
     r"error: family 'cnn': archs: 'lenet5' is not among the study's choices \('mlp', 'cnn'\) "
     r"\(studies/bad.py: families of space\)"),
    (('"width": (16, 32)', '"width": (16.0, 32.0)'),
     r"error: mlp.width=\(16.0, 32.0\): expected a \(low, high\) pair of whole "
     r"numbers, like its default \(64, 1024\) \(studies/bad.py: families of space\)"),
])
def test_a_study_file_of_the_wrong_form_is_one_line_at_load_exit_2(
        study_file, edit, message, tmp_path, capsys):
    study_file("bad", edit)
    code, err = _study(capsys, tmp_path)
    assert code == 2
    assert err.count("\n") == 1
    assert re.match(message, err), err


def test_plain_numbers_in_a_study_file_load_as_documented(study_file):
    study_file("plain", ("lr=(1e-3, 1e-2)", "lr=1e-3, weight_decay=0.0"),
               ("epochs=(1, 1)", "epochs=3"),
               ('trials={"cpu": 8, "cuda": 8}', "trials=500, timeout=120"))
    loaded = cli.load_study("plain")
    assert (loaded.space.lr, loaded.space.epochs, loaded.space.weight_decay) == (
        (1e-3, 1e-3), (3, 3), (0.0, 0.0))
    assert loaded.trials == {"cpu": 500, "cuda": 500}
    assert loaded.timeout == {"cpu": 120, "cuda": 120}


# --- every shipped study, both devices: resolved, validated, one trial sampled per family -------

SHIPPED = sorted(p.stem for p in cli.STUDIES_DIR.glob("*.py") if not p.stem.startswith("_"))
SAMPLED = {  # what a Space field becomes in a sampled trial
    "archs": lambda recipe, norm: recipe.arch,
    "optimizers": lambda recipe, norm: recipe.optimizer,
    "schedules": lambda recipe, norm: recipe.schedule,
    "batch_size": lambda recipe, norm: recipe.batch_size,
    "normalization": lambda recipe, norm: norm,
}


def test_the_shipped_studies_are_the_studies_folder():
    assert SHIPPED == cli.study_names() and "mlp_vs_cnn" in SHIPPED


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_study_resolves_validates_and_samples_each_family(name, device):
    definition = cli.load_study(name)
    cfg = study.resolve(definition, name, torch.device(device), {})
    assert (cfg.trials, cfg.timeout or None, cfg.replicates) == (
        definition.trials[device], definition.timeout[device] or None,
        definition.replicates[device])
    spaces = study.validate(definition, cfg)
    own = definition.cpu_families if device == "cpu" and definition.cpu_families else (
        definition.families)
    assert list(spaces) == list(own)
    for family, space in spaces.items():
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        recipe, norm = space.sample(trial), space.normalization_of(trial)
        for field, value_of in SAMPLED.items():  # inside the family's space ...
            assert value_of(recipe, norm) in getattr(space, field), (family, field)
            if field in own[family]:  # ... and what the family fixes is what it sampled
                narrowed = own[family][field]
                assert value_of(recipe, norm) in (
                    narrowed if isinstance(narrowed, tuple) else (narrowed,)), (family, field)
        assert space.lr[0] <= recipe.lr <= space.lr[1]
        assert space.epochs[0] <= recipe.epochs <= space.epochs[1]
        model = train.build(recipe, 1000, torch.device("cpu"))[0]
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10), (family, recipe)


def test_a_study_with_cpu_families_compares_them_on_a_cpu_and_its_families_on_a_gpu():
    definition = cli.load_study("batch_size")
    for device, sizes in (("cpu", (64, 128, 256, 512, 1024)),
                          ("cuda", (32, 64, 128, 256, 512, 1024, 2048))):
        cfg = study.resolve(definition, "batch_size", torch.device(device), {})
        spaces = study.validate(definition, cfg)
        assert list(spaces) == [str(b) for b in sizes]
        for family, space in spaces.items():
            trial = optuna.create_study().ask()
            assert space.sample(trial).batch_size == int(family)
