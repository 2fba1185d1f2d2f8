import gzip
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from bench import cli, leaderboard, models, storage

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ", ".join(cli.study_names())


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # also when the package is not installed


def bench(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=ENV)


@pytest.mark.parametrize(("args", "message"), [
    (["study", "nope"], f"error: unknown study 'nope'; valid: {STUDIES}"),
    (["study", "NAME=../studies/mlp_vs_cnn"],
     f"error: unknown study '../studies/mlp_vs_cnn'; valid: {STUDIES}"),
    (["study", "studies/mlp_vs_cnn"],
     f"error: unknown study 'studies/mlp_vs_cnn'; valid: {STUDIES}"),
    (["study"], f"error: no study named; give NAME=..., one of: {STUDIES}"),
    (["study", "mlp_vs_cnn", "TRIAL=5"],
     "error: unknown setting 'TRIAL'; valid: NAME, TRIALS, TIMEOUT, DEVICE, SEED, SMOKE, "
     "RESULTS_DIR, WORKERS, STORAGE, PRECISION, FAST, REPLICATES, SAMPLER"),
    (["study", "mlp_vs_cnn", "PRECISION=fp16"],
     "error: PRECISION='fp16' is not valid: expected auto or fp32 or bf16"),
    (["study", "mlp_vs_cnn", "FAST=2"], "error: FAST='2' is not valid: expected 0 or 1"),
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
    (["study", "mlp_vs_cnn", "WORKERS=0"],
     "error: WORKERS='0' is not valid: expected a positive integer"),
    (["study", "mlp_vs_cnn", "STORAGE=mysql://bench:pw@db.lan/studies"],
     "error: STORAGE='mysql://bench:***@db.lan/studies' is not valid: expected a "
     "postgresql://user@host[:port]/database URL (or no STORAGE: the journal in the results "
     "folder)"),
    (["worker", "mlp_vs_cnn", "TRIALS=5"],
     "error: unknown setting 'TRIALS'; valid: NAME, STORAGE, WORKERS, SMOKE, RESULTS_DIR"),
    (["finalize", "mlp_vs_cnn", "K=0"], "error: K='0' is not valid: expected a positive integer"),
    (["finalize", "mlp_vs_cnn", "TRIALS=3"],
     "error: unknown setting 'TRIALS'; valid: NAME, K, SEEDS, DEVICE, REFRESH, SMOKE, "
     "RESULTS_DIR"),
    (["finalize", "nope"], f"error: unknown study 'nope'; valid: {STUDIES}"),
    (["bench-study", "mlp_vs_cnn", "WORKERS=1,0"],
     "error: WORKERS='1,0' is not valid: expected a comma-separated list of positive integers"),
    (["bench-study", "nope"], f"error: unknown study 'nope'; valid: {STUDIES}"),
    (["report", "mlp_vs_cnn", "SEEDS=3"],
     "error: unknown setting 'SEEDS'; valid: NAME, SMOKE, RESULTS_DIR"),
    (["soak", "MINUTES=nan"],
     "error: MINUTES='nan' is not valid: expected a number of minutes > 0"),
    (["soak", "NAME=mlp_vs_cnn"],
     "error: unknown setting 'NAME'; valid: STORAGE, MINUTES, WORKERS, SEED, RESULTS_DIR"),
])
def test_bad_input_is_one_line_and_nonzero_and_writes_nothing(args, message, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # in-process: a `python -m bench` per case costs ~3 s of imports
    code = cli.main([*args, f"RESULTS_DIR={tmp_path / 'r'}"])
    assert code == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "r").exists() and not (tmp_path / "results").exists()


def test_bad_input_from_a_real_process_is_one_line_and_exit_2(tmp_path):
    proc = bench("study", "nope", "TRIALS=0", f"RESULTS_DIR={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: TRIALS='0' is not valid: expected a positive integer"
    assert not (tmp_path / "r").exists()


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


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("edit", "message"), [
    (("Space(batch_size=(64,)", 'Space(archs=("mlp", "vit"), batch_size=(64,)'),
     "error: unknown architecture 'vit'; valid: cnn, "),
    (('"cnn": {"archs": ("cnn",)}}', "}"),
     "error: a study compares at least two families; got {'mlp': {'archs': ('mlp',)}}"),
    (('"cnn": {"archs": ("cnn",)}', '"cnn": {"archs": ("mlp",)}'),
     "error: families 'mlp' and 'cnn' are the same space; a family must narrow some field"),
    (('"mlp": {"archs": ("mlp",)}', '"mlp": "mlp"'),
     "error: family 'mlp' must be a dict of the Space fields it narrows, e.g. {'archs': "
     "('mlp',)}; got 'mlp'"),
    (('"cnn": {"archs": ("cnn",)}', '"cnn": {"arch": ("cnn",)}'),
     "error: family 'cnn': unknown field 'arch'; valid: archs, optimizers, schedules, "),
    (('"cnn": {"archs": ("cnn",)}', '"cnn": {"archs": ("cnn",), "lr": (0.1, 1.0)}'),
     "error: family 'cnn': lr=(0.1, 1.0) is not a range inside the study's (0.001, 0.01)"),
    (('"cnn": {"archs": ("cnn",)}', '"cnn": {"archs": ()}'),
     "error: family 'cnn' has no architecture; choose from ('mlp', 'cnn')"),
    (('optimizers=("adam",)', 'optimizers=("adam", "lion")'),
     "error: unknown optimizer 'lion'; valid: adam, adamw, rmsprop, sgd"),
    (("lr=(1e-3, 1e-2)", "lr=(0.0, 1e-2)"), "error: lr range (0.0, 0.01) must be > 0"),
    (("lr=(1e-3, 1e-2)", "lr=(1e-2, 1e-3)"), "error: lr range (0.01, 0.001) has low > high"),
    (("batch_size=(64,)", "batch_size=(64, 0)"), "error: batch sizes (64, 0) must all be > 0"),
    (('"width": (16, 32)', '"width": (32, 16)'), "error: mlp.width range (32, 16) has low > high"),
])
def test_a_bad_study_file_is_one_line_before_anything_is_read_or_written(
        study_file, edit, message, tmp_path, capsys):
    study_file("bad", edit)
    code, err = _cli(capsys, "study", "bad", "DEVICE=cpu", f"RESULTS_DIR={tmp_path / 'r'}")
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_corrupt_mnist_is_one_line_and_writes_nothing(tiny_mnist, study_file, tmp_path, capsys):
    study_file("tiny")
    packed = tiny_mnist / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(packed.read_bytes()))
    raw[-1] ^= 1
    packed.write_bytes(gzip.compress(bytes(raw)))
    code, err = _cli(capsys, "study", "tiny", "DEVICE=cpu", f"RESULTS_DIR={tmp_path / 'r'}")
    assert code == 2
    assert err.startswith(f"error: corrupt MNIST file {packed}: md5 ") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def _journal_with(path: Path, study_name: str, **user_attrs) -> None:
    db = storage.open_storage(None, path)
    sub = optuna.create_study(storage=db, study_name=study_name, direction="maximize")
    trial = sub.ask()
    for k, v in user_attrs.items():
        trial.set_user_attr(k, v)
    sub.tell(trial, 0.5)


@pytest.mark.parametrize(("prepare", "message"), [
    (lambda j: j.write_text("not,a,journal\n"),
     "error: {j} is not an Optuna journal; move it away or choose another RESULTS_DIR"),
    (lambda j: _journal_with(j, "other.mlp"),
     "error: {j} holds other studies (other.mlp), not tiny.r0.mlp, tiny.r0.cnn; choose "
     "another RESULTS_DIR"),
    (lambda j: _journal_with(j, "tiny.r0.mlp", split_hash="0" * 16, space_hash="0" * 16),
     "error: {j} holds trials of another search space, split size or precision (the study "
     "file changed); continue it with the file it was run with or choose another "
     "RESULTS_DIR"),
])
def test_a_results_folder_of_another_study_is_refused_untouched(
        tiny_mnist, study_file, prepare, message, tmp_path, capsys):
    study_file("tiny")
    journal = tmp_path / "r" / "tiny" / "optuna.journal"
    journal.parent.mkdir(parents=True)
    prepare(journal)
    before = journal.read_bytes()
    code, err = _cli(capsys, "study", "tiny", "DEVICE=cpu", f"RESULTS_DIR={tmp_path / 'r'}")
    assert code == 2
    assert err == message.format(j=journal) + "\n"
    assert journal.read_bytes() == before
    assert sorted(p.name for p in journal.parent.iterdir()) == ["optuna.journal"]


def test_a_worker_without_a_study_is_one_line_and_creates_nothing(study_file, tmp_path, capsys):
    study_file("tiny")
    code, err = _cli(capsys, "worker", "tiny", f"RESULTS_DIR={tmp_path / 'r'}")
    assert code == 2
    assert err == (f"error: no study at {tmp_path / 'r' / 'tiny' / 'optuna.journal'}; start it "
                   "first with `make study NAME=tiny`\n")
    assert not (tmp_path / "r").exists()


def test_an_unreachable_storage_is_one_line_without_its_password(
        tiny_mnist, study_file, tmp_path, capsys):
    study_file("tiny")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://bench:hunter2@127.0.0.1:{port}/studies"
    code, err = _cli(capsys, "study", "tiny", "DEVICE=cpu", f"STORAGE={url}",
                     f"RESULTS_DIR={tmp_path / 'r'}")
    assert code == 2
    assert err.startswith(f"error: cannot open STORAGE=postgresql://bench:***@127.0.0.1:{port}/")
    assert "hunter2" not in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_study_whose_trials_mostly_fail_exits_1_with_one_line(
        tiny_mnist, study_file, tmp_path, capsys):
    study_file("diverging", ("lr=(1e-3, 1e-2)", "lr=(1e6, 1e7)"),
               ('optimizers=("adam",)', 'optimizers=("sgd",)'))
    code, err = _cli(capsys, "study", "diverging", "DEVICE=cpu", "TRIALS=20", "WORKERS=1",
                     f"RESULTS_DIR={tmp_path / 'r'}")
    assert code == 1
    assert err.startswith("error: 5 of the 5 trials run so far failed (nonfinite 5); stopped ")
    assert err.count("\n") == 1
    assert len(pd.read_parquet(tmp_path / "r" / "diverging" / "trials.parquet")) == 5


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
    (["promote"], f"error: no study named; give NAME=..., one of: {STUDIES}"),
    (["promote", "NAME=nope"], f"error: unknown study 'nope'; valid: {STUDIES}"),
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
    assert "| cnn-conv32-adam | test (accuracy) |" in md
    assert "| 1 | [97.5%, 98.5%) accuracy |" in md
    assert "| mlp-400-200-100-sgd |  |  |  | 0 | 97.70% accuracy | not run |  |" in md
    assert "| lenet5-lecun98 |  |  |  | 0 | 0.95% error | not run |  |" in md
    assert "cnn-conv32-adam seed 0:" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "message"), [
    ("from bench.study import Study\nSTUDY = Study(\n",
     "error: studies/broken.py:2: SyntaxError: '(' was never closed"),
    ("import os\nraise RuntimeError('no GPU here')\n",
     "error: studies/broken.py:2: RuntimeError: no GPU here"),
    ("import bench.nope\n", "error: studies/broken.py:1: ModuleNotFoundError: No module named "
                            "'bench.nope'"),
    ("from bench.study import Study\n\nSTUDY = Study(\n    question='q',\n    families={},\n)\n",
     "error: studies/broken.py:3: TypeError: Study.__init__() missing 1 required positional "
     "argument: 'space'"),
    ("from bench.space import Space\n\nSPACE = Space(optimizer=('adam',))\n",
     "error: studies/broken.py:3: TypeError: Space.__init__() got an unexpected keyword argument "
     "'optimizer'; valid: archs, batch_size, lr, epochs, optimizers, "),
])
def test_a_study_file_that_fails_to_load_is_one_line_with_its_line(
        text, message, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "broken.py").write_text(text)
    monkeypatch.setattr(cli, "STUDIES_DIR", folder)
    code, err = _cli(capsys, "study", "broken", "DEVICE=cpu", f"RESULTS_DIR={tmp_path / 'r'}")
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_list_shows_a_model_registered_by_a_study_file(study_file, monkeypatch, capsys):
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))  # the registration is undone
    study_file("own_model", ("from bench.study import Study\n",
                             "from bench.study import Study\nfrom bench.models import "
                             "register_model\nfrom torch import nn\n\n\n"
                             "@register_model('tiny-mlp', 'mlp')\ndef tiny_mlp():\n"
                             "    '''A study's own model.'''\n"
                             "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"))
    assert cli.main(["list"]) == 0
    cells = [[c.strip() for c in re.split("[│┃]", line)[1:-1]]
             for line in capsys.readouterr().out.splitlines() if "│" in line or "┃" in line]
    rows = {row[0]: row[1:] for row in cells}  # name -> kind, space, description
    assert rows["name"] == ["kind", "space", "description"]
    assert rows["tiny-mlp"] == ["mlp", "fixed", "A study's own model."]
    assert rows["mlp-400-200-100"][0] == "mlp" and rows["cnn-conv32"][0] == "cnn"


def test_make_targets_do_not_echo_their_command_lines(tmp_path):
    """Quiet alike: an echo would show PYTHON=... (and for some targets could show a password)."""
    recipes = [line for line in (ROOT / "Makefile").read_text().splitlines()
               if line.startswith("\t") and "$(PY)" in line]
    assert recipes and all(line.startswith("\t@") for line in recipes)
    proc = subprocess.run(["make", "leaderboard", f"RESULTS_DIR={tmp_path}",
                           f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV)
    assert proc.returncode != 0 and "error: no leaderboard results" in proc.stderr
    assert "-m bench" not in proc.stdout + proc.stderr and "PYTHON=" not in proc.stdout
