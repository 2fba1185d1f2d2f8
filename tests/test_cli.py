import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import cli, leaderboard

ROOT = Path(__file__).resolve().parents[1]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # also when the package is not installed


def bench(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=ENV)


@pytest.mark.parametrize(("args", "message"), [
    (["study", "nope"], "error: unknown study 'nope'; valid: mlp_vs_cnn"),
    (["study", "NAME=../studies/mlp_vs_cnn"],
     "error: unknown study '../studies/mlp_vs_cnn'; valid: mlp_vs_cnn"),
    (["study"], "error: no study named; give NAME=..., one of: mlp_vs_cnn"),
    (["study", "mlp_vs_cnn", "TRIAL=5"],
     "error: unknown setting 'TRIAL'; valid: NAME, TRIALS, TIMEOUT, DEVICE, SEED, SMOKE, "
     "RESULTS_DIR"),
    (["study", "mlp_vs_cnn", "TRIALS=ten"],
     "error: TRIALS='ten' is not valid: expected a positive integer"),
    (["study", "mlp_vs_cnn", "TRIALS=0"],
     "error: TRIALS='0' is not valid: expected a positive integer"),
    (["study", "mlp_vs_cnn", "TIMEOUT=-1"],
     "error: TIMEOUT='-1' is not valid: expected a number of seconds (0 = no limit)"),
    (["study", "mlp_vs_cnn", "DEVICE=tpu"],
     "error: DEVICE='tpu' is not valid: expected auto or cpu or cuda"),
    (["study", "mlp_vs_cnn", "SMOKE=yes"], "error: SMOKE='yes' is not valid: expected 0 or 1"),
    (["study", "mlp_vs_cnn", "RESULTS_DIR="],
     "error: RESULTS_DIR='' is not valid: expected a non-empty path"),
    (["finalize", "mlp_vs_cnn", "K=0"], "error: K='0' is not valid: expected a positive integer"),
    (["finalize", "mlp_vs_cnn", "TRIALS=3"],
     "error: unknown setting 'TRIALS'; valid: NAME, K, SEEDS, DEVICE, REFRESH, SMOKE, "
     "RESULTS_DIR"),
    (["finalize", "nope"], "error: unknown study 'nope'; valid: mlp_vs_cnn"),
    (["report", "mlp_vs_cnn", "SEEDS=3"],
     "error: unknown setting 'SEEDS'; valid: NAME, SMOKE, RESULTS_DIR"),
])
def test_bad_input_is_one_line_and_nonzero_and_writes_nothing(args, message, tmp_path):
    proc = bench(*args, f"RESULTS_DIR={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message
    assert not (tmp_path / "r").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", ["finalize", "report"])
def test_finalize_and_report_need_a_study_first(command, tmp_path):
    proc = bench(command, "mlp_vs_cnn", f"RESULTS_DIR={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: no study results in {tmp_path / 'r' / 'mlp_vs_cnn'}; "
                                   "run `make study NAME=mlp_vs_cnn` first")
    assert not (tmp_path / "r").exists()


def test_make_hands_its_variables_to_the_cli(tmp_path):
    proc = subprocess.run(["make", "-s", "study", "NAME=mlp_vs_cnn", "TRAILS=3",
                           f"RESULTS_DIR={tmp_path}", f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV)
    assert proc.returncode != 0
    assert "error: unknown setting 'TRAILS'" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_missing_data_is_one_clear_line(tmp_path):
    env_dir = tmp_path / "empty"
    env_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "study", "mlp_vs_cnn", "SMOKE=1", "DEVICE=cpu",
         f"RESULTS_DIR={tmp_path / 'r'}"], capture_output=True, text=True, timeout=120,
        cwd=ROOT, env={"PATH": ENV["PATH"], "PYTHONPATH": str(ROOT), "MNIST_DIR": str(env_dir)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: missing MNIST file {env_dir}/train-images-idx3-ubyte.gz "
        "(expected train-images-idx3-ubyte.gz or train-images-idx3-ubyte)")
    assert not (tmp_path / "r").exists()


def test_list_shows_every_registry():
    proc = bench("list")
    assert proc.returncode == 0, proc.stderr
    for word in ("mlp-400-200-100", "cnn-conv32", "lenet5", "cnn-bn", "adamw", "rmsprop",
                 "onecycle", "cosine", "study mlp_vs_cnn"):
        assert word in proc.stdout


def test_help_lists_subcommands():
    proc = bench("--help")
    assert proc.returncode == 0 and "study" in proc.stdout and "list" in proc.stdout


def test_overrides_parse_types():
    parsed = cli.parse_overrides(["TRIALS=7", "TIMEOUT=1.5", "SEED=-3", "SMOKE=1",
                                  "DEVICE=cpu", "PYTHON=python3", "MNIST_DIR=/data"],
                                 cli.STUDY_KEYS)
    assert parsed == {"trials": 7, "timeout": 1.5, "seed": -3, "smoke": True, "device": "cpu"}


def test_unwritable_results_dir_is_one_line(real_mnist, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "study", "mlp_vs_cnn", "SMOKE=1", "DEVICE=cpu",
         f"RESULTS_DIR={blocker}"], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**ENV, "MNIST_DIR": str(real_mnist)})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert str(blocker) in proc.stderr


def test_make_takes_settings_from_the_environment_too(tmp_path):
    proc = subprocess.run(["make", "-s", "study", "NAME=mlp_vs_cnn", f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**ENV, "TRIALS": "zero", "RESULTS_DIR": str(tmp_path)})
    assert proc.returncode != 0
    assert "error: TRIALS='zero' is not valid" in proc.stderr


ENTRY_IDS = ", ".join(leaderboard.all_entries())  # the recipes, then promoted entries


@pytest.mark.parametrize(("args", "message"), [
    (["reproduce", "ENTRY=nope"], f"error: unknown entry 'nope'; valid: {ENTRY_IDS}"),
    (["reproduce", "SEED=1"], "error: unknown setting 'SEED'; valid: ENTRY, N_SEEDS, DEVICE, "
                              "SAVE, THREADS, RESULTS_DIR"),
    (["reproduce", "N_SEEDS=0"], "error: N_SEEDS='0' is not valid: expected a positive integer"),
    (["reproduce", "SAVE=yes"], "error: SAVE='yes' is not valid: expected 0 or 1"),
    (["reproduce", "DEVICE=tpu"],
     "error: DEVICE='tpu' is not valid: expected auto or cpu or cuda"),
    (["reproduce", "THREADS=two"],
     "error: THREADS='two' is not valid: expected a positive integer"),
    (["promote"], "error: no study named; give NAME=..., one of: mlp_vs_cnn"),
    (["promote", "NAME=nope"], "error: unknown study 'nope'; valid: mlp_vs_cnn"),
    (["promote", "NAME=mlp_vs_cnn"], "error: no finalists at {r}/mlp_vs_cnn/finalists.parquet; "
                                     "run make finalize NAME=mlp_vs_cnn first"),
    (["leaderboard"], "error: no leaderboard results at {r}/leaderboard.parquet; "
                      "run make reproduce first"),
    (["leaderboard", "ENTRY=x"], "error: unknown setting 'ENTRY'; valid: RESULTS_DIR"),
])
def test_leaderboard_commands_reject_bad_input_and_write_nothing(args, message, tmp_path,
                                                                capsys):
    results = tmp_path / "r"
    entries = sorted((ROOT / "entries").glob("*"))
    assert cli.main([*args, f"RESULTS_DIR={results}"]) == 2  # in-process: no torch start-up
    assert capsys.readouterr().err.strip() == message.format(r=results)
    assert not results.exists() and sorted((ROOT / "entries").glob("*")) == entries


def test_make_reproduce_hands_its_variables_to_the_cli(tmp_path):
    proc = subprocess.run(["make", "-s", "reproduce", "N_SEED=1", f"RESULTS_DIR={tmp_path}",
                           f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV)
    assert proc.returncode != 0
    assert "error: unknown setting 'N_SEED'" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_reproduce_then_leaderboard_in_process(tiny_mnist, tmp_path, one_thread, capsys):
    settings = [f"RESULTS_DIR={tmp_path}"]
    assert cli.main(["reproduce", "ENTRY=cnn-conv32-adam", "N_SEEDS=1", "DEVICE=cpu",
                     *settings]) == 0
    assert torch.get_num_threads() == 1  # the CPU default (one_thread restores it)
    assert cli.main(["leaderboard", *settings]) == 0
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| cnn-conv32-adam | test (accuracy) |" in md and "| 1 | [97.5%, 98.5%) |" in md
    assert "| mlp-400-200-100-sgd |  |  | 0 | 97.70% | not run |  |" in md
    assert "cnn-conv32-adam seed 0:" in capsys.readouterr().out
