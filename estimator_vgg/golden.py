"""What `estimator-vgg compare` compares: an output folder or a golden file as rows (a Side),
and writing a golden file (a light module).

    side = open_side("out/run")              # or a golden .npz, or arrays_side(name, paths, m)
    save_golden(side, "tests/golden/mine.npz")

A golden file (`compare OUTPUT --save-golden`) is a NumPy .npz: `paths` (str), `fc7` (float32
[n, 4096]), `error_paths` and `error_reasons` (the errors table), `fingerprint` and `source`
(JSON text: the output's fingerprint; its format, last run's versions and devices, the date).
Any .npz with `paths` and `fc7` (tests/golden/demo_fc7.npz) is read the same way, without a
fingerprint. It loads without pickle.
"""
from __future__ import annotations

import datetime
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg.manifest import MANIFEST, Fingerprint
from estimator_vgg.output import Output
from estimator_vgg.storage import is_store, location
from estimator_vgg.recipe import FC7_DIM

GOLDEN_FORMAT = "estimator-vgg-golden/1"


class CompareError(ValueError):
    """An input that is neither an estimator-vgg output nor a golden file; the message says
    which and what to do."""


Chunks = Callable[[], Iterator[Tuple[List[str], np.ndarray]]]


@dataclass
class Side:
    """One side of a comparison: its rows (read on demand), errors and how it was made."""
    name: str
    kind: str                                 # "output", "golden" or "arrays"
    rows: int
    chunks: Chunks = field(repr=False)        # yields (paths, float32 [n, 4096]) blocks
    read_all: Optional[Callable[[], Tuple[List[str], np.ndarray]]] = field(default=None,
                                                                          repr=False)
    errors: List[Tuple[str, str]] = field(default_factory=list)   # (path, reason)
    fingerprint: Optional[Fingerprint] = None
    output_format: Optional[str] = None
    versions: Dict[str, Any] = field(default_factory=dict)
    devices: List[str] = field(default_factory=list)
    status: Optional[str] = None
    made_on: Optional[str] = None

    def describe(self) -> str:
        bits = [self.kind]
        if self.output_format:
            bits.append(self.output_format)
        bits.append(f"{self.rows} rows, {len(self.errors)} error rows")
        if self.status and self.status != "complete":
            bits.append(f"status {self.status}")
        return f"{self.name} ({', '.join(bits)})"


def _output_errors(output: Output) -> List[Tuple[str, str]]:
    rows: List[Tuple[str, str]] = []
    for part in output.parts:
        t = output.error_rows(part.index, ("path", "reason"))
        rows += zip(t["path"], t["reason"])
    return rows


def _open_output(out) -> Side:
    output = out if isinstance(out, Output) else Output(out)
    manifest = output.manifest
    run = manifest.runs[-1] if manifest.runs else None
    return Side(name=str(out), kind="output", rows=sum(p.features for p in manifest.parts),
                chunks=output.iter_parts, read_all=output.read_features,
                errors=_output_errors(output),
                fingerprint=manifest.fingerprint, output_format=manifest.output_format,
                versions=dict(run.versions or {}) if run else {},
                devices=list(run.devices or []) if run else [], status=manifest.status,
                made_on=(run.started or "")[:10] if run else None)


def _json_field(z, key: str) -> Optional[dict]:
    if key not in z.files:
        return None
    return json.loads(str(z[key][()]))


def _open_golden(f: Path) -> Side:
    try:
        with np.load(f, allow_pickle=False) as z:
            missing = [k for k in ("paths", "fc7") if k not in z.files]
            if missing:
                raise CompareError(f"{f} is a .npz without {' and '.join(missing)}: not a golden "
                                   f"file (write one with `estimator-vgg compare OUTPUT "
                                   f"--save-golden {f.name}`)")
            paths = [str(p) for p in z["paths"].tolist()]
            fc7 = np.ascontiguousarray(z["fc7"], np.float32)
            errors = list(zip([str(p) for p in z["error_paths"].tolist()],
                              [str(r) for r in z["error_reasons"].tolist()])) \
                if "error_paths" in z.files else []
            fp = _json_field(z, "fingerprint")
            source = _json_field(z, "source") or {}
    except CompareError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CompareError(f"{f} cannot be read as a golden .npz ({type(e).__name__}: {e})"
                           ) from None
    if fc7.ndim != 2 or fc7.shape != (len(paths), FC7_DIM):
        raise CompareError(f"{f}: fc7 is {fc7.shape}, {len(paths)} paths: expected "
                           f"[{len(paths)}, {FC7_DIM}]")
    return Side(name=str(f), kind="golden", rows=len(paths), chunks=lambda: iter([(paths, fc7)]),
                errors=errors, fingerprint=Fingerprint.from_dict(fp) if fp else None,
                output_format=source.get("output_format"), versions=source.get("versions", {}),
                devices=source.get("devices", []), made_on=source.get("made_on"))


def open_side(path: os.PathLike, storage_options: Optional[dict] = None) -> Side:
    """An estimator-vgg output folder (any output.format), an output on an object store
    (s3://, gs://, read with storage_options) or a golden .npz."""
    if is_store(str(path)):
        from types import SimpleNamespace
        try:
            output = Output(location(str(path), SimpleNamespace(storage_options=storage_options)))
        except FileNotFoundError:
            raise CompareError(f"{path} has no {MANIFEST}: not an estimator-vgg output") from None
        return _open_output(output)
    p = Path(path)
    if p.is_dir():
        if not (p / MANIFEST).is_file():
            raise CompareError(f"{p} has no {MANIFEST}: not an estimator-vgg output (give an "
                               f"output.dir, or a golden .npz)")
        return _open_output(p)
    if p.is_file():
        if p.suffix != ".npz":
            raise CompareError(f"{p} is neither an estimator-vgg output folder nor a golden "
                               f".npz (write one with `estimator-vgg compare OUTPUT "
                               f"--save-golden FILE.npz`)")
        return _open_golden(p)
    raise CompareError(f"{p} does not exist (give an output.dir, or a golden .npz)")


def arrays_side(name: str, paths: Optional[Sequence[str]], matrix) -> Side:
    """A side made of a matrix in memory; without paths its rows are named by position."""
    m = np.ascontiguousarray(matrix, np.float32)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a matrix [rows, {FC7_DIM}], got shape {m.shape}")
    ps = [f"row {i}" for i in range(len(m))] if paths is None else [str(p) for p in paths]
    if len(ps) != len(m):
        raise ValueError(f"{name}: {len(ps)} paths for {len(m)} rows")
    return Side(name=name, kind="arrays", rows=len(m), chunks=lambda: iter([(ps, m)]))


def read_all(side: Side) -> Tuple[List[str], np.ndarray]:
    if side.read_all is not None:
        return side.read_all()
    paths: List[str] = []
    blocks = []
    for ps, m in side.chunks():
        paths += ps
        blocks.append(m)
    if not blocks:
        return paths, np.empty((0, FC7_DIM), np.float32)
    return paths, blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def save_golden(side: Side, f: os.PathLike) -> int:
    """Write `side`'s rows, errors and fingerprint to a golden .npz (atomically); its rows."""
    f = Path(f)
    if f.suffix != ".npz":
        raise CompareError(f"--save-golden {f}: give a file name ending in .npz")
    paths, fc7 = read_all(side)
    source = {"format": GOLDEN_FORMAT, "output_format": side.output_format,
              "versions": side.versions, "devices": side.devices,
              "made_on": datetime.date.today().isoformat(), "rows": len(paths),
              "made_from": Path(side.name).name}
    fp = side.fingerprint.to_dict() if side.fingerprint else None
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, paths=np.array(paths, dtype=str), fc7=fc7,
                 error_paths=np.array([p for p, _ in side.errors], dtype=str),
                 error_reasons=np.array([r for _, r in side.errors], dtype=str),
                 fingerprint=np.array(json.dumps(fp)), source=np.array(json.dumps(source)))
        os.replace(tmp, f)
    finally:
        if tmp.exists():
            tmp.unlink()
    return len(paths)
