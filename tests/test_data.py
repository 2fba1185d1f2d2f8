import gzip
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from bench import data
from tests.conftest import write_mnist


def test_load_train_reads_tiny_files(tiny_mnist):
    raw = data.load_train()
    assert raw.images.shape == (1200, 28, 28) and raw.images.dtype == torch.uint8
    assert raw.labels.shape == (1200,) and set(raw.labels.tolist()) == set(range(10))
    assert set(raw.md5) == set(data.TRAIN_FILES)


def test_load_test_is_separate(tiny_mnist):
    raw = data.load_test()
    assert raw.images.shape == (200, 28, 28) and set(raw.md5) == set(data.TEST_FILES)


def test_bad_checksum_is_one_clear_error(tiny_mnist):
    path = tiny_mnist / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(data.DataError, match=r"corrupt MNIST file .*train-labels.*expected"):
        data.load_train()


def test_missing_file_names_the_file(tiny_mnist):
    (tiny_mnist / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="missing MNIST file .*train-images-idx3-ubyte"):
        data.load_train()


def test_truncated_gzip_is_reported(tiny_mnist):
    path = tiny_mnist / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(data.DataError, match="unreadable MNIST file"):
        data.load_train()


def test_mnist_dir_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match="is not a directory"):
        data.load_train()


def test_split_is_seeded_disjoint_and_complete():
    labels = torch.arange(6000) % 10
    tr1, va1 = data.stratified_split(labels, 1000, seed=3)
    tr2, va2 = data.stratified_split(labels, 1000, seed=3)
    _, va3 = data.stratified_split(labels, 1000, seed=4)
    assert torch.equal(va1, va2) and torch.equal(tr1, tr2)
    assert not torch.equal(va1, va3)
    assert len(va1) == 1000 and len(tr1) == 5000
    assert torch.equal(torch.sort(torch.cat([tr1, va1])).values, torch.arange(6000))


def test_split_is_stratified():
    gen = torch.Generator().manual_seed(0)
    labels = torch.multinomial(torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 20000, True,
                               generator=gen)
    _, val = data.stratified_split(labels, 2000, seed=0)
    expected = torch.bincount(labels, minlength=10) * 2000 / 20000
    got = torch.bincount(labels[val], minlength=10)
    assert (got - expected).abs().max() <= 1.0


@pytest.mark.parametrize(("name", "mean", "std"),
                         [("none", 0.0, 1.0), ("half", 0.5, 0.5), ("mnist", 0.1307, 0.3081)])
def test_normalizations(name, mean, std):
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, 0, 0] = 255
    x = data.to_inputs(images, name, torch.device("cpu"))
    assert x.shape == (1, 1, 28, 28)
    assert x.min().item() == pytest.approx((0 - mean) / std)
    assert x.max().item() == pytest.approx((1 - mean) / std)


def test_unknown_normalization_lists_choices():
    message = "unknown normalization 'zscore'; valid: none, half, mnist"
    with pytest.raises(ValueError, match=message):
        data.to_inputs(torch.zeros(1, 28, 28, dtype=torch.uint8), "zscore", torch.device("cpu"))


def test_train_val_hash_tracks_split(tiny_mnist):
    raw = data.load_train()
    a = data.train_val(raw, 200, 0, "none", torch.device("cpu"))
    b = data.train_val(raw, 200, 1, "none", torch.device("cpu"))
    assert len(a.x_train) == 1000 and len(a.x_val) == 200
    assert a.split_hash != b.split_hash
    assert a.split_hash == data.train_val(raw, 200, 0, "none", torch.device("cpu")).split_hash


def test_real_mnist_checksums(real_mnist):
    raw = data.load_train()
    assert raw.images.shape == (60000, 28, 28)
    assert raw.md5 == {k: data.MNIST_MD5[k] for k in data.TRAIN_FILES}


def test_online_download_fetches_only_the_files_asked_for(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    monkeypatch.setattr(data, "MNIST_MD5", write_mnist(source))
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setattr(data, "DOWNLOAD_DIR", tmp_path / "cache")
    fetched = []

    def fake_download(url, root, filename, md5):
        fetched.append(filename)
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.copy(source / filename, Path(root) / filename)

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download)
    assert len(data.load_train().labels) == 1200
    assert fetched == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    data.load_train()
    assert len(fetched) == 2  # cached files are not fetched again


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setattr(data, "DOWNLOAD_DIR", tmp_path / "cache")

    def offline(url, root, filename, md5):
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision does before fetching
        raise RuntimeError("Error downloading\nTried mirror, got:\n<urlopen error>")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    with pytest.raises(data.DataError) as info:
        data.load_train()
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("could not download train-images-idx3-ubyte.gz")
    assert "set MNIST_DIR" in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_bit_flipped_gzip_is_one_clear_error(tiny_mnist):
    path = tiny_mnist / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=r"(unreadable|corrupt) MNIST file"):
        data.load_train()
