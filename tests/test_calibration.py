"""The family verdict on real studies: an A/A study must not be called, a real gap must be.

An A/A study compares one space under two names (the learning-rate ranges differ by one part in
a million, so the study is not refused as comparing a family with itself); whatever gap its
replicates show is the search's, the split's and the seeds' noise. The A/B study pits a tuned
Adam MLP against plain SGD held at a learning rate too small to learn in two epochs: a gap that
even smoke-sized data shows. Both run `REPLICATES=6 SMOKE=1` through the CLI on real MNIST.
"""

from __future__ import annotations

import pandas as pd
import pytest

from bench import cli

SPACE = """
from bench.space import Space
from bench.study import Study

STUDY = Study(
    question="calibration study",
    families=FAMILIES,
    space=Space(archs=("mlp",), batch_size=(128, 256), lr=(1e-4, 1e-1), epochs=(1, 2),
                optimizers=("adam", "sgd"), schedules=("constant",),
                arch_ranges={"mlp": {"depth": (1, 2), "width": (32, 256)}}),
)
"""
STUDIES = {
    "same": {"a": {"lr": (1e-4, 1e-1)}, "b": {"lr": (1e-4, 0.0999999)}},
    "gap": {"tuned": {"optimizers": ("adam",), "lr": (1e-3, 1e-2)},
            "starved": {"optimizers": ("sgd",), "lr": (1e-4, 1e-4)}},
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "expected"), [("same", {"not separable"}),
                                                ("gap", {"better", "worse"})])
def test_a_replicated_smoke_study_calls_a_real_gap_and_not_an_a_a_one(
        real_mnist, tmp_path, monkeypatch, name, expected):
    monkeypatch.setattr(cli, "STUDIES_DIR", tmp_path / "studies")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / f"{name}.py").write_text(
        SPACE.replace("FAMILIES", repr(STUDIES[name])))
    results = f"RESULTS_DIR={tmp_path / 'results'}"
    assert cli.main(["study", name, "SMOKE=1", "REPLICATES=6", "WORKERS=1", "DEVICE=cpu",
                     results]) == 0
    assert cli.main(["finalize", name, "SMOKE=1", "DEVICE=cpu", results]) == 0
    verdicts = pd.read_parquet(tmp_path / "results" / f"{name}-smoke" / "verdicts.parquet")
    family = verdicts[verdicts["level"] == "family"].iloc[0]
    assert family["n"] == 6
    assert family["verdict"] in expected, family.to_dict()
    if name == "gap":  # the tuned family is the reference, the starved one is worse
        assert (family["reference"], family["family"], family["verdict"]) == (
            "tuned", "starved", "worse")
