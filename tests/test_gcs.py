"""gs:// as users hold it, against a real GCS JSON API server on loopback (fake-gcs-server,
tests/gcs_server.py): a prefix and a list of gs:// entries read as the local folder is (an
object the store refuses is a permission_denied row); an output on gs:// equal to the local
output bit for bit, and a rerun that has nothing to do."""
import json

import pandas as pd
import pytest

from conftest import DEMO
from fault_proxy import FaultProxy
from gcs_server import gcs
from store_jobs import committed, job, local_rows, rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return local_rows(tmp_path_factory.mktemp("local"))


def test_a_gs_prefix_and_a_list_of_gs_entries_equal_the_local_folder(tmp_path, local):
    names = local[0]
    with gcs({f"photos/demo/{n}": (DEMO / n).read_bytes() for n in names}) as srv:
        srv.fs.pipe_file("photos/demo/notes.txt", b"not an image")
        r = job(tmp_path, tmp_path / "prefix", input_dir="gs://photos/demo",
                input_options=srv.storage_options, env=srv.env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert rows(tmp_path / "prefix") == local    # keyed relative to the prefix
        # the list through a proxy that refuses one object (403), as a bucket policy would
        lst = tmp_path / "list.csv"
        pd.DataFrame({"path": [f"gs://photos/demo/{n}" for n in names]}).to_csv(lst, index=False)
        with FaultProxy(srv.endpoint) as px:
            px.add("GET", "/o/demo/retina.gif", "403", times=None)
            r = job(tmp_path, tmp_path / "list", input_list=lst, env=srv.env,
                    input_options=dict(srv.storage_options, endpoint_url=px.url))
            refused = px.served("GET", "/o/demo/retina.gif", "403")
        assert r.returncode == 3, r.stderr[-3000:]
    paths, fc7, errors = rows(tmp_path / "list")
    kept = [i for i, n in enumerate(names) if n != "retina.gif"]
    assert paths == [f"gs://photos/demo/{names[i]}" for i in kept]
    assert fc7 == [local[1][i] for i in kept]
    assert errors == [("gs://photos/demo/retina.gif", "permission_denied")]
    assert refused == 1   # a refusal is not retried
    manifest = json.loads((tmp_path / "list" / "manifest.json").read_text())
    assert manifest["config"]["input"]["storage_options"] == {
        "endpoint_url": "<redacted>", "token": "<redacted>", "project": "<redacted>"}


def test_an_output_on_gs_equals_the_local_output_and_a_rerun_has_nothing_to_do(tmp_path,
                                                                               local):
    with gcs({"out/.keep": b""}) as srv:
        opts = srv.storage_options
        r = job(tmp_path, "gs://out/run", output_options=opts, env=srv.env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert rows("gs://out/run", opts) == local
        listed = {k[len("out/run/"):] for k in srv.fs.find("out/run")}
        assert {k for k in listed if k.startswith(("features/", "errors/"))} == \
            committed("gs://out/run", opts)          # exactly the committed parts
        assert sorted(k for k in listed if k.startswith("_commits/")) == \
            [f"_commits/{i:012d}.json" for i in range(4)]
        assert not [k for k in listed if k.startswith("_probe/")]
        again = job(tmp_path, "gs://out/run", output_options=opts, env=srv.env)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-2000:]
        assert rows("gs://out/run", opts) == local
        srv.fs.invalidate_cache()
        assert {k[len("out/run/"):] for k in srv.fs.find("out/run")
                if "/_lease/" not in k} == {k for k in listed if not k.startswith("_lease/")}
