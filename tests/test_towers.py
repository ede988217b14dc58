"""Tower replication: each tower computes on its own device from its own copy of the weights;
uneven batches; the model refuses to predict without its checkpoint."""
import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_config
from estimator_vgg.config import DevicesConfig
from estimator_vgg.devices import session_config, tower_devices
from estimator_vgg.estimator import build_estimator, model_fn
from estimator_vgg.towers import pad_to_towers

PREDICT = tf.estimator.ModeKeys.PREDICT


def _build(devices, rows=5):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.get_or_create_global_step()
        features = {"image": tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3]),
                    "path": tf.compat.v1.placeholder(tf.string, [None])}
        spec = model_fn(features, None, PREDICT, {"devices": devices})
    return graph, features, spec


def _variable_of(tensor):
    """The variable-creating op a kernel input reads (through ReadVariableOp / Identity)."""
    op = tensor.op
    while op.type in ("ReadVariableOp", "Identity"):
        op = op.inputs[0].op
    assert op.type in ("VarHandleOp", "VariableV2"), op.type
    return op


def _check_each_tower_reads_its_own_weights(graph, devices):
    by_device = {d: {"Conv2D": 0, "MatMul": 0} for d in devices}
    for op in graph.get_operations():
        if op.type not in ("Conv2D", "MatMul"):
            continue
        var = _variable_of(op.inputs[1])
        tower = devices.index(op.device)
        assert var.device == op.device, (op.name, op.device, var.name, var.device)
        prefix = "vgg16/" if tower == 0 else f"tower_{tower}/vgg16/"
        assert var.name.startswith(prefix), (op.name, var.name)
        by_device[op.device][op.type] += 1
    assert by_device == {d: {"Conv2D": 13, "MatMul": 2} for d in devices}


@pytest.mark.parametrize("n", [2, 3])
def test_each_cpu_tower_runs_on_its_device_with_its_own_weights(n):
    devices = tower_devices(DevicesConfig(cpus=n))
    graph, features, spec = _build(devices)
    _check_each_tower_reads_its_own_weights(graph, devices)
    config = session_config(DevicesConfig(cpus=n))
    assert config.allow_soft_placement is False  # a wrong map must fail, not collapse
    with graph.as_default(), tf.compat.v1.Session(graph=graph, config=config) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(spec.scaffold.local_init_op)
        meta = tf.compat.v1.RunMetadata()
        out = sess.run(spec.predictions["fc7"],
                       {features["image"]: np.zeros([n + 1, 224, 224, 3], np.float32)},
                       options=tf.compat.v1.RunOptions(
                           trace_level=tf.compat.v1.RunOptions.FULL_TRACE),
                       run_metadata=meta)
    assert out.shape == (n + 1, 4096)
    # Grappler may fuse conv + bias + relu into one node; it keeps the layer's name.
    layer = re.compile(r"^tower_(\d+)/(block\d_conv\d|fc[12])$")
    ran_on = {}
    for dev in meta.step_stats.dev_stats:
        for node in dev.node_stats:
            m = layer.match(node.node_name)
            if m:
                ran_on.setdefault(int(m.group(1)), set()).add((m.group(2), dev.device))
    for i in range(n):
        assert len(ran_on[i]) == 15, ran_on[i]
        assert all(d.endswith(f"device:CPU:{i}") for _, d in ran_on[i]), ran_on[i]


def test_gpu_towers_are_placed_on_their_gpus_in_the_graph():
    # No GPU here: the graph is built, not run, and its placement is checked as written.
    cfg = DevicesConfig(gpus=(0, 1, 2, 3))
    devices = tower_devices(cfg)
    assert devices == [f"/device:GPU:{i}" for i in range(4)]
    graph, _, spec = _build(devices)
    _check_each_tower_reads_its_own_weights(graph, devices)
    splits = [op for op in graph.get_operations() if op.type in ("Split", "ConcatV2")
              and op.name.startswith(("split", "concat"))]
    assert splits and all(op.device == "/device:CPU:0" for op in splits)
    copies = [op for op in graph.get_operations() if op.type == "AssignVariableOp"
              and op.inputs[0].op.name.startswith("tower_")
              and op.inputs[1].op.type not in ("Fill", "Const")]  # not the zeros initializers
    assert len(copies) == 3 * 15 * 2
    for op in copies:  # each copy is filled from tower 0's variable of the same name
        assert op.inputs[0].op.name.split("/", 1)[1] == _variable_of(op.inputs[1]).name
    for op in copies:  # each copy is filled on its own GPU
        tower = int(op.inputs[0].op.name.split("/")[0].split("_")[1])
        assert op.device == op.inputs[0].op.device == f"/device:GPU:{tower}", op.name
    config = session_config(cfg)
    assert config.gpu_options.visible_device_list == "0,1,2,3"
    assert config.allow_soft_placement is False


def test_gpu_ids_are_renumbered_as_the_session_sees_them():
    config = session_config(DevicesConfig(gpus=(2, 3)))
    assert config.gpu_options.visible_device_list == "2,3"
    assert tower_devices(DevicesConfig(gpus=(2, 3))) == ["/device:GPU:0", "/device:GPU:1"]


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7])
def test_pads_batch_to_a_multiple_of_the_tower_count(rows):
    out = pad_to_towers(tf.ones([rows, 2, 2, 3]), 3).numpy()
    assert out.shape[0] == max(3, -(-rows // 3) * 3)
    assert out[:rows].all() and not out[rows:].any()


def test_model_fn_refuses_training_and_evaluation():
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match="only predicts"):
            model_fn({"image": tf.zeros([1, 224, 224, 3]), "path": tf.constant(["a"])}, None,
                     tf.estimator.ModeKeys.TRAIN, {"devices": ["/device:CPU:0"]})


def test_refuses_to_predict_without_the_checkpoint(tmp_path, demo_paths):
    from estimator_vgg.input import input_fn
    from estimator_vgg.weights import PreparedWeights

    cfg = make_config(tmp_path, devices={"cpus": 2})
    empty = PreparedWeights(tmp_path / "no-checkpoint", "", "synthetic", "", True)
    est = build_estimator(cfg, empty)
    with pytest.raises(tf.errors.InvalidArgumentError, match="refusing to predict"):
        next(est.predict(input_fn(cfg, demo_paths[:1])))


def test_a_gpu_the_machine_lacks_stops_the_job_naming_it(tmp_path):
    from estimator_vgg.devices import DeviceError

    cfg = make_config(tmp_path, devices={"gpus": [0, 7]})
    found = len(tf.config.list_physical_devices("GPU"))
    if found > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(DeviceError, match="devices.gpus names GPU .*7.*TensorFlow sees"):
        build_estimator(cfg)
    assert not (tmp_path / "cache").exists()  # stopped before converting any weights


class _TraceSteps(tf.compat.v1.train.SessionRunHook):
    """Traces every step of the Estimator's own session: where each op really ran."""

    def __init__(self):
        self.devices_by_layer = {}

    def before_run(self, run_context):
        return tf.compat.v1.train.SessionRunArgs(None, options=tf.compat.v1.RunOptions(
            trace_level=tf.compat.v1.RunOptions.FULL_TRACE))

    def after_run(self, run_context, run_values):
        layer = re.compile(r"^(?:tower_(\d+)/)?(block\d_conv\d|fc[12])$")
        for dev in run_values.run_metadata.step_stats.dev_stats:
            for node in dev.node_stats:
                m = layer.match(node.node_name)
                if m:
                    self.devices_by_layer.setdefault(int(m.group(1) or 0), set()).add(
                        (m.group(2), dev.device.split("device:")[-1]))


def test_the_jobs_estimator_runs_each_tower_on_its_own_device(tmp_path, demo_paths):
    """The Estimator that build_estimator makes (its RunConfig, its session), traced during a
    real predict: without the session config's device map the towers would all run on one
    CPU, silently, since Estimator's default session soft-places."""
    from estimator_vgg.input import input_fn

    cfg = make_config(tmp_path, devices={"cpus": 2, "batch_size": 1})
    est = build_estimator(cfg)
    session = est.config.session_config
    assert session.device_count["CPU"] == 2 and session.allow_soft_placement is False
    trace = _TraceSteps()
    rows = list(est.predict(input_fn(cfg, demo_paths[:2]), hooks=[trace],
                            yield_single_examples=False))
    assert sum(len(r["path"]) for r in rows) == 2
    assert set(trace.devices_by_layer) == {0, 1}, trace.devices_by_layer
    for tower, ran in trace.devices_by_layer.items():
        assert {d for _, d in ran} == {f"CPU:{tower}"}, (tower, ran)
        assert len({name for name, _ in ran}) == 15  # every conv and fc layer of the tower
