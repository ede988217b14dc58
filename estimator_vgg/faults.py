"""The crash test hook: ESTIMATOR_VGG_FAULT=<point>:<n> SIGKILLs this process the n-th time it
reaches <point> (batch, features_tmp, part_files, manifest; on an object store also
multipart, between two parts of an upload, and manifest_json, before manifest.json is
rewritten).

Tests use it to kill a real run at chosen moments of a commit; it does nothing unless the
variable is set. ESTIMATOR_VGG_FAULT_ONCE=<file> makes it one kill among all processes (Ray
workers): whoever creates the file dies, the others go on.
"""
from __future__ import annotations

import os
import signal
from typing import Dict

POINTS = ("batch", "features_tmp", "part_files", "manifest", "multipart", "manifest_json")
_counts: Dict[str, int] = {}


def fault(point: str) -> None:
    """SIGKILL this process at `point` if ESTIMATOR_VGG_FAULT names it (see the module doc)."""
    spec = os.environ.get("ESTIMATOR_VGG_FAULT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] != int(n or 1):
        return
    once = os.environ.get("ESTIMATOR_VGG_FAULT_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def forwarded_env() -> Dict[str, str]:
    """The hook's variables, for processes this one starts (the Ray shards)."""
    return {k: v for k, v in os.environ.items() if k.startswith("ESTIMATOR_VGG_FAULT")}
