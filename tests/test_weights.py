"""Weights: every file layout reads back the seeded arrays; wrong files are named; the checkpoint
is converted once and reused; `imagenet` and URL weights go through Keras' hash-checked
download, tested against a real HTTP server on loopback (no mock of the downloader)."""
import json
import logging

import h5py
import numpy as np
import pytest

from estimator_vgg import weights
from estimator_vgg.config import ModelConfig
from estimator_vgg.weights import WeightsError


def _same(arrays, seed_arrays):
    assert set(arrays) == {n for n in seed_arrays if n != "predictions"}
    for name, (k, b) in arrays.items():
        np.testing.assert_array_equal(k, seed_arrays[name][0], err_msg=name)
        np.testing.assert_array_equal(b, seed_arrays[name][1], err_msg=name)


@pytest.mark.parametrize("layout", ["keras215", "published"])
def test_both_keras_h5_layouts_read_back_the_same_weights(layout, weight_files, seed_arrays):
    _same(weights.read_keras_h5(weight_files[layout]), seed_arrays)


def test_keras215_file_really_uses_the_slash_kernel_naming(weight_files):
    with h5py.File(weight_files["keras215"]) as f:
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in f["block1_conv1"].attrs["weight_names"]]
    assert names == ["block1_conv1/kernel:0", "block1_conv1/bias:0"]


def test_tensorflow_vgg_npy_reads_back_the_same_weights(weight_files, seed_arrays):
    _same(weights.read_tfvgg_npy(weight_files["npy"]), seed_arrays)


def test_a_wrong_shape_is_refused_naming_file_and_layer(tmp_path, seed_arrays):
    from weight_files import write_published_h5

    bad = dict(seed_arrays)
    bad["block3_conv2"] = (np.zeros((3, 3, 256, 128), np.float32), np.zeros(128, np.float32))
    f = tmp_path / "bad.h5"
    write_published_h5(bad, f)
    with pytest.raises(WeightsError, match=r"bad.h5: layer block3_conv2 has kernel "
                                           r"\(3, 3, 256, 128\)"):
        weights.read_keras_h5(f)


def test_a_notop_file_is_refused_with_the_reason(tmp_path, seed_arrays):
    from weight_files import write_published_h5

    f = tmp_path / "notop.h5"
    write_published_h5({k: v for k, v in seed_arrays.items() if k.startswith("block")}, f)
    with pytest.raises(WeightsError, match="layer fc1 is missing .a 'notop' file"):
        weights.read_keras_h5(f)


def test_a_file_that_is_not_hdf5_is_named(tmp_path):
    f = tmp_path / "w.h5"
    f.write_bytes(b"<html>404</html>")
    with pytest.raises(WeightsError, match="w.h5: not a readable HDF5 file"):
        weights.read_keras_h5(f)


def test_checkpoint_is_converted_once_and_keyed_by_sha256(weight_files, tmp_path, caplog):
    cfg = ModelConfig(weights=str(weight_files["published"]), cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="estimator_vgg.weights"):
        first = weights.prepare(cfg)
        assert "converting weights" in caplog.text
        caplog.clear()
        again = weights.prepare(cfg)
        assert "converting weights" not in caplog.text
    assert first == again
    assert first.sha256 == weights.sha256_file(weight_files["published"])
    assert first.model_dir.name == first.sha256[:16]
    info = json.loads((first.model_dir / "weights.json").read_text())
    assert info["sha256"] == first.sha256 and not info["synthetic"]
    other = weights.prepare(ModelConfig(weights="synthetic", seed=1, cache_dir=tmp_path))
    assert other.model_dir != first.model_dir and other.synthetic


@pytest.fixture()
def published_bytes(tmp_path, seed_arrays):
    """The seed-0 weights in the layout of Keras' published ImageNet file, as bytes."""
    from weight_files import write_published_h5

    f = tmp_path / "served.h5"
    write_published_h5(seed_arrays, f)
    return f.read_bytes()


def test_imagenet_is_downloaded_once_by_the_real_downloader_md5_checked(
        published_bytes, monkeypatch, tmp_path):
    """The ImageNet path end to end, against a loopback server holding seeded weights in the
    published file's layout: Keras' downloader, its md5 check, the cache, then the checkpoint."""
    import hashlib

    from estimator_vgg import downloads
    from http_files import serve

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with serve({"/vgg16.h5": published_bytes}) as srv:
        monkeypatch.setattr(downloads, "IMAGENET_URL", srv.url("/vgg16.h5"))
        monkeypatch.setattr(downloads, "IMAGENET_MD5", hashlib.md5(published_bytes).hexdigest())
        cfg = ModelConfig(weights="imagenet", cache_dir=tmp_path / "cache")
        prepared = weights.prepare(cfg)
        again = weights.locate(cfg)
        assert srv.hits["/vgg16.h5"] == 1  # cached: the second locate fetched nothing
    cached = tmp_path / "keras" / "models" / downloads.IMAGENET_FILE
    assert cached.read_bytes() == published_bytes
    assert prepared.source == "imagenet" and not prepared.synthetic
    assert again.sha256 == prepared.sha256 == hashlib.sha256(published_bytes).hexdigest()


def test_imagenet_weights_with_a_wrong_md5_are_refused_and_nothing_is_cached(
        published_bytes, monkeypatch, tmp_path):
    """A server that hands out another file at the ImageNet URL (a corrupted mirror, a
    truncated transfer): the md5 check refuses it, the error says what to do, nothing stays
    in Keras' cache, and nothing is converted."""
    import hashlib

    from estimator_vgg import downloads
    from http_files import serve

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with serve({"/vgg16.h5": published_bytes[:-1] + b"x"}) as srv:
        monkeypatch.setattr(downloads, "IMAGENET_URL", srv.url("/vgg16.h5"))
        monkeypatch.setattr(downloads, "IMAGENET_MD5", hashlib.md5(published_bytes).hexdigest())
        cfg = ModelConfig(weights="imagenet", cache_dir=tmp_path / "cache")
        with pytest.raises(WeightsError, match=r"model.weights: imagenet: could not get .*md5 "
                                               + downloads.IMAGENET_MD5):
            weights.prepare(cfg)
    models = tmp_path / "keras" / "models"
    assert not models.exists() or not any(models.iterdir())
    assert not (tmp_path / "cache").exists()


def test_weights_from_a_url_are_cached_once_and_their_sha256_checked(published_bytes, tmp_path,
                                                                     capfd, caplog):
    import hashlib
    import json
    import logging

    from conftest import make_config
    from estimator_vgg import downloads
    from estimator_vgg.runner import run
    from http_files import serve

    sha = hashlib.sha256(published_bytes).hexdigest()
    with serve({"/mirror/vgg16.h5": published_bytes}) as srv:
        url = srv.url("/mirror/vgg16.h5") + "?X-Signature=secret"
        cfg = ModelConfig(weights=url, weights_sha256=sha, cache_dir=tmp_path / "cache")
        with caplog.at_level(logging.INFO, logger="estimator_vgg"):
            first = weights.prepare(cfg)
        # a new presigned URL for the same file: the cache still serves it
        resigned = ModelConfig(weights=url.replace("secret", "other"), weights_sha256=sha,
                               cache_dir=tmp_path / "cache")
        second = weights.prepare(resigned)
        assert srv.hits["/mirror/vgg16.h5"] == 1
        job = make_config(tmp_path, model={"weights": url, "weights_sha256": sha,
                                           "cache_dir": str(tmp_path / "cache")},
                          devices={"cpus": 1, "batch_size": 4})
        run(job)
    assert downloads.url_path(url, tmp_path / "cache").read_bytes() == published_bytes
    assert first.model_dir == second.model_dir and first.sha256 == sha
    manifest = (tmp_path / "out" / "manifest.json").read_text()
    assert "vgg16.h5" in manifest and json.loads(manifest)["fingerprint"]["weights_sha256"] == sha
    printed = capfd.readouterr()
    said = manifest + printed.out + printed.err + caplog.text
    assert "secret" not in said and "secret" not in first.source  # no signature anywhere


def test_a_download_with_the_wrong_sha256_is_refused_and_nothing_is_cached(published_bytes,
                                                                           tmp_path):
    from http_files import serve

    with serve({"/vgg16.h5": published_bytes}) as srv:
        cfg = ModelConfig(weights=srv.url("/vgg16.h5"), weights_sha256="0" * 64,
                          cache_dir=tmp_path / "cache")
        with pytest.raises(WeightsError, match="not the one model.weights_sha256 names"):
            weights.prepare(cfg)
        assert srv.hits["/vgg16.h5"] == 1
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert left == []  # no partial, no mismatching file, no checkpoint


def test_a_url_that_answers_404_says_so_and_caches_nothing(tmp_path):
    from http_files import serve

    with serve({}) as srv:
        with pytest.raises(WeightsError, match="could not get .*gone.h5.*404") as err:
            weights.locate(ModelConfig(weights=srv.url("/gone.h5?sig=abc"),
                                       cache_dir=tmp_path / "cache"))
        assert "sig=abc" not in str(err.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_the_dry_run_names_url_weights_without_fetching_them(published_bytes, tmp_path):
    from conftest import make_config
    from estimator_vgg.plan import dry_run
    from http_files import serve

    with serve({"/vgg16.h5": published_bytes}) as srv:
        cfg = make_config(tmp_path, model={"weights": srv.url("/vgg16.h5?sig=abc")})
        text = dry_run(cfg)
        assert srv.hits["/vgg16.h5"] == 0
    assert "vgg16.h5?...: downloaded on first use into" in text and "sig=abc" not in text


def test_imagenet_without_internet_says_what_to_do(monkeypatch, tmp_path):
    from estimator_vgg import downloads

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(downloads, "IMAGENET_URL", "http://127.0.0.1:9/vgg16.h5")  # refused
    with pytest.raises(WeightsError, match="download that file elsewhere .* set model.weights"):
        weights.prepare(ModelConfig(weights="imagenet", cache_dir=tmp_path))
    assert not (tmp_path / "keras" / "models" / downloads.IMAGENET_FILE).exists()
