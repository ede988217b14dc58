"""The Ray executor's pieces that need no cluster (and no Ray): resources, GPU renumbering,
the message when Ray is missing."""
import sys

import pytest

from conftest import make_config


def test_a_shard_sees_its_gpus_renumbered_from_zero(tmp_path):
    from estimator_vgg.cluster import shard_config, task_resources

    cfg = make_config(tmp_path, devices={"gpus": [2, 5]}, run={"executor": "ray"})
    shard = shard_config(cfg)
    assert shard.devices.gpus == (0, 1)  # Ray's CUDA_VISIBLE_DEVICES holds the two it chose
    assert task_resources(cfg.run.ray, cfg.devices) == {"num_cpus": 1.0, "num_gpus": 2}
    cpu = make_config(tmp_path, devices={"cpus": 2}, run={"ray": {"cpus_per_task": 2}})
    assert shard_config(cpu) is cpu
    assert task_resources(cpu.run.ray, cpu.devices) == {"num_cpus": 2.0, "num_gpus": 0}


def test_without_ray_installed_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    from estimator_vgg.cluster import connect
    from estimator_vgg.job import JobError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(JobError, match=r"pip install 'estimator-vgg\[ray\]'"):
        connect(None)


def test_staged_parts_reach_the_output_only_when_the_driver_lists_them(tmp_path):
    import numpy as np

    from estimator_vgg.manifest import Fingerprint
    from estimator_vgg.storage import Folder
    from estimator_vgg.store import Store
    from estimator_vgg.writer import write_part
    from estimator_vgg.output import read_features

    def store():
        s = Store(tmp_path / "out", "parquet")
        s.open(Fingerprint.from_dict({"output_format": "parquet"}), {}, overwrite=False)
        return s

    s = store()
    stage = s.stage_dir("run1")
    rows = np.ones((2, 4096), np.float32)
    write_part(Folder(stage), "parquet", 0, ["a.jpg", "b.jpg"], rows, [])
    assert not (tmp_path / "out" / "features").exists()  # staged, not in the output yet
    s.adopt_staged(stage, 0)
    s.record(0, 2, 0)
    # A shard of that run, still dying after its driver was killed, writes part 1 late.
    write_part(Folder(stage), "parquet", 1, ["c.jpg"], rows[:1], [])
    (tmp_path / "out" / "manifest.json.123-abcd.tmp").write_text("{")
    s._lock.close()
    s = store()  # the rerun: the late part is never adopted, and the leftovers are gone
    assert not (tmp_path / "out" / ".staging").exists()
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert read_features(tmp_path / "out")[0] == ["a.jpg", "b.jpg"]
    with pytest.raises(Exception, match="not in"):
        s.adopt_staged(s.stage_dir("run2"), 1)  # reported written, but not there


def test_a_node_that_cannot_reach_the_output_store_names_itself_and_the_uri():
    from estimator_vgg.cluster import _reach_store
    from estimator_vgg.job import JobError
    from estimator_vgg.sections import OutputConfig

    cfg = OutputConfig(dir="s3://bucket/out?X-Amz-Signature=abc", retries=0,
                       request_timeout_s=2, storage_options={"endpoint_url":
                                                             "http://127.0.0.1:9"})
    with pytest.raises(JobError) as e:
        _reach_store(cfg, "vm/node-7")
    assert "node vm/node-7 cannot reach output.dir s3://bucket/out" in str(e.value)
    assert "abc" not in str(e.value)
