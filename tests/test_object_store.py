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

from conftest import DEMO, ROOT, run_cli_without, run_py
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
        if fmt == "csv":   # compare reads it too: the local output and the bucket agree
            tmp_local = tmp_path / "here"
            assert job(tmp_path, tmp_local, f"output.format={fmt}").returncode == 0
            c = run_py("-m", "estimator_vgg", "compare", tmp_local, "s3://out/run",
                       "--max-rel-l2", "0", "--storage-options",
                       json.dumps(srv.storage_options))
            assert c.returncode == 0 and "AGREE" in c.stdout, c.stdout + c.stderr


def test_an_s3_output_needs_the_remote_extra_and_a_store_with_create_only_writes(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"input:\n  dir: {DEMO}\noutput:\n  dir: s3://b/out\n"
                   f"model:\n  weights: synthetic\n")
    r = run_cli_without("s3fs", cfg, "--dry-run", cwd=tmp_path)
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


def test_a_missing_bucket_is_named_before_any_work(tmp_path):
    with s3({"out/.keep": b""}) as srv:
        r = job(tmp_path, "s3://nobucket/run", storage_options=srv.storage_options)
        assert r.returncode == 1, r.stderr[-2000:]
        assert "output.dir s3://nobucket/run: its bucket does not exist" in r.stderr
        assert "Traceback" not in r.stderr


def test_the_dry_run_reads_an_s3_output_and_writes_nothing(tmp_path):
    with s3({"out/.keep": b""}) as srv:
        r = job(tmp_path, "s3://out/run", "--dry-run", storage_options=srv.storage_options)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "output       s3://out/run (parquet): new output" in r.stdout
        assert keys(srv, "out") == [".keep"]
        assert not (tmp_path / "s3:").exists()


@pytest.mark.parametrize("fault", ["part_files:2", "manifest:2", "manifest_json:1",
                                   "manifest_json:2", "features_tmp:3", "batch:4"])
def test_a_driver_killed_at_each_commit_point_resumes_to_the_uninterrupted_output(
        tmp_path, local, fault):
    """part_files: a part's objects written, its record not; manifest: a record created;
    manifest_json: before manifest.json is rewritten (when the output is opened, and at the
    end, after every record); features_tmp: before a part's objects are uploaded."""
    with s3({"out/.keep": b""}) as srv:
        opts = srv.storage_options
        r = job(tmp_path, "s3://out/run", fault=fault, storage_options=opts)
        assert r.returncode == -9, (r.returncode, r.stderr[-2000:])   # the kill, not an error
        try:
            paths, fc7, _ = rows("s3://out/run", opts)   # whole committed parts only
            n = len(paths)
            assert paths == local["parquet"][0][:n] and fc7 == local["parquet"][1][:n]
        except FileNotFoundError:   # killed before the first manifest.json
            assert fault == "manifest_json:1"
        again = job(tmp_path, "s3://out/run", storage_options=opts)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "that process is gone" in again.stderr   # the lease, taken over at once
        assert rows("s3://out/run", opts) == local["parquet"]
        from estimator_vgg.output import Output
        from estimator_vgg.storage import location
        from types import SimpleNamespace
        committed = {r["key"] for p in Output(location("s3://out/run", SimpleNamespace(
            storage_options=opts))).parts for r in p.objects["features"]}
        assert {k[len("run/"):] for k in keys(srv, "out", "run/features/")} == committed


def test_a_second_driver_is_refused_naming_the_holder_and_the_first_finishes(tmp_path,
                                                                             local):
    """The first driver reads its images from a slow HTTP server (1.5 s a request, one at a
    time), so it holds the output while the second one starts."""
    from http_files import serve

    names, fc7 = local["parquet"][0], local["parquet"][1]
    with s3({"out/.keep": b""}) as srv, \
            serve({f"/{n}": (DEMO / n).read_bytes() for n in names}, delay_s=1.5) as web:
        opts = srv.storage_options
        lst = tmp_path / "slow.txt"
        lst.write_text("".join(web.url(f"/{n}") + "\n" for n in names))
        first = job(tmp_path, "s3://out/run", f"input.list={lst}", "input.read_concurrency=1",
                    storage_options=opts, popen=True, name="a.yaml")
        try:
            deadline = time.time() + 120
            while not keys(srv, "out", "run/_lease/") and time.time() < deadline:
                assert first.poll() is None, first.communicate()[1][-2000:]
                time.sleep(0.2)
            second = job(tmp_path, "s3://out/run", f"input.list={lst}",
                         storage_options=opts, name="b.yaml")
            assert first.poll() is None, "the first driver ended before the second one tried"
            _, err = first.communicate(timeout=300)
        finally:
            if first.poll() is None:
                first.kill()
        assert second.returncode == 1, second.stderr[-2000:]
        assert (f"of pid {first.pid} on {socket.gethostname()}" in second.stderr
                and "alive on this machine" in second.stderr), second.stderr[-2000:]
        assert first.returncode == 0, err[-2000:]
        got_paths, got, _ = rows("s3://out/run", opts)
        assert got == fc7 and got_paths == [web.url(f"/{n}") for n in names]


def test_a_lease_held_on_another_machine_is_taken_over_once_it_expires(tmp_path, local):
    """A driver killed on another machine leaves a lease nobody refreshes: a rerun is refused
    until it is older than its period (the store's clock), then goes on; break_lease goes on
    at once."""
    with s3({"out/.keep": b""}) as srv:
        opts = srv.storage_options
        held = {"run_id": "r-elsewhere", "host": "another-machine", "pid": 4242,
                "since": "2026-12-06T10:00:00", "period_s": 60}
        srv.client.put_object(Bucket="out", Key="run/_lease/00000000.json",
                              Body=json.dumps(held).encode())
        refused = job(tmp_path, "s3://out/run", storage_options=opts)
        assert refused.returncode == 1, refused.stderr[-2000:]
        assert ("run r-elsewhere of pid 4242 on another-machine" in refused.stderr
                and "output.break_lease=true" in refused.stderr), refused.stderr[-2000:]
        # the same lease with a period of 2 s, last refreshed now: a rerun 3 s later takes it
        srv.client.put_object(Bucket="out", Key="run/_lease/00000000.json",
                              Body=json.dumps({**held, "period_s": 2}).encode())
        time.sleep(3)   # past its period (last-modified has a resolution of a second)
        r = job(tmp_path, "s3://out/run", storage_options=opts)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "not refreshed for" in r.stderr
        assert rows("s3://out/run", opts) == local["parquet"]
        srv.client.put_object(Bucket="out", Key="run/_lease/00000002.json",
                              Body=json.dumps(held).encode())   # held again, fresh
        broken = job(tmp_path, "s3://out/run", "output.break_lease=true",
                     storage_options=opts)
        assert broken.returncode == 0 and "taking over from" in broken.stderr, \
            broken.stderr[-2000:]


def test_a_late_shard_of_a_killed_run_never_touches_a_committed_object(tmp_path, local):
    """A shard of an earlier run still dying writes its part after the rerun committed the
    same part: under its own run's name, so the committed object is untouched, readers never
    see it, and the next completed run removes it."""
    with s3({"out/.keep": b""}) as srv:
        opts = srv.storage_options
        assert job(tmp_path, "s3://out/run", storage_options=opts).returncode == 0
        committed = keys(srv, "out", "run/features/")
        before = {k: srv.client.head_object(Bucket="out", Key=k)["ETag"] for k in committed}
        late = committed[1].replace(committed[1].split(".")[1], "deadbeefdeadbeef-00000000")
        srv.client.put_object(Bucket="out", Key=late, Body=b"a late shard's bytes")
        assert {k: srv.client.head_object(Bucket="out", Key=k)["ETag"]
                for k in committed} == before
        assert rows("s3://out/run", opts) == local["parquet"]
        assert job(tmp_path, "s3://out/run", storage_options=opts).returncode == 0  # no-op run
        assert keys(srv, "out", "run/features/") == committed


def test_a_create_whose_answer_was_lost_is_recognised_as_its_own(monkeypatch):
    """A create-only write whose response was lost is retried (by the client, or by us) and
    meets its own object (412): it is this write's, not another writer's, when the bytes are
    the same; other bytes there are a real conflict."""
    from types import SimpleNamespace

    from estimator_vgg import storage

    with s3({"out/.keep": b""}) as srv:
        bucket = storage.Bucket("s3://out/run", SimpleNamespace(
            storage_options=srv.storage_options, retries=1, request_timeout_s=10))
        real = storage._put_s3

        def lost_answer(b, name, data, create):
            real(b, name, data, create)        # the object is made...
            raise FileExistsError("412")       # ...and the retry of the lost request meets it

        monkeypatch.setattr(storage, "_put_s3", lost_answer)
        ref = bucket.create("_commits/000000000000.json", b'{"run": "mine"}')
        assert ref.size == len(b'{"run": "mine"}')
        monkeypatch.setattr(storage, "_put_s3", real)
        with pytest.raises(storage.Exists):
            bucket.create("_commits/000000000000.json", b'{"run": "another"}')
        assert bucket.read("_commits/000000000000.json") == b'{"run": "mine"}'


def test_a_driver_killed_mid_multipart_upload_leaves_nothing_and_resumes(tmp_path):
    """A part larger than output.multipart_mb goes up in pieces; killed between two of them,
    the upload stays incomplete (invisible to readers); the rerun aborts it and commits every
    part once, the same rows as an uninterrupted run."""
    from store_driver import part_rows

    with s3({"out/.keep": b""}) as srv:
        args = [ROOT / "tests" / "store_driver.py", "s3://out/big",
                json.dumps(srv.storage_options), 3, 400, 5]   # 400 rows: 6.5 MB a part
        r = run_py(*args, env={"ESTIMATOR_VGG_FAULT": "multipart:2"})
        assert r.returncode == -9, r.stderr[-2000:]
        uploads = srv.client.list_multipart_uploads(Bucket="out").get("Uploads", [])
        assert len(uploads) == 1 and "/features/part-00001." in uploads[0]["Key"]
        assert rows("s3://out/big", srv.storage_options)[0] == part_rows(0, 400)[0]
        r = run_py(*args)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "aborted 1 multipart uploads" in r.stderr
        assert not srv.client.list_multipart_uploads(Bucket="out").get("Uploads")
        paths, fc7, _ = rows("s3://out/big", srv.storage_options)
        want = [part_rows(k, 400) for k in range(3)]
        assert paths == [p for ps, _ in want for p in ps]
        assert fc7 == [r.tobytes() for _, m in want for r in m]
        assert len(keys(srv, "out", "big/features/")) == 3


def test_index_and_neighbors_read_an_output_on_s3(tmp_path):
    """`estimator-vgg index` on an output on S3 builds on this machine and writes index/ to
    the store; neighbors fetches it once into a local cache, fetches it again when the index
    changes, finds what exact search finds, and writes duplicate pairs to the store."""
    pytest.importorskip("faiss")
    import shutil

    imgs = tmp_path / "imgs"
    shutil.copytree(DEMO, imgs, ignore=shutil.ignore_patterns("*.md"))
    shutil.copy(DEMO / "chelsea_cat.JPG", imgs / "copy_of_cat.jpg")
    cache = tmp_path / "index-cache"
    env = {"ESTIMATOR_VGG_INDEX_CACHE": str(cache)}
    with s3({"out/.keep": b""}) as srv:
        opts = json.dumps(srv.storage_options)
        r = job(tmp_path, "s3://out/run", storage_options=srv.storage_options, input_dir=imgs)
        assert r.returncode == 0, r.stderr[-2000:]

        def cli(*args):
            return run_py("-m", "estimator_vgg", *args, "--storage-options", opts, env=env)

        r = cli("index", "s3://out/run", "--pca", "4")
        assert r.returncode == 0 and "in s3://out/run/index" in r.stdout, r.stderr[-2000:]
        assert "run/index/index.json" in keys(srv, "out", "run/index/")
        via = cli("neighbors", "s3://out/run", "chelsea_cat.JPG", "-k", "3")
        exact = cli("neighbors", "s3://out/run", "chelsea_cat.JPG", "-k", "3", "--exact")
        assert via.returncode == 0 and exact.returncode == 0, via.stderr + exact.stderr
        assert "ivf" not in via.stdout and "index over 4-d PCA codes" in via.stdout
        assert via.stdout.splitlines()[1:] == exact.stdout.splitlines()[1:]
        assert via.stdout.splitlines()[1].split() == ["1", "1.0000", "copy_of_cat.jpg"]
        assert len(list(cache.iterdir())) == 1   # one output, one local copy
        assert cli("index", "s3://out/run", "--rebuild", "--kind", "flat").returncode == 0
        again = cli("neighbors", "s3://out/run", "chelsea_cat.JPG", "-k", "3")
        assert "index over 4096-d fc7" in again.stdout, again.stdout   # the copy followed
        dups = cli("neighbors", "s3://out/run", "--duplicates", "0.9999")
        assert dups.returncode == 0, dups.stderr[-2000:]
        assert "wrote 1 pairs to s3://out/run/index/duplicates.parquet" in dups.stdout
        assert srv.storage_options["secret"] not in via.stdout + via.stderr + dups.stdout


def test_a_long_run_killed_before_its_manifest_reads_back_from_blocks_of_records(tmp_path):
    """300 parts committed, then killed before manifest.json was rewritten: the records are
    the truth; the first 256 are also in one block object (one read instead of 256), and
    without it the records alone give the same parts."""
    from types import SimpleNamespace

    from estimator_vgg.output import read_output_manifest, segment_name
    from estimator_vgg.storage import location

    with s3({"out/.keep": b""}) as srv:
        args = [ROOT / "tests" / "store_driver.py", "s3://out/long",
                json.dumps(srv.storage_options), 300, 1]
        r = run_py(*args, env={"ESTIMATOR_VGG_FAULT": "manifest_json:2"})
        assert r.returncode == -9, r.stderr[-2000:]
        loc = location("s3://out/long", SimpleNamespace(storage_options=srv.storage_options))
        assert loc.exists(segment_name(0)) and not loc.exists(segment_name(1))
        parts = read_output_manifest(loc).parts
        assert [p.index for p in parts] == list(range(300))
        loc.delete(segment_name(0))
        assert read_output_manifest(loc).parts == parts
        assert run_py(*args).returncode == 0   # resumes: nothing left to commit
        assert len(read_output_manifest(loc).parts) == 300


def test_an_output_copied_from_a_folder_to_a_bucket_resumes_there_and_keeps_its_parts(
        tmp_path):
    """A folder output copied to a bucket (its parts under their fixed names, no objects in
    its records) resumes there: its parts are kept and read, new images add new parts."""
    import shutil

    imgs = tmp_path / "imgs"
    shutil.copytree(DEMO, imgs, ignore=shutil.ignore_patterns("*.md"))
    folder = tmp_path / "folder"
    assert job(tmp_path, folder, input_dir=imgs).returncode == 0
    with s3({"out/.keep": b""}) as srv:
        for f in folder.rglob("*"):
            if f.is_file() and f.name != ".lock":
                srv.client.put_object(Bucket="out", Key=f"copied/{f.relative_to(folder)}",
                                      Body=f.read_bytes())
        before = keys(srv, "out", "copied/features/")
        shutil.copy(DEMO / "chelsea_cat.JPG", imgs / "zz_new.jpg")
        r = job(tmp_path, "s3://out/copied", storage_options=srv.storage_options,
                input_dir=imgs)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "1 to do" in r.stderr
        assert set(before) < set(keys(srv, "out", "copied/features/"))
        paths, fc7, _ = rows("s3://out/copied", srv.storage_options)
        old_paths, old_fc7, _ = rows(folder)
        assert paths == old_paths + ["zz_new.jpg"] and fc7[:-1] == old_fc7
