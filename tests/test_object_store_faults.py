"""output.dir on a store that fails, a store that lies about create-only writes, and a store
that checks credentials; against real servers on loopback: moto's S3 server, behind
tests/fault_proxy.py where the test sets the faults, or in a process of its own checking
signatures (s3_server.s3_checked)."""
import contextlib
import json
import time

import pandas as pd
import pytest

from conftest import DEMO
from fault_proxy import FaultProxy
from s3_server import s3, s3_checked
from store_jobs import committed, job, local_rows, rows

pytestmark = pytest.mark.slow
OUT = "s3://out/run"
# quick to give up: a stalled request is abandoned after 2 s, and retried twice
GIVE_UP_SOON = {"retries": 2, "request_timeout_s": 2}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return local_rows(tmp_path_factory.mktemp("local"))


@contextlib.contextmanager
def proxied():
    """An S3 server with a fault proxy in front; the storage options point at the proxy."""
    with s3({"out/.keep": b""}) as srv, FaultProxy(srv.endpoint) as px:
        yield srv, px, dict(srv.storage_options, endpoint_url=px.url)


def keys(srv, prefix):
    out = srv.client.list_objects_v2(Bucket="out", Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len("run/"):] for o in out)


def test_a_store_failing_for_a_while_is_retried_and_the_output_equals_an_uninterrupted_run(
        tmp_path, local):
    with proxied() as (srv, px, opts):
        px.add("HEAD", "/run/_lease/00000000.json", "503", times=1)  # opening the output:
        px.add("PUT", "/run/manifest.json", "503", times=1)           # lease, manifest
        px.add("PUT", "/run/features/part-00000", "503", times=2)  # a part's features
        px.add("PUT", "/run/errors/part-00001", "reset", times=2)  # a part's errors
        px.add("PUT", "/run/_commits/000000000002", "stall", times=1)   # a commit record
        px.add("PUT", "/run/_commits/000000000001", "lose", times=1)    # made, answer lost
        t = time.monotonic()
        r = job(tmp_path, OUT, output_options=opts, output=GIVE_UP_SOON)
        took = time.monotonic() - t
        assert r.returncode == 0, r.stderr[-3000:]
        assert rows(OUT, srv.storage_options) == local
        # every fault was met, and each failed request was sent again until it went through
        assert px.served("HEAD", "/run/_lease/00000000.json", "503") == 1
        assert px.served("PUT", "/run/manifest.json", "503") == 1
        assert px.served("PUT", "/run/features/part-00000", "503") == 2
        assert px.served("PUT", "/run/errors/part-00001", "reset") == 2
        assert px.served("PUT", "/run/_commits/000000000002", "stall") == 1
        # the record whose answer was lost: its retry met it (412) and knew it as its own
        assert px.served("PUT", "/run/_commits/000000000001", "lose") == 1
        assert px.served("PUT", "/run/_commits/000000000001", "forwarded") == 1
        for path in ("/run/features/part-00000", "/run/errors/part-00001",
                     "/run/_commits/000000000002"):
            assert px.served("PUT", path, "forwarded") >= 1, px.requests("PUT", path)
        # each part committed once, under one name: the retries wrote no second object
        assert keys(srv, "run/_commits/") == [f"_commits/{i:012d}.json" for i in range(4)]
        assert set(keys(srv, "run/features/") + keys(srv, "run/errors/")) == \
            committed(OUT, srv.storage_options)
        # read back through failures too: each ranged read of a part is retried
        px.add("GET", "/run/features/part-00001", "503", times=2)
        px.add("GET", "/run/features/part-00003", "reset", times=1)
        assert rows(OUT, opts) == local
        assert px.served("GET", "/run/features/part-00001", "503") == 2
        assert px.served("GET", "/run/features/part-00003", "reset") == 1
    print(f"job with faults: {took:.1f} s")


@pytest.mark.parametrize("fault,attempts,reason", [("503", 3, "read_error"),
                                                   ("stall", 3, "read_error"),
                                                   ("403", 1, "permission_denied")])
def test_a_store_that_keeps_failing_stops_the_job_naming_the_part_and_a_rerun_completes(
        tmp_path, local, fault, attempts, reason):
    """Part 2's errors object never goes through: its features object is then on the store,
    uncommitted. The job stops after output.retries retries (a refusal, 403, is not retried),
    naming the part, the object and why; what is committed reads back whole; a rerun without
    faults (checked once, after the 503s) completes the output, equal to an uninterrupted run,
    and removes what no commit names."""
    with proxied() as (srv, px, opts):
        px.add("PUT", "/run/errors/part-00002", fault, times=None)
        t = time.monotonic()
        r = job(tmp_path, OUT, output_options=opts, output=GIVE_UP_SOON)
        took = time.monotonic() - t
        assert r.returncode == 1, r.stderr[-3000:]
        err = r.stderr.strip().splitlines()[-1]
        assert err.startswith("estimator-vgg: error: part part-00002 could not be written: "
                              "writing s3://out/run/errors/part-00002."), err
        assert f"failed: {reason}: " in err and "rerun the same command" in err, err
        assert ("(after 3 attempts)" in err) == (attempts == 3), err
        assert opts["secret"] not in r.stderr + r.stdout and "?" not in err
        # output.retries is the count: 1 + 2 retries, not the client libraries' own 5 x 5
        assert px.served("PUT", "/run/errors/part-00002", fault) == attempts
        orphan = [k for k in keys(srv, "run/features/") if "part-00002" in k]
        assert len(orphan) == 1          # written, never committed...
        paths, fc7, _ = rows(OUT, srv.storage_options)
        assert (paths, fc7) == (local[0][:4], local[1][:4])   # ...and never read
        assert orphan[0] not in committed(OUT, srv.storage_options)
        print(f"{fault}: the failing run took {took:.1f} s")
        if fault != "503":
            return
        px.clear()
        again = job(tmp_path, OUT, output_options=opts, output=GIVE_UP_SOON)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "done, 3 new files" in again.stdout, again.stdout
        assert rows(OUT, srv.storage_options) == local
        assert set(keys(srv, "run/features/") + keys(srv, "run/errors/")) == \
            committed(OUT, srv.storage_options)
        assert orphan[0] not in keys(srv, "run/features/")


def test_a_store_that_ignores_create_only_writes_is_refused_before_any_part_is_written(
        tmp_path):
    with proxied() as (srv, px, opts):
        px.strip_conditions = True   # If-None-Match: * never reaches the store
        r = job(tmp_path, OUT, output_options=opts, output=GIVE_UP_SOON)
        assert r.returncode == 1, r.stderr[-3000:]
        err = r.stderr.strip().splitlines()[-1]
        assert "output.dir s3://out/run is on a store that does not honour create-only " \
            "writes" in err and "exactly-once commits rely on them" in err, err
        assert px.served("PUT", "/run/_probe/", "stripped") == 2   # the probe's two creates
        assert px.served("PUT", "/run/features/") == 0 and px.served("PUT", "/run/_commits/") == 0
        assert keys(srv, "run/") == []       # nothing left: not even the probe


# --- credentials checked --------------------------------------------------------------------
LOOSE = ["camera_gray.png", "chelsea_cat.JPG", "coffee_small.jpg", "retina.gif"]


def _no_secret(secret, r, out_dir=None, srv=None):
    """The secret is in neither the output, nor the logs, nor the manifest with its config
    and recorded command."""
    assert secret not in r.stdout + r.stderr
    if out_dir is not None:
        for p in out_dir.rglob("*"):
            if p.is_file():
                assert secret.encode() not in p.read_bytes(), p
    if srv is not None:
        for o in srv.client.list_objects_v2(Bucket="out").get("Contents", []):
            body = srv.client.get_object(Bucket="out", Key=o["Key"])["Body"].read()
            assert secret.encode() not in body, o["Key"]


def test_s3_inputs_with_credentials_checked_read_with_the_right_secret_and_not_the_wrong_one(
        tmp_path, local):
    objects = {f"photos/demo/{p}": (DEMO / p).read_bytes() for p in local[0]}
    with s3_checked(objects) as srv, FaultProxy(srv.endpoint) as px:
        good, wrong = srv.storage_options, srv.wrong
        # the right credentials, given on the command line: the same rows as the folder,
        # through a store failing once at listing the prefix and once at reading an image
        px.add("GET", "/photos?list-type=2", "503", times=1)
        px.add("GET", "/photos/demo/retina.gif", "503", times=1)
        through = dict(good, endpoint_url=px.url)
        r = job(tmp_path, tmp_path / "prefix", "input.storage_options=" + json.dumps(through),
                input_dir="s3://photos/demo")
        assert r.returncode == 0, r.stderr[-3000:]
        assert rows(tmp_path / "prefix") == local
        assert px.served("GET", "/photos?list-type=2", "503") == 1
        assert px.served("GET", "/photos/demo/retina.gif", "503") == 1
        manifest = json.loads((tmp_path / "prefix" / "manifest.json").read_text())
        assert manifest["config"]["input"]["storage_options"]["secret"] == "<redacted>"
        assert "input.storage_options=<redacted>" in manifest["runs"][-1]["command"]
        _no_secret(good["secret"], r, tmp_path / "prefix")

        # a wrong secret for a prefix: nothing can be listed, so there are no rows to give;
        # the job stops before any work, naming the prefix and what to check
        r = job(tmp_path, tmp_path / "bad", input_dir="s3://photos/demo", input_options=wrong)
        assert r.returncode == 1, r.stderr[-3000:]
        err = r.stderr.strip().splitlines()[-1]
        assert "cannot list s3://photos/demo (permission_denied:" in err, err
        assert "input.storage_options" in err, err
        assert not (tmp_path / "bad" / "features").exists()
        _no_secret(wrong["secret"], r, tmp_path / "bad")

        # a wrong secret for a list of entries: each line is a row, and each says why
        lst = tmp_path / "list.csv"
        pd.DataFrame({"path": [f"s3://photos/demo/{n}" for n in LOOSE]}).to_csv(lst, index=False)
        r = job(tmp_path, tmp_path / "listed", input_list=lst, input_options=wrong)
        assert r.returncode == 3, r.stderr[-3000:]
        paths, _, errors = rows(tmp_path / "listed")
        assert paths == [] and errors == [(f"s3://photos/demo/{n}", "permission_denied")
                                          for n in LOOSE]
        assert "permission_denied      4" in r.stdout, r.stdout
        _no_secret(wrong["secret"], r, tmp_path / "listed")


def test_an_s3_output_with_a_wrong_secret_stops_at_open_naming_the_output_not_the_secret(
        tmp_path, local):
    with s3_checked({"out/.keep": b""}) as srv:
        r = job(tmp_path, OUT, output_options=srv.wrong, output=GIVE_UP_SOON)
        assert r.returncode == 1, r.stderr[-3000:]
        err = r.stderr.strip().splitlines()[-1]
        assert err.startswith("estimator-vgg: error: output.dir s3://out/run cannot be "
                              "written: writing s3://out/run/_probe/"), err
        assert "permission_denied" in err and "output.storage_options" in err, err
        assert "resume" not in err, err     # nothing to resume: the output was never opened
        assert "first batch" not in r.stderr   # stopped before the model ran
        _no_secret(srv.wrong["secret"], r, srv=srv)
        assert [o["Key"] for o in srv.client.list_objects_v2(Bucket="out")["Contents"]] == \
            [".keep"]
        # the right one, on the command line: written, and the secret nowhere in what was
        r = job(tmp_path, OUT, "output.storage_options=" + json.dumps(srv.storage_options),
                output=GIVE_UP_SOON)
        assert r.returncode == 0, r.stderr[-3000:]
        assert rows(OUT, srv.storage_options) == local
        _no_secret(srv.storage_options["secret"], r, srv=srv)
        manifest = json.loads(srv.client.get_object(Bucket="out", Key="run/manifest.json")[
            "Body"].read())
        assert manifest["config"]["output"]["storage_options"]["secret"] == "<redacted>"
        assert "output.storage_options=<redacted>" in manifest["runs"][-1]["command"]
