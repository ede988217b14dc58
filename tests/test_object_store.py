"""output.dir on an object store, against a real S3 API server on loopback (moto's server
mode): the same rows as a local output, bit for bit, in every format; exactly-once commits
through kills, a second driver, a store that fails, a store that ignores create-only writes;
the readers; secrets kept out of everything written."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from conftest import DEMO, ROOT, run_py
from s3_server import s3

pytestmark = pytest.mark.slow


def job(tmp_path, out, *overrides, fault=None, name="job.yaml", storage_options=None,
        popen=False, input_dir=DEMO, extra_env=None):
    """The job as a user runs it: demo images, synthetic weights, one CPU tower of batch 1,
    parts of 2 rows (4 parts), output where `out` says."""
    cfg = {"input": {"dir": str(input_dir), "max_error_fraction": 1.0},
           "output": {"dir": str(out), "rows_per_part": 2},
           "model": {"weights": "synthetic", "cache_dir": str(ROOT / ".cache")},
           "devices": {"cpus": 1, "batch_size": 1}}
    if storage_options is not None:
        cfg["output"]["storage_options"] = storage_options
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    env = dict(extra_env or {})
    if fault:
        env["ESTIMATOR_VGG_FAULT"] = fault
    if popen:
        return subprocess.Popen([sys.executable, "-m", "estimator_vgg", str(path), *overrides],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                                                    PYTHONPATH=str(ROOT), **env))
    return run_py("-m", "estimator_vgg", path, *overrides, cwd=tmp_path, env=env)


def rows(out, storage_options=None):
    """(paths, fc7 bytes per row, errors as (path, reason)) of an output, as this package's
    readers see it."""
    from estimator_vgg.output import Output
    from estimator_vgg.storage import location
    from types import SimpleNamespace

    where = (location(str(out), SimpleNamespace(storage_options=storage_options))
             if storage_options is not None else out)
    o = Output(where)
    paths, m = o.read_features()
    errors = [e for p in o.parts for e in zip(*o.error_rows(p.index, ("path", "reason")).values())]
    return paths, [r.tobytes() for r in m], errors


def keys(srv, bucket, prefix=""):
    out = srv.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in out)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The same job into a local folder, per format: what every store output must equal."""
    tmp = tmp_path_factory.mktemp("local")
    outs = {}
    for fmt in ("parquet", "npy", "csv"):
        r = job(tmp, tmp / fmt, f"output.format={fmt}", name=f"{fmt}.yaml")
        assert r.returncode == 0, r.stderr[-3000:]
        outs[fmt] = rows(tmp / fmt)
    return outs


@pytest.mark.parametrize("fmt", ["parquet", "npy", "csv"])
def test_an_output_on_s3_equals_the_local_output_bit_for_bit(tmp_path, local, fmt):
    with s3({"out/.keep": b""}) as srv:
        r = job(tmp_path, "s3://out/run", f"output.format={fmt}",
                storage_options=srv.storage_options)
        assert r.returncode == 0, r.stderr[-3000:]
        assert rows("s3://out/run", srv.storage_options) == local[fmt]
        feats = keys(srv, "out", "run/features/")
        assert len(feats) == 4 * (2 if fmt == "npy" else 1)   # exactly the committed parts
        if fmt == "parquet":   # a plain table for everyone else too, once the run completed
            import pandas as pd
            df = pd.read_parquet("s3://out/run/features", storage_options=srv.storage_options)
            assert [bytes(np.asarray(v, np.float32).tobytes()) for v in df["fc7"]] == \
                local[fmt][1]
        # the secret reached S3 (the server checked no credentials here, see the auth test)
        # and nothing written or printed
        secret = srv.storage_options["secret"]
        manifest = srv.client.get_object(Bucket="out", Key="run/manifest.json")["Body"].read()
        assert secret.encode() not in manifest and secret not in r.stdout + r.stderr
        assert json.loads(manifest)["config"]["output"]["storage_options"]["secret"] == \
            "<redacted>"
        again = job(tmp_path, "s3://out/run", f"output.format={fmt}",
                    storage_options=srv.storage_options)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-2000:]


def test_an_s3_output_needs_the_remote_extra_and_a_store_with_create_only_writes(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"input:\n  dir: {DEMO}\noutput:\n  dir: s3://b/out\n"
                   f"model:\n  weights: synthetic\n")
    code = ("import sys; sys.modules['s3fs'] = None; from estimator_vgg.cli import main; "
            f"sys.exit(main([{str(cfg)!r}, '--dry-run']))")
    r = run_py("-c", code, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "output.dir: s3://b/out needs s3fs, which is not installed" in r.stderr
    assert "ESTIMATOR_VGG_REMOTE=1" in r.stderr
    r = run_py("-m", "estimator_vgg", cfg, "output.dir=nosuch://b/out", "--dry-run",
               cwd=tmp_path)
    assert r.returncode == 2 and "nosuch:// is a scheme no installed filesystem" in r.stderr
    r = run_py("-m", "estimator_vgg", cfg, "output.dir=memory://b/out", "--dry-run",
               cwd=tmp_path)
    assert r.returncode == 2 and "create-only writes" in r.stderr and "s3://" in r.stderr
    assert not list(tmp_path.glob("*:*")) and not (tmp_path / "s3:").exists()


def test_the_dry_run_reads_an_s3_output_and_writes_nothing(tmp_path):
    with s3({"out/.keep": b""}) as srv:
        r = job(tmp_path, "s3://out/run", "--dry-run", storage_options=srv.storage_options)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "output       s3://out/run (parquet): new output" in r.stdout
        assert keys(srv, "out") == [".keep"]
        assert not (tmp_path / "s3:").exists()
