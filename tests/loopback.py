"""What the tests' loopback servers share: a free port, and a server process started, awaited
until it answers, and stopped when the `with` block ends, also when the test fails.

    port = free_port()
    with server_process([binary, "-port", str(port)], f"http://127.0.0.1:{port}/health",
                        "fake-gcs-server", seconds=30):
        ...
"""
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(cmd, url: str, name: str, seconds: float, env=None):
    """`cmd` started (its output discarded) and waited for until `url` answers (RuntimeError
    naming `name` when it exits first or `seconds` pass); terminated at the end, killed if
    it lingers."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start on {url} (exit "
                                       f"{proc.poll()})") from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def fill(objects, make_bucket, put) -> None:
    """`objects` ({"bucket/key": bytes}) written: make_bucket(name) once a bucket, then
    put(bucket, key, data) an object."""
    for bucket in sorted({k.split("/", 1)[0] for k in objects}):
        make_bucket(bucket)
    for k, data in objects.items():
        bucket, name = k.split("/", 1)
        put(bucket, name, data)
