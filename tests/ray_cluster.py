"""A real multi-node Ray cluster on loopback for tests and benchmarks: `ray start --head` plus
`ray start --address` processes on this machine, token authentication on, and a cleanup that
stops every process they started, workers included, also when the caller fails.

    with loopback_cluster(nodes=2, cpus_per_node=1) as c:
        subprocess.run([... "run.ray.address=" + c.address], env=c.env)

node_env: a dict per node of variables only that node's processes get (for example each
node's own ESTIMATOR_VGG_NODE_CACHE); object_store_mb: each node's object store.
"""
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


class Cluster:
    def __init__(self, address, env, procs):
        self.address, self.env, self.procs = address, env, procs
        self.start_s = 0.0  # seconds until every node had joined

    @property
    def groups(self):
        return [p.pid for p in self.procs]

    def alive_nodes(self) -> int:
        r = subprocess.run([ray_cli(), "status", "--address", self.address], env=self.env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or "Active:" not in r.stdout:
            return 0
        active = r.stdout.split("Active:")[1].split("Pending:")[0]
        return sum(1 for line in active.splitlines() if "node_" in line)


@contextlib.contextmanager
def loopback_cluster(nodes: int = 2, cpus_per_node: int = 1, env: dict = None,
                     node_env: list = None, object_store_mb: int = 100):
    # A short temporary folder: Ray's Unix sockets live under it and their paths are limited
    # to about 107 characters, which pytest's tmp_path can exceed.
    temp = tempfile.mkdtemp(prefix="evgg-ray-", dir="/tmp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               RAY_USAGE_STATS_ENABLED="0", TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    common = [f"--num-cpus={cpus_per_node}", f"--object-store-memory={object_store_mb * 10**6}",
              "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp}",
              "--block"]
    procs, logs = [], []
    c = Cluster(address, env, procs)

    def start(*args):
        log = open(Path(temp) / f"start-{len(procs)}.log", "w")
        logs.append(log)
        own = dict(env, **(node_env[len(procs)] if node_env else {}))
        # its own session: the Ray processes it starts descend from it
        procs.append(subprocess.Popen([ray_cli(), "start", *args, *common], env=own,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    t0 = time.time()
    try:
        start("--head", f"--port={port}", "--include-dashboard=false")
        _wait(lambda: c.alive_nodes() == 1, 90, "the head node", temp)
        for n in range(2, nodes + 1):
            start(f"--address={address}")
            _wait(lambda: c.alive_nodes() == n, 90, f"node {n}", temp)
        c.start_s = time.time() - t0
        yield c
    finally:
        stopped = stop(procs)
        for log in logs:
            log.close()
        shutil.rmtree(temp, ignore_errors=True)
        if not stopped:
            message = "a Ray process the cluster started outlived the cleanup"
            if sys.exc_info()[0] is None:
                raise AssertionError(message)
            print(message, file=sys.stderr)  # do not hide the error already on its way


def _wait(cond, seconds, what, temp):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.5)
    logs = "\n".join(f.read_text()[-2000:] for f in Path(temp).glob("start-*.log"))
    raise AssertionError(f"{what} did not join within {seconds} s:\n{logs}")


def stop(procs) -> bool:
    """Stop every process the `ray start` commands started (workers included, which Ray puts
    in process groups of their own): SIGTERM, then SIGKILL what is left. True if all gone."""
    groups = [p.pid for p in procs]
    members = {int(d.name) for d in Path("/proc").iterdir()
               if d.name.isdigit() and descends_from(int(d.name), groups)}
    for g in groups:
        try:
            os.killpg(g, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(m) for m in members):
        time.sleep(0.5)
    for m in members:
        if alive(m):
            os.kill(m, signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)
    time.sleep(1)
    return not any(alive(m) for m in members)


def alive(pid) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descends_from(pid, groups) -> bool:
    """Whether a process was started, at any depth, by a process of one of `groups`."""
    while pid > 1:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        if int(fields[2]) in groups:
            return True
        pid = int(fields[1])
    return False


def end_driver(proc, log) -> str:
    """The driver process `proc` killed if it still runs (and reaped), `log` (the file its
    output went to) closed; what it wrote."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    log.seek(0)
    text = log.read()
    log.close()
    return text


def kill_a_shard_worker_of(cluster, proc, log, first=lambda: None) -> int:
    """While the driver `proc` runs (after first()), SIGKILL one of `cluster`'s workers running
    a shard; then wait for the driver, which must complete (exit 3, this job's partial
    success), and stop it in any case. The killed worker's pid."""
    killed = None
    try:
        first()
        killed = kill_a_shard_worker(cluster, proc)
        proc.wait(timeout=600)
    finally:
        output = end_driver(proc, log)
    assert killed, "no worker was seen running a shard"
    assert proc.returncode == 3, output[-3000:]
    return killed


def kill_a_shard_worker(cluster, proc, seconds: float = 120):
    """SIGKILL the first Ray worker of `cluster` seen running a shard (still inside it 0.3 s
    later: importing TensorFlow or predicting) while the driver `proc` runs; its pid, or None
    when none was seen within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        for pid in shard_workers(cluster.groups):
            time.sleep(0.3)
            if _is_shard_worker(pid):
                os.kill(pid, signal.SIGKILL)
                return pid
            break
        time.sleep(0.1)
    return None


def shard_workers(groups):
    """Ray workers of this test's cluster (`groups`) running a shard now, not another test's."""
    return [int(d.name) for d in Path("/proc").iterdir()
            if d.name.isdigit() and _is_shard_worker(int(d.name))
            and descends_from(int(d.name), groups)]


def _is_shard_worker(pid) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::embed_shard")
    except OSError:
        return False
