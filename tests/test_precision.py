"""model.precision: bfloat16 keeps fc7 within cosine 0.999 of float32; low-precision weight
copies live on each tower's own device; float16 is refused without GPUs."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_config
from estimator_vgg.config import ConfigError, DevicesConfig
from estimator_vgg.devices import tower_devices
from estimator_vgg.estimator import model_fn


def test_float16_is_refused_on_cpus(tmp_path):
    with pytest.raises(ConfigError, match="model.precision: float16 is for GPUs"):
        make_config(tmp_path, model={"precision": "float16"})
    with pytest.raises(ConfigError, match="model.precision: 'int8' is not a precision"):
        make_config(tmp_path, model={"precision": "int8"})


def test_float16_gpu_towers_each_compute_from_their_own_half_copy():
    devices = tower_devices(DevicesConfig(gpus=(0, 1)))
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.get_or_create_global_step()
        features = {"image": tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3]),
                    "path": tf.compat.v1.placeholder(tf.string, [None])}
        spec = model_fn(features, None, tf.estimator.ModeKeys.PREDICT,
                        {"devices": devices, "precision": "float16"})
    convs = [op for op in graph.get_operations() if op.type in ("Conv2D", "MatMul")]
    assert len(convs) == 2 * 15
    for op in convs:
        assert op.get_attr("T") == tf.float16, op.name
        var = op.inputs[1].op
        while var.type in ("ReadVariableOp", "Identity"):
            var = var.inputs[0].op
        tower = devices.index(op.device)
        assert var.name.startswith(f"tower_{tower}/vgg16/") and var.device == op.device
    assert spec.predictions["fc7"].dtype == tf.float32


@pytest.mark.slow
def test_bfloat16_fc7_stays_within_cosine_0999_of_float32(tmp_path, demo_paths):
    from estimator_vgg.estimator import build_estimator
    from estimator_vgg.input import input_fn

    out = {}
    for precision in ("float32", "bfloat16"):
        cfg = make_config(tmp_path, model={"precision": precision},
                          devices={"cpus": 2, "batch_size": 2})
        rows = list(build_estimator(cfg).predict(input_fn(cfg, demo_paths)))
        out[precision] = np.stack([r["fc7"] for r in rows])
    a, b = out["float32"], out["bfloat16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999, cos
    assert not np.array_equal(a, b)  # it really computed in bfloat16
