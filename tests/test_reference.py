"""The Estimator's fc7 equals eager Keras VGG16's (an independent implementation) loaded with the
same weights, over 1-3 towers and batch sizes 1-5; every weights format converts to the same
checkpoint bit for bit, so one format stands for all in the Keras comparison."""
import numpy as np
import pytest

from conftest import make_config, rel_diff

FORMATS = ["keras215", "published", "npy"]


@pytest.fixture(scope="module")
def prepared(weight_files, tmp_path_factory):
    from estimator_vgg import weights
    from estimator_vgg.config import ModelConfig

    cache = tmp_path_factory.mktemp("cache")
    return {fmt: weights.prepare(ModelConfig(weights=str(weight_files[fmt]), cache_dir=cache,
                                             allow_pickle=True))
            for fmt in FORMATS}


def test_keras_reads_both_h5_layouts_alike(keras_fc7):
    np.testing.assert_array_equal(keras_fc7["keras215"], keras_fc7["published"])


def test_every_format_converts_to_the_same_checkpoint(prepared):
    import tensorflow as tf

    readers = {f: tf.train.load_checkpoint(p.checkpoint) for f, p in prepared.items()}
    names = readers["keras215"].get_variable_to_shape_map()
    assert "global_step" in names and "vgg16/fc2/kernel" in names
    for name in names:
        ref = readers["keras215"].get_tensor(name)
        for f in FORMATS[1:]:
            np.testing.assert_array_equal(readers[f].get_tensor(name), ref, err_msg=f"{f} {name}")


@pytest.mark.slow
@pytest.mark.parametrize("towers", [1, 2, 3])
def test_estimator_fc7_matches_eager_keras(towers, prepared, keras_fc7, demo_paths, tmp_path):
    from estimator_vgg.estimator import build_estimator
    from estimator_vgg.input import input_fn

    fmt = "published"  # the ImageNet file's layout; the others give the same checkpoint
    reference = keras_fc7["keras215"]
    for batch_size in range(1, 6):
        cfg = make_config(tmp_path, devices={"cpus": towers, "batch_size": batch_size})
        est = build_estimator(cfg, prepared[fmt])
        rows = list(est.predict(input_fn(cfg, demo_paths)))
        assert [r["path"].decode() for r in rows] == demo_paths
        fc7 = np.stack([r["fc7"] for r in rows])
        assert fc7.shape == (len(demo_paths), 4096) and fc7.dtype == np.float32
        worst = rel_diff(fc7, reference).max()
        assert worst <= 1e-5, f"{fmt}, {towers} towers, batch {batch_size}: rel diff {worst:.2e}"
