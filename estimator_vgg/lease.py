"""One driver at a time on an output that lives on an object store: a lease, since a store has
no lock that frees itself when its holder dies.

    lease = Lease.take(bucket, run_id, period_s=60)   # LeaseHeld naming the holder, or held
    lease.check()                                     # before each commit: still ours?
    lease.release()                                   # at the end (a daemon refreshes it till)

The lease is a numbered object, `_lease/00000007.json`, created with the store's create-only
write, so of two drivers taking it over at once only one gets generation 8. The holder
rewrites its own object every third of the period (its last-modified time, the store's clock,
is the heartbeat). A holder on this machine is judged at once by its pid (alive: refused;
dead: taken over); a holder elsewhere by the age of its object against the store's clock,
taken over once it is older than the period. output.break_lease takes it over regardless.
Light at import.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional

from estimator_vgg.storage import Exists, StorageError

log = logging.getLogger(__name__)

PREFIX = "_lease/"


class LeaseHeld(RuntimeError):
    """Another run holds the output; the message names it and says when it can go on."""


def _name(gen: int) -> str:
    return f"{PREFIX}{gen:08d}.json"


def _pid_start(pid: int) -> Optional[str]:
    """The start time of a process (its 22nd /proc stat field), so a reused pid is told apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass   # another user's process: its start time tells a reused pid apart
    return start is None or _pid_start(pid) in (None, start)


def _machine() -> dict:
    """What makes a pid mean the same process: the host, this boot, this pid namespace (two
    containers sharing a hostname have their own pids)."""
    def read(f, how):
        try:
            return how(f)
        except OSError:
            return None
    return {"host": socket.gethostname(),
            "boot_id": read("/proc/sys/kernel/random/boot_id", lambda f: open(f).read().strip()),
            "pid_ns": read("/proc/self/ns/pid", lambda f: os.stat(f).st_ino)}


def latest(bucket) -> int:
    """The highest lease generation there is (-1: none), read by key: generations are made
    in order and never deleted, so the last one is found by doubling, then halving."""
    if not bucket.exists(_name(0)):
        return -1
    hi = 1
    while bucket.exists(_name(hi)):
        hi *= 2
    lo = hi // 2          # exists; hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bucket.exists(_name(mid)):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class Lease:
    bucket: object
    gen: int
    body: dict
    period_s: float

    @classmethod
    def take(cls, bucket, run_id: str, period_s: float, now: float,
             break_lease: bool = False) -> "Lease":
        """The output's lease for this run, or LeaseHeld. `now` is the store's clock (the
        last-modified time of an object just written)."""
        gen = latest(bucket)
        if gen >= 0:
            held = cls._holder(bucket, gen, now, period_s)
            if held and not break_lease:
                raise LeaseHeld(held)
            if held:
                log.warning("output.break_lease: taking over from %s", held)
        body = {"run_id": run_id, **_machine(), "pid": os.getpid(),
                "pid_start": _pid_start(os.getpid()), "since": time.strftime(
                    "%Y-%m-%dT%H:%M:%S%z"), "period_s": period_s, "beat": 0}
        try:
            bucket.create(_name(gen + 1), json.dumps(body).encode())
        except Exists:
            raise LeaseHeld(f"another run took the lease of {bucket} at the same moment "
                            f"(generation {gen + 1}); rerun when it has finished") from None
        lease = cls(bucket, gen + 1, body, period_s)
        lease._start()
        return lease

    @staticmethod
    def _holder(bucket, gen: int, now: float, period_s: float) -> Optional[str]:
        """Who holds generation `gen` and why it still counts, or None when it is free."""
        try:
            body = json.loads(bucket.read(_name(gen)))
        except FileNotFoundError:
            return None
        if body.get("released"):
            return None
        who = (f"run {body.get('run_id')} of pid {body.get('pid')} on {body.get('host')}, "
               f"since {body.get('since')}")
        if all(body.get(k) == v for k, v in _machine().items()):
            if _alive(int(body.get("pid", -1)), body.get("pid_start")):
                return (f"{bucket} is being written by {who} (alive on this machine); wait "
                        f"for it to finish, or use another output.dir")
            log.info("taking the lease of %s over from %s: that process is gone", bucket, who)
            return None
        info = bucket.info(_name(gen))
        age = now - info["mtime"] if info and info.get("mtime") else float("inf")
        period = float(body.get("period_s", period_s))
        if age <= period:
            return (f"{bucket} is being written by {who}, whose lease was refreshed "
                    f"{age:.0f} s ago; it expires {period - age:.0f} s from now unless "
                    f"refreshed (output.lease_s={period:g}). Rerun then, or set "
                    f"output.break_lease=true if you know that run is dead")
        log.info("taking the lease of %s over from %s: not refreshed for %.0f s", bucket, who,
                 age)
        return None

    def _start(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._refreshed = time.monotonic()
        self._thread = threading.Thread(target=self._refresh, name="estimator-vgg-lease",
                                        daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(self.period_s / 3):
            with self._lock:
                self.body["beat"] += 1
                data = json.dumps(self.body).encode()
            try:
                self.bucket.write(_name(self.gen), data)
                self._refreshed = time.monotonic()
            except (StorageError, OSError) as e:
                log.warning("could not refresh the lease of %s: %s", self.bucket, e)

    def check(self) -> None:
        """LeaseHeld when this run may no longer hold the output: a later generation exists
        (another run took it over), or the lease went unrefreshed for two thirds of its
        period (another machine may judge it expired and take over)."""
        stale = time.monotonic() - self._refreshed
        if stale > 2 * self.period_s / 3:
            self.close()
            raise LeaseHeld(f"the lease of {self.bucket} could not be refreshed for "
                            f"{stale:.0f} s (output.lease_s={self.period_s:g}): another run "
                            f"may have taken the output over, so this run stops. What it "
                            f"committed is kept; rerun when the store answers")
        if self.bucket.exists(_name(self.gen + 1)):
            self.close()
            raise LeaseHeld(f"the lease of {self.bucket} was taken over by another run "
                            f"({_name(self.gen + 1)}); this run stops. What it committed is "
                            f"kept")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.period_s)

    def release(self) -> None:
        """Stop refreshing and mark the lease free, so the next run goes on at once."""
        self.close()
        with self._lock:   # a refresh still under way cannot write over it
            self.body["released"] = True
            data = json.dumps(self.body).encode()
        try:
            if not self.bucket.exists(_name(self.gen + 1)):
                self.bucket.write(_name(self.gen), data)
        except (StorageError, OSError) as e:
            log.warning("could not release the lease of %s (the next run waits for it to "
                        "expire): %s", self.bucket, e)
