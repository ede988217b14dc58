"""run.executor: ray on a real two-node Ray cluster on loopback: the output equals a local run's
bitwise, a worker killed mid-shard costs nothing, a killed driver resumes, and every Ray
process the tests start is stopped at the end, also when a test fails.

The cluster is made of `ray start --head` and `ray start --address` processes (CPU only, one
CPU each, so two shards run at once on two nodes), with token authentication on, as a real
cluster should be.
"""
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO, ROOT, job_config
from ray_cluster import kill_a_shard_worker_of, loopback_cluster

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (./run.sh test "
                                        "installs it)")

pytestmark = pytest.mark.slow  # a cluster and several jobs: about 3 minutes

BAD = ROOT / "tests" / "fixtures" / "bad"
ROWS = "output.rows_per_part=3"  # 10 files: 4 shards


@pytest.fixture(scope="module")
def cluster():
    with loopback_cluster(nodes=2, cpus_per_node=1, env={"PYTHONPATH": str(ROOT)}) as c:
        yield c


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """7 demo images, a truncated JPEG, an HTML page named .jpg, a symlink out of the folder."""
    top = tmp_path_factory.mktemp("ray-inputs")
    d = top / "imgs"
    shutil.copytree(DEMO, d, ignore=shutil.ignore_patterns("*.md"))
    shutil.copy(BAD / "truncated.jpg", d / "space" / "broken.jpg")
    shutil.copy(BAD / "not_an_image.jpg", d / "zzz_last.jpg")
    shutil.copy(BAD / "good.jpg", top / "secret.jpg")
    os.symlink(top / "secret.jpg", d / "link_out.jpg")
    return d


def _cmd(cfg, *overrides):
    return [sys.executable, "-m", "estimator_vgg", str(cfg), ROWS, *overrides]


def _job(tmp_path, images, out, *overrides, env):
    return subprocess.run(_cmd(job_config(tmp_path, images, out), *overrides), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def local_output(inputs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray-local")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    r = _job(tmp, inputs, tmp / "out", env=env)
    assert r.returncode == 3, r.stderr[-3000:]
    return tmp / "out"


def _assert_same(out, ref):
    """Same rows, same order, same values bitwise, same errors, same parts."""
    feats, ref_feats = pd.read_parquet(out / "features"), pd.read_parquet(ref / "features")
    assert feats["path"].tolist() == ref_feats["path"].tolist()
    np.testing.assert_array_equal(np.stack(feats["fc7"]), np.stack(ref_feats["fc7"]))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "errors"),
                                  pd.read_parquet(ref / "errors"))
    parts = json.loads((out / "manifest.json").read_text())["parts"]
    assert parts == json.loads((ref / "manifest.json").read_text())["parts"]
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))


def _ray_run(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["runs"][-1]


def test_a_ray_run_equals_the_local_run(cluster, inputs, local_output, tmp_path):
    out = tmp_path / "out"
    r = _job(tmp_path, inputs, out, "run.executor=ray", f"run.ray.address={cluster.address}",
             env=cluster.env)
    assert r.returncode == 3, r.stderr[-3000:]
    _assert_same(out, local_output)
    run = _ray_run(out)
    assert run["executor"] == "ray" and run["ray_nodes"] == 2
    # in the order they finished
    assert sorted(s["parts"] for s in run["shards"]) == [[f"part-{i:05d}"] for i in range(4)]
    assert len({s["node"] for s in run["shards"]}) == 2, run["shards"]  # both nodes worked
    assert "shard part-00003 (1 images from zzz_last.jpg) done on" in r.stderr


def test_a_ray_run_over_a_list_of_remote_entries_equals_the_local_run(cluster, inputs,
                                                                      tmp_path):
    """Remote entries (a truncated JPEG and a missing one among them) read by the shards
    themselves: the same rows, order and values as the local executor."""
    from http_files import serve

    files = {f"/{p.name}": p.read_bytes() for p in sorted(inputs.rglob("*"))
             if p.is_file() and not p.is_symlink()}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    with serve(files) as srv:
        lst = tmp_path / "l.txt"
        lst.write_text("".join(srv.url(n) + "\n" for n in [*files, "/gone.jpg"]))
        cfg = tmp_path / "list.yaml"
        cfg.write_text(job_config(tmp_path, inputs, tmp_path / "x").read_text().replace(
            f"  dir: {inputs}\n", f"  list: {lst}\n"))
        local = subprocess.run(_cmd(cfg, f"output.dir={tmp_path / 'local'}"), env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert local.returncode == 3, local.stderr[-3000:]
        r = subprocess.run(_cmd(cfg, f"output.dir={tmp_path / 'ray'}", "run.executor=ray",
                                f"run.ray.address={cluster.address}"), env=cluster.env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 3, r.stderr[-3000:]
    _assert_same(tmp_path / "ray", tmp_path / "local")
    errors = pd.read_parquet(tmp_path / "ray" / "errors")
    assert dict(zip(errors["reason"], errors["path"]))["missing"] == srv.url("/gone.jpg")
    assert _ray_run(tmp_path / "ray")["executor"] == "ray"


def test_a_worker_killed_from_outside_is_replaced_and_its_shard_redone(
        cluster, inputs, local_output, tmp_path):
    out = tmp_path / "out"
    log = open(tmp_path / "driver.log", "w+")
    proc = subprocess.Popen(_cmd(job_config(tmp_path, inputs, out), "run.executor=ray",
                                 f"run.ray.address={cluster.address}",
                                 "run.ray.parts_per_shard=2"),  # 2 shards of 2 parts
                            env=cluster.env, cwd=tmp_path, stdout=log, stderr=log, text=True)
    killed = kill_a_shard_worker_of(cluster, proc, log)
    _assert_same(out, local_output)
    shards = _ray_run(out)["shards"]
    assert sorted(s["parts"] for s in shards) == [["part-00000", "part-00001"],
                                                  ["part-00002", "part-00003"]]
    assert killed not in [s["pid"] for s in shards]  # its shard was redone by another worker


def test_a_worker_killed_after_writing_its_part_is_retried_and_the_part_listed_once(
        cluster, inputs, local_output, tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "killed-once"
    # Forwarded to the shards: the first worker to finish writing a part's files is SIGKILLed
    # before it can report back; Ray reruns its shard, which writes the part again.
    env = dict(cluster.env, ESTIMATOR_VGG_FAULT="part_files:1",
               ESTIMATOR_VGG_FAULT_ONCE=str(marker))
    r = _job(tmp_path, inputs, out, "run.executor=ray", f"run.ray.address={cluster.address}",
             env=env)
    assert marker.exists(), "no worker was killed"
    assert r.returncode == 3, r.stderr[-3000:]
    _assert_same(out, local_output)
    assert sorted(s["parts"] for s in _ray_run(out)["shards"]) == [[f"part-{i:05d}"]
                                                                   for i in range(4)]
    assert not (out / ".staging").exists()


def test_a_killed_driver_resumes_to_the_same_output(cluster, inputs, local_output, tmp_path):
    out = tmp_path / "out"
    env = dict(cluster.env, ESTIMATOR_VGG_FAULT="manifest:2")  # dies after listing 2 parts
    killed = _job(tmp_path, inputs, out, "run.executor=ray",
                  f"run.ray.address={cluster.address}", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(json.loads((out / "manifest.json").read_text())["parts"]) == 2
    resumed = _job(tmp_path, inputs, out, "run.executor=ray",
                   f"run.ray.address={cluster.address}", env=cluster.env)
    assert resumed.returncode == 3, resumed.stderr[-3000:]
    _assert_same(out, local_output)
    assert sorted(s["parts"] for s in _ray_run(out)["shards"]) == [["part-00002"],
                                                                   ["part-00003"]]


def test_a_shard_no_node_can_run_is_refused_at_once(cluster, inputs, tmp_path):
    started = time.time()
    r = _job(tmp_path, inputs, tmp_path / "out", "run.executor=ray",
             f"run.ray.address={cluster.address}", "devices.cpus=null", "devices.gpus=[0,1]",
             env=cluster.env)
    assert r.returncode == 1
    assert "no node of the Ray cluster has what one shard needs" in r.stderr
    assert "2 GPUs from devices.gpus" in r.stderr and "1 CPUs, 0 GPUs" in r.stderr
    assert time.time() - started < 120


@pytest.mark.parametrize("token", ["wrong", "missing"])
def test_a_wrong_or_missing_token_stops_with_a_message_not_a_traceback(cluster, inputs,
                                                                       tmp_path, token):
    env = dict(cluster.env, RAY_AUTH_TOKEN=secrets.token_hex(16))
    if token == "missing":
        del env["RAY_AUTH_TOKEN"]
        env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    r = _job(tmp_path, inputs, tmp_path / "out", "run.executor=ray",
             f"run.ray.address={cluster.address}", env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "could not start or join the Ray cluster" in r.stderr
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_an_empty_address_starts_a_private_local_cluster(inputs, local_output, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT),
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    before = _ray_daemons()
    r = _job(tmp_path, inputs, out, "run.executor=ray", "run.ray.address=", env=env)
    assert r.returncode == 3, r.stderr[-3000:]
    _assert_same(out, local_output)
    assert _ray_run(out)["ray_nodes"] == 1
    deadline = time.time() + 30  # the job's own cluster is gone once the job is
    while _ray_daemons() - before and time.time() < deadline:
        time.sleep(0.5)
    assert not _ray_daemons() - before


def _ray_daemons():
    """Pids of Ray's node daemons (GCS server, raylet) running on this machine."""
    found = set()
    for d in Path("/proc").iterdir():
        try:
            exe = (d / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if exe.endswith((b"/gcs_server", b"/raylet")):
            found.add(int(d.name))
    return found
