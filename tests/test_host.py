import platform
from pathlib import Path

import pytest
import torch

from bench import cli, finalists, host


def test_tune_sets_threads_and_reports_what_it_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert host.tune(threads=False, malloc=False) == {"threads": before, "malloc_keep": False}
        settings = host.tune()
        assert settings["threads"] == torch.get_num_threads() == host.default_threads()
        assert settings["malloc_keep"] is (platform.libc_ver()[0] == "glibc")
    finally:
        torch.set_num_threads(before)


def test_one_core_is_left_to_everything_else(monkeypatch):
    for cores, threads in ((1, 1), (2, 1), (16, 15)):
        monkeypatch.setattr(host, "cores", lambda cores=cores: cores)
        assert host.default_threads() == threads
        assert host.threads_per_worker(2) == max(1, cores // 2)


def test_cores_are_the_ones_this_process_may_use(monkeypatch):
    monkeypatch.setattr(host.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(host.os, "cpu_count", lambda: 64)
    assert host.cores() == 3  # a container's CPU set, not the host's 64
    monkeypatch.delattr(host.os, "sched_getaffinity")
    assert host.cores() == 64
    monkeypatch.setattr(host.os, "cpu_count", lambda: None)
    assert host.cores() == 1


def test_an_explicit_omp_num_threads_wins(monkeypatch):
    # 16 cores: the default would be 15 threads, so keeping 2 can only be OMP_NUM_THREADS's doing
    # (on a 3-core machine the default is 2 as well, and the old form of this test always passed)
    monkeypatch.setattr(host, "cores", lambda: 16)
    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: asked[-1] if asked else 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert host.tune()["threads"] == 2 and asked == []
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert host.tune()["threads"] == 15 and asked == [15]


def test_every_command_that_trains_applies_the_host_settings(tiny_mnist, tmp_path, monkeypatch,
                                                             one_thread):
    """reproduce and finalize train as study does: with the allocator setting (and finalize with
    study's threads; reproduce keeps its own one thread). promote only reads a table."""
    calls = []
    monkeypatch.setattr(host, "tune", lambda **kw: calls.append(kw) or {})
    assert cli.main(["reproduce", "ENTRY=cnn-conv32-adam", "N_SEEDS=1", "DEVICE=cpu",
                     f"RESULTS_DIR={tmp_path}"]) == 0
    assert calls == [{"threads": False}] and torch.get_num_threads() == 1

    class Stop(Exception):
        pass

    def finalize(*args, **kwargs):
        raise Stop(list(calls))

    calls.clear()
    monkeypatch.setattr(cli, "_folder", lambda name, overrides, command="": Path(tmp_path))
    monkeypatch.setattr(finalists, "finalize", finalize)
    with pytest.raises(Stop) as seen:
        cli.main(["finalize", "mlp_vs_cnn", "DEVICE=cpu", f"RESULTS_DIR={tmp_path}"])
    assert seen.value.args[0] == [{}]  # before any training: threads and allocator
