"""The Ray executor (`run.executor: ray`): the same job, one Ray task per shard of parts.

The driver (runner.run, which chooses this executor) lists the images, opens the output and
cuts the listing into parts exactly as a local run would. Here every run.ray.parts_per_shard
consecutive parts become a shard: a Ray task that runs the Estimator job on its node's devices
over the parts' files and writes them where its ShardTarget says: a local output's staging
folder (Store.stage_dir, on storage every node mounts), or an object store output itself
(objects named by the run and the attempt; the checkpoint then travels to each node's own
cache). Only the driver lists a part in the manifest (moving a staged part in first, or
creating its commit record), and only in index order, so:
  - the output equals a local run's: same parts, same rows, same order, same values;
  - a shard whose worker or node died is rerun by Ray (run.ray.max_retries); its files are
    written again whole (on a store under a new attempt's names) and listed once;
  - a driver that dies leaves a manifest that lists a prefix of the parts; rerunning the
    command removes the files of unlisted parts and redoes them, as after a local crash.
Ray schedules, places on GPUs and retries; this module only submits, waits and records.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from estimator_vgg.config import Config
from estimator_vgg.devices import renumbered_for_task
from estimator_vgg.faults import forwarded_env
from estimator_vgg.job import Done, JobError
from estimator_vgg.listing import display_path
from estimator_vgg.manifest import MANIFEST, part_name
from estimator_vgg.remote import redact
from estimator_vgg.sections import DevicesConfig, RayConfig
from estimator_vgg.sources import DUPLICATE
from estimator_vgg.storage import Bucket, Folder, StorageError
from estimator_vgg.store import STAGING_MARK
from estimator_vgg.writer import write_part

log = logging.getLogger(__name__)

RAY_MISSING = ("run.executor is `ray`, but Ray is not installed in this environment. Install "
               "the extra (pip install 'estimator-vgg[ray]', or ESTIMATOR_VGG_RAY=1 ./run.sh "
               "...), or set run.executor: local")


@dataclass(frozen=True)
class ShardTarget:
    """Where a shard writes its parts and how it gets its weights. A local output.dir: the
    run's staging folder on the storage every node shares (the driver moves a staged part in
    and lists it); the checkpoint in the shared model.cache_dir. An output on an object store:
    the store itself (objects under names of this run and attempt; the driver commits them),
    and the checkpoint travels through Ray's object store to each node's own cache
    (weights.on_node), fetched only where the node lacks it."""
    run_id: str
    stage: Optional[str] = None          # local output: the staging folder
    weights: Optional[list] = None       # store output: [ObjectRef of weights.pack()]
    weight_files: Optional[dict] = None  # {file: sha256} of the driver's checkpoint


class _PartWriter:
    """The accountant's store inside a shard: writes the part's files, never the manifest,
    and keeps what the driver needs to list each part."""

    def __init__(self, loc, fmt: str, token: Optional[str]):
        self.loc, self.fmt, self.token = loc, fmt, token
        self.written: List[dict] = []

    def commit(self, index, paths, fc7, errors) -> None:
        objects = write_part(self.loc, self.fmt, index, paths, fc7, errors, token=self.token)
        self.written.append({"index": index, "features": len(paths), "errors": list(errors),
                             "objects": objects if self.token else None})


_shards_in_this_process = 0


def _process_age() -> float:
    """Seconds since this process started (Linux; -1 elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return -1.0


def embed_shard(cfg: Config, prepared, target: ShardTarget, shard: list,
                blocked: Dict[str, tuple]) -> dict:
    """One shard, in a Ray worker: embed the entries of `shard` (parts.Part, as the driver
    cut them: indices, paths, where the bytes are, preset rows) into those parts, written
    where `target` says (the run's staging folder, or the output's object store).

    Returns what the driver records: per part its row count, error rows (and on a store its
    objects); where it ran.
    """
    start = time.time()
    global _shards_in_this_process
    fresh = _shards_in_this_process == 0
    _shards_in_this_process += 1
    age_s = _process_age()  # a fresh worker's start-up: Python, Ray, TensorFlow, the arguments
    import socket

    import ray
    import tensorflow as tf

    from estimator_vgg import weights
    from estimator_vgg.accounting import Part
    from estimator_vgg.parts import embed_parts

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") != "0":  # the driver's -v shows them
        tf.get_logger().setLevel(logging.ERROR)
        logging.getLogger("estimator_vgg").setLevel(logging.ERROR)  # the driver logs the errors
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    local_dir = cfg.input.dir is not None and not isinstance(cfg.input.dir, str)
    if local_dir and not cfg.input.dir.is_dir():
        raise JobError(_not_shared("input.dir", node, cfg.input.dir))
    if target.stage is not None:
        loc, token = _shared_stage(target, node), None
        if not Path(prepared.checkpoint + ".index").is_file():
            raise JobError(_not_shared("model.cache_dir", node, prepared.checkpoint))
    else:
        loc, token = _reach_store(cfg.output, node), f"{target.run_id}-{os.urandom(4).hex()}"
        prepared = weights.on_node(prepared, target.weight_files,
                                   lambda: ray.get(target.weights[0]))
    parts = [Part(p.index, list(p.entries), p.where, dict(p.preset)) for p in shard]
    writer = _PartWriter(loc, cfg.output.format, token)
    # no budget here: the driver checks the error fraction, in order
    done = embed_parts(cfg, lambda: prepared, writer, parts, blocked, start=start)
    return {"parts": writer.written, "node": node, "pid": os.getpid(),
            "checkpoint": prepared.checkpoint,
            "seconds": round(time.time() - start, 3),
            "first_batch_s": round(done.first_batch_s, 3), "fresh_worker": fresh,
            "worker_age_s": round(age_s, 3), **done.record}  # done.record: input_wait_share


def _not_shared(what: str, node: str, path) -> str:
    return (f"{what} is not shared with node {node}: it does not see {path}, which the driver "
            f"made. On a Ray cluster a local input.dir, output.dir and model.cache_dir must be "
            f"on storage every node mounts at the same path (or put the output on an object "
            f"store: docs/cluster.md)")


def _shared_stage(target: ShardTarget, node: str) -> Folder:
    """The run's staging folder, checked to be the driver's own (its marker holds the run)."""
    mark = Path(target.stage) / STAGING_MARK
    try:
        shared = mark.read_text() == target.run_id
    except OSError:
        shared = False
    if not shared:
        raise JobError(_not_shared("output.dir", node, mark))
    return Folder(Path(target.stage))


def _reach_store(output_cfg, node: str) -> Bucket:
    """The output's object store, checked to be reachable from this node."""
    loc = Bucket(str(output_cfg.dir), output_cfg)
    try:
        if loc.exists(MANIFEST):
            return loc
        why = f"{loc.url(MANIFEST)} is not there (the driver wrote it)"
    except (StorageError, OSError) as e:
        why = str(e)
    raise JobError(f"node {node} cannot reach output.dir {loc}: {why}. Every node needs the "
                   f"remote extra, network access to the store and credentials for it "
                   f"(output.storage_options travel with the config; the libraries' own "
                   f"environment and files are each node's)")


def shard_config(cfg: Config) -> Config:
    """The config a shard runs with: its devices as the task sees them
    (devices.renumbered_for_task)."""
    devices = renumbered_for_task(cfg.devices)
    return cfg if devices is cfg.devices else dataclasses.replace(cfg, devices=devices)


def task_resources(ray_cfg: RayConfig, devices: DevicesConfig) -> dict:
    """What one shard asks Ray for: the GPUs `devices` names, and run.ray.cpus_per_task."""
    return {"num_cpus": ray_cfg.cpus_per_task, "num_gpus": len(devices.gpus or ())}


def connect(address):
    """ray.init for run.ray.address: None starts a private local cluster."""
    try:
        import ray
        import ray.exceptions as rex
    except ImportError:
        raise JobError(RAY_MISSING) from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a batch job
    kw = dict(logging_level=logging.WARNING, log_to_driver=True)
    try:
        if address is None:
            ray.init(address="local", include_dashboard=False, **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError, rex.RayError) as e:
        where = "a new local cluster" if address is None else f"run.ray.address={address}"
        raise JobError(f"could not start or join the Ray cluster ({where}): "
                       f"{type(e).__name__}: {e}. Run the job on a node of the cluster (the "
                       f"head, or a machine that ran `ray start --address`), check that the "
                       f"head runs and the address; a cluster started with "
                       f"RAY_AUTH_MODE=token needs the same RAY_AUTH_MODE and RAY_AUTH_TOKEN "
                       f"(or RAY_AUTH_TOKEN_PATH) here. Or leave run.ray.address empty to "
                       f"start a local cluster") from None
    return ray


def check_feasible(nodes: List[dict], resources: dict) -> None:
    """Refuse at once when none of the alive `nodes` (ray.nodes() entries) could ever run a
    shard (Ray would wait forever)."""
    nodes = [n["Resources"] for n in nodes]
    need = {"CPU": resources["num_cpus"], "GPU": resources["num_gpus"]}
    if any(all(n.get(k, 0) >= v for k, v in need.items()) for n in nodes):
        return
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes)
    raise JobError(f"no node of the Ray cluster has what one shard needs ({need['CPU']:g} CPUs "
                   f"from run.ray.cpus_per_task and {need['GPU']:g} GPUs from devices.gpus); the "
                   f"nodes have: {have or 'none alive'}. Lower them, or add such nodes")


def run(job) -> Done:
    """The Ray executor: the job's parts as Ray tasks (run.ray.parts_per_shard consecutive
    parts each); finished parts listed in the manifest in index order."""
    connect_start = time.time()
    ray = connect(job.cfg.run.ray.address)
    connect_s = time.time() - connect_start
    import ray.exceptions as rex

    driver = _Driver(ray, job)
    try:
        return driver.run(connect_s)
    except rex.RayError as e:  # from ray.put, ray.wait, ray.nodes ...: Ray itself failed
        raise JobError(f"Ray failed: {type(e).__name__}: {e}. The parts listed so far are kept; "
                       f"rerun the same command to resume") from None
    finally:
        for ref in driver.pending:  # the job stops early: no shard goes on writing for nobody
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort; shutdown below ends the job
                pass
        ray.shutdown()


class _Driver:
    """The driver's side of a Ray run: submits the shards, waits for them, lists their parts
    in index order as they finish, and records what ran where."""

    def __init__(self, ray, job):
        self.ray, self.job, self.cfg = ray, job, job.cfg
        self.pending: dict = {}          # Ray object ref -> its shard (a list of Parts)
        self.finished: Dict[int, dict] = {}   # part index -> what its shard reported
        self.next_index = job.parts[0].index
        self.features, self.errors = 0, []
        self.shards_done = self.files_finished = 0
        self.first_shard_s = 0.0
        self.record: List[dict] = []

    def run(self, connect_s: float) -> Done:
        cfg, job = self.cfg, self.job
        resources = task_resources(cfg.run.ray, cfg.devices)
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        check_feasible(nodes, resources)
        target = self._submit(resources)
        log.info("ray: %d shards of up to %d parts of %d images, on %d node(s), each asking "
                 "for %g CPUs and %g GPUs", len(self.pending), cfg.run.ray.parts_per_shard,
                 cfg.output.rows_per_part, len(nodes), resources["num_cpus"],
                 resources["num_gpus"])
        shards = len(self.pending)
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1)
            shard = self.pending.pop(ready[0])
            self._finished(shard, self._result(ready[0], shard), shards)
            self._list_in_order(target)
            job.progress.update(self.files_finished, len(self.errors),
                                shards=f"{self.shards_done}/{shards}")
        if target.stage is not None:  # every part moved out: only the marker is left
            shutil.rmtree(Path(target.stage).parent, ignore_errors=True)
        return Done(self.features, self.errors, self.first_shard_s,
                    record={"executor": "ray", "ray_nodes": len(nodes),
                            "connect_s": round(connect_s, 3), "shards": self.record})

    def _submit(self, resources: dict) -> ShardTarget:
        """Convert the weights, stage the run and submit every shard; where they write."""
        import uuid

        from estimator_vgg import weights

        cfg, job = self.cfg, self.job
        # Converted once, here; the shards restore the checkpoint from model.cache_dir, or
        # (output on a store: no shared disk) from their node's copy of it.
        prepared = job.prepare_weights()
        if job.store.loc.remote:
            target = ShardTarget(job.store.run_id, weights=[self.ray.put(weights.pack(prepared))],
                                 weight_files=weights.checkpoint_files(prepared))
        else:
            run_id = uuid.uuid4().hex[:16]
            target = ShardTarget(run_id, stage=str(job.store.stage_dir(run_id)))
        # The driver's TensorFlow log level (quiet unless -v) reaches the workers before they
        # import TensorFlow; otherwise every worker's start-up lines would bury the log. So do
        # the test hooks of faults.py.
        env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")}
        env.update(forwarded_env())
        # A GPU task gets a fresh worker each time (max_calls=1): TensorFlow keeps the GPUs it
        # opened for the life of the process, whatever CUDA_VISIBLE_DEVICES Ray sets next.
        task = self.ray.remote(max_calls=1 if cfg.devices.gpus else 0)(embed_shard).options(
            max_retries=cfg.run.ray.max_retries, retry_exceptions=False,
            runtime_env={"env_vars": env}, **resources)
        shard_cfg, prep = self.ray.put(shard_config(cfg)), self.ray.put(prepared)
        k = cfg.run.ray.parts_per_shard
        for shard in (job.parts[i:i + k] for i in range(0, len(job.parts), k)):
            mine = {f: job.blocked[f] for p in shard for f in p.entries if f in job.blocked}
            self.pending[task.remote(shard_cfg, prep, target, shard, mine)] = shard
        return target

    def _result(self, ref, shard) -> dict:
        """What the shard returned, or JobError naming the shard and why it failed."""
        import ray.exceptions as rex

        what = (f"shard {part_name(shard[0].index)}"
                + (f"..{part_name(shard[-1].index)}" if len(shard) > 1 else "")
                + f" ({sum(len(p.entries) for p in shard)} images from "
                  f"{redact(display_path(shard[0].entries[0]))})")
        retries = self.cfg.run.ray.max_retries
        try:
            result = self.ray.get(ref)
        except rex.RayTaskError as e:
            cause = getattr(e, "cause", None) or e
            raise JobError(f"{what} failed: {redact(cause)}") from None
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError) as e:
            raise JobError(f"{what} was lost {retries + 1} times (run.ray.max_retries="
                           f"{retries}): {type(e).__name__}: {redact(e)}") from None
        except rex.RayError as e:
            raise JobError(f"{what} failed in Ray: {type(e).__name__}: {redact(e)}") from None
        result["what"] = what
        return result

    def _finished(self, shard, result: dict, shards: int) -> None:
        if not self.first_shard_s:
            self.first_shard_s = time.time() - self.job.start
        self.shards_done += 1
        self.files_finished += sum(len(p.entries) for p in shard)
        for part in result["parts"]:
            self.finished[part["index"]] = part
        self.record.append({"parts": [part_name(p["index"]) for p in result["parts"]],
                            **{key: result[key] for key in _RECORDED if key in result}})
        log.info("%s done on %s in %.1f s (%d of %d shards)", result["what"], result["node"],
                 result["seconds"], self.shards_done, shards)

    def _list_in_order(self, target: ShardTarget) -> None:
        """List the finished parts that follow the last listed one: the manifest stays a
        prefix of the parts; the error budget is checked after each."""
        store, budget = self.job.store, self.job.budget
        while self.next_index in self.finished:
            r = self.finished.pop(self.next_index)
            if target.stage is not None:
                store.adopt_staged(Path(target.stage), r["index"])
            store.record(r["index"], r["features"], len(r["errors"]), r.get("objects"))
            errors = [tuple(e) for e in r["errors"]]
            for rel, reason, message in errors:
                log.log(logging.INFO if reason == DUPLICATE else logging.WARNING,
                        "%s: %s (%s)", redact(display_path(rel)), reason, message)
            self.features += r["features"]
            self.errors += errors
            self.next_index += 1
            budget.add(r["features"] + len(errors), errors)
            budget.check()


_RECORDED = ("node", "pid", "seconds", "first_batch_s", "fresh_worker", "worker_age_s",
             "input_wait_share", "checkpoint")
