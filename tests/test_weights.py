"""Weights: every file layout reads back the seeded arrays; wrong files are named; the checkpoint
is converted once and reused; `imagenet` goes through Keras' hash-checked download."""
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


def test_imagenet_goes_through_keras_hash_checked_download(monkeypatch, weight_files,
                                                           tmp_path):
    import tensorflow as tf

    calls = []

    def fake_get_file(fname, origin, cache_subdir, file_hash):
        calls.append((fname, origin, cache_subdir, file_hash))
        return str(weight_files["published"])

    monkeypatch.setattr(tf.keras.utils, "get_file", fake_get_file)
    prepared = weights.prepare(ModelConfig(weights="imagenet", cache_dir=tmp_path))
    assert calls == [("vgg16_weights_tf_dim_ordering_tf_kernels.h5", weights.IMAGENET_URL,
                      "models", "64373286793e3c8b2b4e3219cbf3544b")]
    assert prepared.source == "imagenet" and not prepared.synthetic


def test_imagenet_without_internet_says_what_to_do(monkeypatch, tmp_path):
    import tensorflow as tf

    def offline(*a, **k):
        raise Exception("URL fetch failure: Temporary failure in name resolution")

    monkeypatch.setattr(tf.keras.utils, "get_file", offline)
    with pytest.raises(WeightsError, match="download that file elsewhere .* set model.weights"):
        weights.prepare(ModelConfig(weights="imagenet", cache_dir=tmp_path))
