"""run.executor: ray with no shared disk: input and output on an S3 API server (moto's server
mode), a real two-node Ray cluster on loopback whose nodes each have their own cache
(ESTIMATOR_VGG_NODE_CACHE). The converted checkpoint travels to the nodes through Ray's object
store; the output equals a local run's bitwise; a worker killed mid-shard is redone and its
part committed once. Every process the tests start is stopped at the end."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import DEMO, ROOT, run_py
from ray_cluster import end_driver, kill_a_shard_worker_of, loopback_cluster
from s3_server import s3

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (./run.sh test "
                                        "installs it)")

pytestmark = pytest.mark.slow
BAD_FIXTURES = ROOT / "tests" / "fixtures" / "bad"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Two nodes, each with its own cache folder, and room in the object store for the
    weights (528 MB)."""
    caches = [tmp_path_factory.mktemp(f"node{n}-cache") for n in range(2)]
    with loopback_cluster(nodes=2, cpus_per_node=1, env={"PYTHONPATH": str(ROOT)},
                          node_env=[{"ESTIMATOR_VGG_NODE_CACHE": str(c)} for c in caches],
                          object_store_mb=1500) as c:
        yield c, caches


@pytest.fixture(scope="module")
def images():
    """The demo images, a truncated JPEG and an HTML page named .jpg, as S3 objects."""
    objects = {f"imgs/set/{p.relative_to(DEMO)}": p.read_bytes() for p in DEMO.rglob("*")
               if p.is_file() and p.suffix != ".md"}
    objects["imgs/set/space/broken.jpg"] = (BAD_FIXTURES / "truncated.jpg").read_bytes()
    objects["imgs/set/zzz_last.jpg"] = (BAD_FIXTURES / "not_an_image.jpg").read_bytes()
    objects["out/.keep"] = b""   # the output's bucket
    return objects


def config(tmp_path, srv, out, cache, name="job.yaml"):
    cfg = {"input": {"dir": "s3://imgs/set", "storage_options": srv.storage_options,
                     "max_error_fraction": 1.0},
           "output": {"dir": str(out), "rows_per_part": 3,
                      "storage_options": srv.storage_options},
           "model": {"weights": "synthetic", "cache_dir": str(cache)},
           "devices": {"cpus": 1, "batch_size": 1}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def rows(out, srv):
    from types import SimpleNamespace

    from estimator_vgg.output import Output
    from estimator_vgg.storage import location
    o = Output(location(str(out), SimpleNamespace(storage_options=srv.storage_options)))
    paths, m = o.read_features()
    errors = [e for p in o.parts for e in zip(*o.error_rows(p.index, ("path", "reason")).values())]
    return paths, [r.tobytes() for r in m], errors, o.manifest


def ray_driver(tmp_path, cfg, cluster, *overrides):
    """The driver in the background; its stderr in a file the test reads as it grows."""
    log = open(tmp_path / "driver.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "estimator_vgg", str(cfg), "run.executor=ray",
                             f"run.ray.address={cluster.address}", *overrides],
                            env=cluster.env, cwd=tmp_path, stdout=log, stderr=log, text=True)
    return proc, log


def wait_for(log, text, proc, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        log.seek(0)
        if text in log.read():
            return
        assert proc.poll() is None, open(log.name).read()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared: {open(log.name).read()[-3000:]}")


def test_input_and_output_on_s3_need_no_shared_disk(nodes, images, tmp_path):
    cluster, caches = nodes
    with s3(images) as srv:
        local = run_py("-m", "estimator_vgg", config(tmp_path, srv, tmp_path / "local",
                                                     tmp_path / "local-cache", "local.yaml"))
        assert local.returncode == 3, local.stderr[-3000:]
        want = rows(tmp_path / "local", srv)
        driver_cache = tmp_path / "driver-cache"
        proc, log = ray_driver(tmp_path, config(tmp_path, srv, "s3://out/ray", driver_cache),
                               cluster)
        try:
            wait_for(log, "ray: 3 shards", proc)
            # the driver's converted checkpoint is gone for everyone once the shards started
            shutil.move(driver_cache, tmp_path / "moved-away")
            proc.wait(timeout=600)
        finally:
            stderr = end_driver(proc, log)
        assert proc.returncode == 3, stderr[-3000:]
        got = rows("s3://out/ray", srv)
        assert got[:3] == want[:3]
        shards = got[3].runs[-1].details["shards"]
        assert len({s["node"] for s in shards}) == 2, shards   # both nodes worked
        used = {Path(s["checkpoint"]).parents[2] for s in shards}
        assert used == set(caches), used   # each node restored its own copy
        for c in caches:
            assert list((c / "checkpoints").iterdir())   # kept for the next run
        assert srv.storage_options["secret"] not in stderr


def test_a_worker_killed_mid_shard_is_redone_and_its_parts_committed_once(nodes, images,
                                                                          tmp_path):
    cluster, _ = nodes
    with s3(images) as srv:
        assert run_py("-m", "estimator_vgg", config(tmp_path, srv, tmp_path / "local",
                                                    tmp_path / "cache", "local.yaml")
                      ).returncode == 3
        want = rows(tmp_path / "local", srv)
        proc, log = ray_driver(tmp_path, config(tmp_path, srv, "s3://out/ray",
                                                tmp_path / "cache"), cluster,
                               "run.ray.parts_per_shard=2")
        killed = kill_a_shard_worker_of(cluster, proc, log,
                                        lambda: wait_for(log, "ray: 2 shards", proc))
        got = rows("s3://out/ray", srv)
        assert got[:3] == want[:3]
        assert killed not in [s["pid"] for s in got[3].runs[-1].details["shards"]]
        listed = srv.client.list_objects_v2(Bucket="out", Prefix="ray/features/")
        assert len(listed.get("Contents", [])) == 3   # the killed attempt's objects are gone
