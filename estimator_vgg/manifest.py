"""manifest.json, typed: what an output holds (its parts), how it was made (its runs), and what
its features depend on (its fingerprint), with the fingerprint's comparison.

    manifest = read_manifest(out_dir)          # None when there is no manifest.json
    manifest.parts[0].name, manifest.fingerprint.output_format, manifest.runs[-1].seconds

The JSON on disk keeps the shape of every earlier release, so outputs written before these
classes existed read, resume and search as before. Only store.py writes it. A light module (no
TensorFlow).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from estimator_vgg import recipe

LIST_COPY = "input-list.parquet"  # the entries of the input.list an output was made from
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
FEATURES = "features"   # <output.dir>/features/part-00000.parquet ...
ERRORS = "errors"       # <output.dir>/errors/part-00000.parquet ...


def part_name(index: int) -> str:
    """The fixed name of part `index` (never derived from input paths)."""
    return f"part-{index:05d}"


@dataclass(frozen=True)
class PartRecord:
    """A committed part: its files are whole on disk and its rows count as done."""
    index: int
    features: int   # rows in features/<name>.*
    errors: int     # rows in errors/<name>.parquet
    # On an object store, the exact objects the part's commit named: {"features": [refs: the
    # fc7 file first], "errors": ref}, each ref {"key", "size", "etag", "version"}. None for a
    # local folder, whose part files have fixed names.
    objects: Optional[Dict[str, Any]] = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return part_name(self.index)

    @property
    def rows(self) -> int:
        return self.features + self.errors

    def to_dict(self) -> dict:
        d = {"index": self.index, "features": self.features, "errors": self.errors}
        return {**d, "objects": self.objects} if self.objects is not None else d

    @classmethod
    def from_dict(cls, p: dict) -> "PartRecord":
        return cls(int(p["index"]), int(p["features"]), int(p["errors"]), p.get("objects"))


@dataclass(frozen=True)
class Preprocessing:
    """How the images became VGG16 input (the recipe of recipe.py plus the config's choices)."""
    recipe: Optional[str]
    resize: Optional[str]
    antialias: Optional[bool]
    image_size: Optional[int]
    mean_bgr: Optional[List[float]]
    jpeg_dct_scaling: bool = False   # absent from the JSON when off (outputs made before it)
    fast_decode: bool = False        # likewise
    exif_orientation: bool = False   # likewise
    fallback_decoder: str = "none"   # absent when none: outputs made before Pillow decoded

    def to_dict(self) -> dict:
        d = {"recipe": self.recipe, "resize": self.resize, "antialias": self.antialias,
             "image_size": self.image_size, "mean_bgr": self.mean_bgr}
        for flag, off in OFF_WHEN_ABSENT.items():
            if getattr(self, flag) != off:
                d[flag] = getattr(self, flag)
        return d


# Options recorded in the fingerprint only when not at their "off" value, so outputs made
# before they existed keep their fingerprint; absent reads as off.
OFF_WHEN_ABSENT = {"jpeg_dct_scaling": False, "fast_decode": False, "exif_orientation": False,
                   "fallback_decoder": "none"}
# The config key (and how to write its value) that sets each fingerprint key, for the
# message that says how to resume an output made with other settings.
CONFIG_KEY = {"preprocessing.resize": "preprocess.resize",
              "preprocessing.antialias": "preprocess.antialias",
              "preprocessing.jpeg_dct_scaling": "preprocess.jpeg_dct_scaling",
              "preprocessing.fast_decode": "preprocess.fast_decode",
              "preprocessing.exif_orientation": "preprocess.exif_orientation",
              "preprocessing.fallback_decoder": "input.fallback_decoder",
              "precision": "model.precision", "output_format": "output.format"}


@dataclass(frozen=True)
class Fingerprint:
    """What the features depend on; an output made with another fingerprint is not resumed.

    A key an output lacks (made before the key existed) reads as None, or as the option's off
    value for keys recorded only when on; a key this release does not know is kept in `extra`,
    so such an output differs from anything made here.
    """
    model: Optional[str]
    precision: Optional[str]
    weights_sha256: Optional[str]
    synthetic_weights: Optional[bool]
    preprocessing: Preprocessing
    output_format: Optional[str]
    input_dir: Optional[str]   # rows' paths are relative to it: another folder's a.jpg differs
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg, located) -> "Fingerprint":
        """The fingerprint of a job: its Config, and its weights as weights.locate found them."""
        p = cfg.preprocess
        return cls(model="vgg16/fc7", precision=cfg.model.precision,
                   weights_sha256=located.sha256, synthetic_weights=located.synthetic,
                   preprocessing=Preprocessing(recipe.PREPROCESS_RECIPE, p.resize, p.antialias,
                                               recipe.IMAGE_SIZE, list(recipe.CAFFE_BGR_MEAN),
                                               p.jpeg_dct_scaling, p.fast_decode,
                                               p.exif_orientation, cfg.input.fallback_decoder),
                   output_format=cfg.output.format, input_dir=str(cfg.input.dir))

    @classmethod
    def from_dict(cls, d: dict) -> "Fingerprint":
        d = dict(d or {})
        pre = dict(d.pop("preprocessing", None) or {})
        known = {f.name for f in dataclasses.fields(Preprocessing)}
        pre_extra = {k: pre.pop(k) for k in list(pre) if k not in known}
        for flag, off in OFF_WHEN_ABSENT.items():
            pre[flag] = type(off)(pre.get(flag, off))
        preprocessing = Preprocessing(**{k: pre.get(k) for k in known})
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("preprocessing",
                                                                           "extra")]
        extra = {k: v for k, v in d.items() if k not in names}
        if pre_extra:
            extra["preprocessing"] = pre_extra
        return cls(preprocessing=preprocessing, extra=extra, **{k: d.get(k) for k in names})

    def to_dict(self) -> dict:
        d = {"model": self.model, "precision": self.precision,
             "weights_sha256": self.weights_sha256, "synthetic_weights": self.synthetic_weights,
             "preprocessing": self.preprocessing.to_dict(), "output_format": self.output_format,
             "input_dir": self.input_dir}
        for k, v in self.extra.items():
            if k == "preprocessing":
                d["preprocessing"] = {**d["preprocessing"], **v}
            else:
                d[k] = v
        return d

    def _flat(self) -> Dict[str, Any]:
        d = self.to_dict()
        d["preprocessing"] = {**d["preprocessing"],
                              **{f: getattr(self.preprocessing, f) for f in OFF_WHEN_ABSENT}}
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                out[k] = v
        return out

    def differences(self, now: "Fingerprint") -> List[str]:
        """What differs between this (the output's) and `now`, one phrase per key, sorted."""
        a, b = self._flat(), now._flat()
        return [f"{k}: {a.get(k)!r} in the output, {b.get(k)!r} now"
                for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    def resume_overrides(self, now: "Fingerprint") -> List[str]:
        """`key=value` overrides that would make `now` match this output, where the
        difference is a setting (not the weights or the folder)."""
        a, b = self._flat(), now._flat()
        out = []
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k) and k in CONFIG_KEY:
                v = a.get(k)
                out.append(f"{CONFIG_KEY[k]}={str(v).lower() if isinstance(v, bool) else v}")
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, Fingerprint) and not self.differences(other)

    __hash__ = None


@dataclass
class RunRecord:
    """One run of the job over the output: when, by which command, with what, how it went."""
    started: str
    command: List[str]
    versions: Dict[str, str]
    devices: List[str]
    new_files: int = 0
    seconds: float = 0.0
    new_features: Optional[int] = None
    new_errors: Optional[Dict[str, int]] = None
    first_batch_s: Optional[float] = None
    images_per_s: Optional[float] = None
    details: Dict[str, Any] = field(default_factory=dict)  # the executor's own (Ray: shards)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        names = [f.name for f in dataclasses.fields(cls) if f.name != "details"]
        return cls(**{k: d.get(k) for k in names},
                   details={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name != "details" and getattr(self, f.name) is not None}
        return {**d, **self.details}


@dataclass
class Manifest:
    """The whole manifest.json."""
    fingerprint: Fingerprint
    parts: List[PartRecord] = field(default_factory=list)
    runs: List[RunRecord] = field(default_factory=list)
    config: Dict[str, Any] = field(default_factory=dict)   # the resolved config, for people
    status: str = "running"
    totals: Optional[Dict[str, int]] = None
    version: int = MANIFEST_VERSION
    # Random, made when the output is created (or first indexed): an output rebuilt with
    # --overwrite gets another, so an index of the old one never passes for the new one.
    output_id: Optional[str] = None
    # On an object store: how many numbered commit records (_commits/) this manifest.json
    # already holds; the records after it are read by key (bucket_store.py). None locally.
    commits: Optional[int] = None

    @property
    def output_format(self) -> str:
        return self.fingerprint.output_format

    @property
    def input_dir(self) -> Path:
        """The input.dir the output was made from (where its relative paths point)."""
        return Path(self.config["input"]["dir"])

    def next_index(self) -> int:
        return max((p.index for p in self.parts), default=-1) + 1

    def count(self) -> Dict[str, int]:
        feats = sum(p.features for p in self.parts)
        errs = sum(p.errors for p in self.parts)
        return {"files": feats + errs, "features": feats, "errors": errs,
                "parts": len(self.parts)}

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        return cls(fingerprint=Fingerprint.from_dict(d.get("fingerprint", {})),
                   parts=[PartRecord.from_dict(p) for p in d.get("parts", [])],
                   runs=[RunRecord.from_dict(r) for r in d.get("runs", [])],
                   config=d.get("config", {}), status=d.get("status", "running"),
                   totals=d.get("totals"), version=d.get("manifest_version", MANIFEST_VERSION),
                   output_id=d.get("output_id"), commits=d.get("commits"))

    def to_dict(self) -> dict:
        d = {"manifest_version": self.version, "fingerprint": self.fingerprint.to_dict(),
             **({"output_id": self.output_id} if self.output_id else {}),
             "status": self.status,
             "parts": [p.to_dict() for p in self.parts],
             "runs": [r.to_dict() for r in self.runs], "config": self.config}
        if self.totals is not None:
            d["totals"] = self.totals
        if self.commits is not None:
            d["commits"] = self.commits
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False).encode("utf-8")


class ManifestError(ValueError):
    """manifest.json is there but cannot be read; the message names it."""


class OutputError(RuntimeError):
    """The output folder cannot be used as it is; the message says why and what to do."""


def damaged(out_dir: Path, part: str, missing: Path) -> OutputError:
    """The error for a part the manifest lists whose file is gone: rerunning cannot mend it."""
    return OutputError(
        f"output.dir {out_dir} is damaged: {MANIFEST} lists {part} as done, but {missing} is "
        f"missing, so its rows are lost. Restore that file (from a backup or a copy of the "
        f"output), or start the output afresh with --overwrite (output.overwrite=true), which "
        f"deletes every part and computes them all again; a plain rerun cannot repair it")


def read_manifest(out_dir: Path) -> Optional[Manifest]:
    """The output's manifest.json, or None if there is none."""
    f = Path(out_dir) / MANIFEST
    if not f.is_file():
        return None
    try:
        return Manifest.from_dict(json.loads(f.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"{f} is unreadable ({type(e).__name__}: {e})") from None
