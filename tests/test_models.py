import optuna
import pytest
import torch
import torch.nn.functional as F

from bench import models


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_builds_and_takes_one_step(name):
    torch.manual_seed(0)
    model = models.create_model(name)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    out = model(x)
    assert out.shape == (8, 10)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(out, y)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", [n for n in models.list_models() if models.get_model(n).space])
def test_parametric_spaces_give_buildable_models(name):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        kwargs = models.get_model(name).space(trial)
        assert models.create_model(name, **kwargs)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        study.tell(trial, 0.0)


def test_recipe_shapes_match_design():
    linear = {name: [m.out_features for m in models.create_model(name).modules()
                     if isinstance(m, torch.nn.Linear)]
              for name in ("mlp-128-128", "mlp-bn-300-100", "mlp-400-200-100",
                           "mlp-64-32-softmax")}
    assert linear == {"mlp-128-128": [128, 128, 10], "mlp-bn-300-100": [300, 100, 10],
                      "mlp-400-200-100": [400, 200, 100, 10], "mlp-64-32-softmax": [64, 32, 10]}
    bn = [m for m in models.create_model("mlp-bn-300-100").modules()
          if isinstance(m, torch.nn.BatchNorm1d)]
    assert [b.num_features for b in bn] == [300, 100]
    conv32 = models.create_model("cnn-conv32")
    assert [m.in_features for m in conv32.modules() if isinstance(m, torch.nn.Linear)] == [5408]


def test_double_softmax_model_outputs_probabilities():
    out = models.create_model("mlp-64-32-softmax")(torch.randn(4, 1, 28, 28))
    assert torch.allclose(out.sum(1), torch.ones(4)) and (out >= 0).all()


def test_conv32_outputs_log_probabilities():
    out = models.create_model("cnn-conv32").eval()(torch.randn(4, 1, 28, 28))
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)


def test_unknown_and_duplicate_names_raise_with_choices():
    with pytest.raises(KeyError, match="unknown model 'resnet'; valid: cnn, cnn-bn"):
        models.create_model("resnet")
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("mlp", "mlp")(lambda: None)


def test_the_registry_label_is_a_kind_given_by_position_or_keyword(monkeypatch):
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))  # the registrations are undone
    models.register_model("tiny-a", "mlp")(lambda: torch.nn.Linear(784, 10))
    models.register_model("tiny-b", kind="cnn")(lambda: torch.nn.Linear(784, 10))
    assert models.get_model("tiny-a").kind == "mlp" and models.get_model("tiny-b").kind == "cnn"
    assert "tiny-a" in models.list_models(kind="mlp") and "tiny-b" not in models.list_models("mlp")
    assert models.list_models(kind="cnn") == ["cnn", "cnn-bn", "cnn-conv32", "lenet5", "tiny-b"]


def test_cnn_rejects_too_many_blocks():
    with pytest.raises(ValueError, match="blocks=4"):
        models.create_model("cnn", blocks=4)
