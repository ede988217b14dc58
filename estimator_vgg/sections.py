"""The sections of a job's configuration: each one's keys, defaults and docs (which generate
docs/configuration.md), and its own check, beside its definition.

    InputConfig, PreprocessConfig, ModelConfig, DevicesConfig, OutputConfig, ExecutionConfig

config.py reads YAML and overrides into these frozen dataclasses and calls their check();
the rest of the package receives them, each module the section it reads. Light (no
TensorFlow).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Tuple

from estimator_vgg.downloads import without_query
from estimator_vgg.recipe import RESIZE_POLICIES


class ConfigError(ValueError):
    """A config value is wrong; the message names the key (or file) and what to do."""


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


def is_uri(v) -> bool:
    """Whether `v` names a URI (`s3://b/k`, `https://h/p`) rather than a local path."""
    return isinstance(v, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", v) is not None


# Keys that take a local path or a URI (scheme://...); a URI is kept as text, not a Path.
URI_KEYS = ("input.dir", "input.list", "output.dir")
# The object stores an output may be on: a create-only write the job's commits rely on.
OUTPUT_SCHEMES = ("s3", "gs", "gcs")


def _check_scheme(key: str, uri: str) -> None:
    """The remote extra is installed for `uri`'s scheme (ConfigError saying how otherwise)."""
    from estimator_vgg.remote import ExtraMissing, check_scheme
    try:
        check_scheme(key, uri)
    except ExtraMissing as e:
        raise ConfigError(str(e)) from None


def _check_output_scheme(uri: str) -> None:
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in OUTPUT_SCHEMES:
        from estimator_vgg.remote import ExtraMissing, check_scheme
        try:
            handled = check_scheme("output.dir", uri)
        except ExtraMissing as e:
            raise ConfigError(str(e)) from None
        what = ("is handled by an installed filesystem, but" if handled else
                "is a scheme no installed filesystem handles, and")
        raise ConfigError(f"output.dir: {scheme}:// {what} an output needs a store whose "
                          f"create-only writes this job can rely on for exactly-once commits: "
                          f"s3:// or gs://, or a local folder (docs/cluster.md)")
    _check_scheme("output.dir", uri)


def _at_least_1(*pairs) -> None:
    for key, v in pairs:
        if v < 1:
            raise ConfigError(f"{key}: must be at least 1, got {v}")


def _check_requests(section: str, retries: int, timeout_s: float) -> None:
    if retries < 0:
        raise ConfigError(f"{section}.retries: must be 0 or more, got {retries}")
    if timeout_s <= 0:
        raise ConfigError(f"{section}.request_timeout_s: must be more than 0, got {timeout_s}")


OUTPUT_FORMATS = ("parquet", "npy", "csv")
NAMED_WEIGHTS = ("imagenet", "synthetic")
PRECISIONS = ("float32", "bfloat16", "float16")
EXECUTORS = ("local", "ray")
# tif, tiff and webp are listed so that such files show up as `unsupported_format` errors
# instead of being skipped unseen.
DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp")
FALLBACK_DECODERS = ("pillow", "none")
LIST_FORMATS = (".csv", ".tsv", ".parquet", ".jsonl", ".txt")  # what input.list may be


@dataclass(frozen=True)
class InputConfig:
    dir: Path = _doc("Folder of images, scanned recursively, or an `s3://` or `gs://` prefix, listed "
                     "recursively (needs the `remote` extra). Relative paths in a config file are "
                     "resolved against the file's folder, on the command line against the current "
                     "folder. Required, unless `input.list` names the images; with a list, the "
                     "folder or prefix its relative entries are under.", default=None)
    list: Optional[Path] = _doc("A file naming the images, one entry a row: `.csv`, `.tsv`, "
                                "`.parquet`, `.jsonl` (one object a line) or `.txt` (one entry a "
                                "line; blank lines skipped). An entry is a path relative to "
                                "`input.dir`, an absolute path or a URI (`s3://`, `gs://`, "
                                "`http(s)://`). Rows follow the list; every line yields one row "
                                "(a repeat: `duplicate_entry`). A local path or a URI.",
                                default=None)
    path_column: str = _doc("The column of `input.list` that holds the entries (`.csv`, "
                            "`.tsv`, `.parquet`, `.jsonl`).", default="path")
    storage_options: Optional[dict] = _doc("Passed to the fsspec filesystem of remote entries "
                                           "(`endpoint_url`, `anon`, ...). Credentials come "
                                           "from each library's usual environment and files; "
                                           "the values are redacted in the manifest.",
                                           default=None)
    read_concurrency: int = _doc("Remote reads (and tar members, Pillow decodes) in flight "
                                 "ahead of decoding.", default=32)
    retries: int = _doc("Retries of a remote read that failed transiently (5xx, connection "
                        "reset, timeout), with exponential backoff; then `read_error`.",
                        default=3)
    request_timeout_s: float = _doc("Seconds a remote request may take before it is abandoned "
                                    "(and retried).", default=60.0)
    expand_tars: bool = _doc("Read every `.tar` under `input.dir` or named in `input.list` as "
                             "a stream of images (never extracted to disk): one row per image "
                             "member, `path` = `<tar>/<member>`; a damaged tar keeps the members "
                             "read before the damage and adds the row `<tar>/` (`bad_archive`).",
                             default=False)
    fallback_decoder: str = _doc("`pillow`: decode with Pillow what TensorFlow cannot (TIFF's "
                                 "first page, WebP, JPEG 2000, ICO, ...), under the same pixel "
                                 "limit and resize; `none`: such files are `unsupported_format`. "
                                 "JPEG, PNG, GIF and BMP always go through TensorFlow. Recorded "
                                 "in the manifest (outputs made before it read as `none`).",
                                 default="pillow")
    extensions: Tuple[str, ...] = _doc("File extensions that count as images (case-insensitive, "
                                       "without the dot).", default=DEFAULT_EXTENSIONS)
    decode_threads: int = _doc("Images decoded and resized in parallel by tf.data.", default=2)
    prefetch_batches: int = _doc("Batches prepared ahead of the model.", default=2)
    max_pixels: int = _doc("Images whose header claims more pixels are refused before decoding "
                           "(reason `too_large`), so a small file claiming 40000x40000 cannot "
                           "exhaust memory.", default=100_000_000)
    max_error_fraction: float = _doc("Fraction of files allowed to fail (errors table); above "
                                     "it the job stops with exit code 1. Checked after each part "
                                     "once 100 files were seen, and at the end.", default=0.05)
    follow_external_symlinks: bool = _doc("Read symlinks whose target lies outside `input.dir`. "
                                          "Off, such a link becomes an error row "
                                          "(`symlink_outside_root`) and is never opened.",
                                          default=False)

    def check(self) -> None:
        if self.dir is None and self.list is None:
            raise ConfigError("input.dir is required: the folder of images to embed (or name "
                              "them in input.list)")
        for key, v in (("input.dir", self.dir), ("input.list", self.list)):
            if is_uri(v):
                _check_scheme(key, v)
        if self.dir is not None and not is_uri(self.dir) and not self.dir.is_dir():
            raise ConfigError(f"input.dir: folder {self.dir} does not exist"
                              + (" (it is a file)" if self.dir.exists() else ""))
        if is_uri(self.dir) and self.dir.split("://", 1)[0].lower() not in ("s3", "gs"):
            raise ConfigError(f"input.dir: {without_query(self.dir)} is a URI but not an s3:// "
                              f"or gs:// prefix; a folder of images over http(s) cannot be "
                              f"listed: name them in input.list")
        if self.list is not None:
            self._check_list()
        if self.fallback_decoder not in FALLBACK_DECODERS:
            raise ConfigError(f"input.fallback_decoder: {self.fallback_decoder!r} is not a "
                              f"decoder; choose one of {', '.join(FALLBACK_DECODERS)}")
        if self.fallback_decoder == "pillow":
            try:
                import PIL  # noqa: F401  (a base dependency; a broken install says so here)
            except ImportError:
                raise ConfigError("input.fallback_decoder: pillow, but Pillow is not installed; "
                                  "reinstall estimator-vgg (Pillow is a dependency) or set "
                                  "input.fallback_decoder: none") from None
        if not self.path_column:
            raise ConfigError("input.path_column is empty: name the list's column of entries")
        _check_requests("input", self.retries, self.request_timeout_s)
        if not 0.0 <= self.max_error_fraction <= 1.0:
            raise ConfigError(f"input.max_error_fraction: must be between 0 and 1, got "
                              f"{self.max_error_fraction}")
        if not self.extensions:
            raise ConfigError("input.extensions is empty: name at least one extension, like jpg")
        _at_least_1(("input.max_pixels", self.max_pixels),
                    ("input.decode_threads", self.decode_threads),
                    ("input.read_concurrency", self.read_concurrency),
                    ("input.prefetch_batches", self.prefetch_batches))

    def _check_list(self) -> None:
        if not is_uri(self.list) and not self.list.is_file():
            raise ConfigError(f"input.list: file {self.list} does not exist"
                              + (" (it is a folder)" if self.list.exists() else ""))
        suffix = os.path.splitext(str(self.list).split("?", 1)[0])[1].lower()
        if suffix not in LIST_FORMATS:
            raise ConfigError(f"input.list: {without_query(str(self.list))} is not a list this "
                              f"job reads; name a {', '.join(LIST_FORMATS)} file")


@dataclass(frozen=True)
class PreprocessConfig:
    resize: str = _doc("`center_crop`: shorter side to 224, then the central 224x224; `squash`: "
                       "both sides to 224, aspect ratio not kept. Part of the features' meaning: "
                       "recorded in the output manifest.", default="center_crop")
    antialias: bool = _doc("Antialias when shrinking (bilinear filter widened to the scale).",
                           default=True)
    jpeg_dct_scaling: bool = _doc("Decode a JPEG whose shorter side is at least 896 at 1/2, 1/4 "
                                  "or 1/8 scale in the DCT domain (the largest that keeps it at "
                                  "448 or more), skipping most of the decode and resize work "
                                  "for camera-size photos. fc7 changes slightly (see "
                                  "\"Performance\"); recorded in the manifest.", default=False)
    fast_decode: bool = _doc("Every decode measure that kept fc7 within cosine 0.9995 of the "
                             "exact path: under `center_crop` (antialiased) a JPEG is decoded "
                             "and resized only where the crop keeps it, at 1/2..1/8 scale in "
                             "the DCT domain while the shorter side stays at least 896. Other "
                             "formats, `squash` and `antialias: false` take the exact path. "
                             "Off by default; recorded in the manifest when on. Speed and "
                             "fidelity: docs/devices.md.", default=False)
    exif_orientation: bool = _doc("Turn a JPEG upright by its EXIF orientation before the "
                                  "resize. Off by default, as Keras' `load_img`; recorded in "
                                  "the manifest when on.", default=False)

    def check(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"preprocess.resize: {self.resize!r} is not a policy; choose one "
                              f"of {', '.join(RESIZE_POLICIES)}")


@dataclass(frozen=True)
class ModelConfig:
    weights: str = _doc("`imagenet` (Keras' published file, downloaded once with its hash "
                        "checked), a path to a Keras `.h5`, an `http(s)://` URL of a Keras-layout "
                        "`.h5` (a mirror; downloaded once into `model.cache_dir`), a path to a "
                        "tensorflow-vgg `.npy`, or `synthetic` (deterministic random weights "
                        "from `model.seed`: for tests and demos only, never real features).",
                        default="imagenet")
    weights_sha256: Optional[str] = _doc("The sha256 the weights file must have (64 hex "
                                         "digits). A download that does not match is refused "
                                         "and not cached; a local file that does not match is "
                                         "refused. Optional.", default=None)
    seed: int = _doc("Seed of the `synthetic` weights; ignored otherwise.", default=0)
    allow_pickle: bool = _doc("Must be `true` to load a `.npy` weights file: reading it runs "
                              "Python's pickle, which can execute code from the file. Only for "
                              "files you trust.", default=False)
    precision: str = _doc("Compute precision of the towers: `float32`, `bfloat16` (CPUs with "
                          "AVX-512 BF16/AMX, recent GPUs) or `float16` (GPUs only). Weights are "
                          "stored once in float32 and cast per tower when the session starts; fc7 "
                          "comes out as float32. Part of the features' meaning: recorded in the "
                          "manifest.", default="float32")
    cache_dir: Path = _doc("Where weights are converted (once per file, keyed by its sha256) into "
                           "the checkpoint the Estimator restores.",
                           default=Path("~/.cache/estimator-vgg"))

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"model.precision: {self.precision!r} is not a precision; choose "
                              f"one of {', '.join(PRECISIONS)}")
        if self.weights_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}",
                                                                self.weights_sha256):
            raise ConfigError(f"model.weights_sha256: {self.weights_sha256!r} is not a sha256 "
                              f"(64 hex digits, as `sha256sum FILE` prints)")
        if self.weights.startswith(("http://", "https://")):
            from urllib.parse import urlsplit
            if not urlsplit(self.weights).path.lower().endswith((".h5", ".hdf5")):
                raise ConfigError(f"model.weights: {without_query(self.weights)} does not name "
                                  f"a Keras .h5 file; a URL must point at a Keras-layout .h5 "
                                  f"(the path ends in .h5)")
        elif self.weights not in NAMED_WEIGHTS:
            self._check_file()

    def _check_file(self) -> None:
        w = Path(self.weights)  # made absolute while building
        if not w.is_file():
            raise ConfigError(f"model.weights: file {w} does not exist; give a Keras .h5 or a "
                              f"tensorflow-vgg .npy file, or `imagenet` to download Keras' "
                              f"published weights")
        if w.suffix.lower() not in (".h5", ".hdf5", ".npy"):
            raise ConfigError(f"model.weights: {w} is neither a Keras .h5 nor a tensorflow-vgg "
                              f".npy file (judged by its extension)")
        if w.suffix.lower() == ".npy" and not self.allow_pickle:
            raise ConfigError(f"model.weights: {w} is a .npy file, which is read with Python's "
                              f"pickle and can run code hidden in the file. If you trust it, set "
                              f"model.allow_pickle: true; otherwise convert it to .h5 elsewhere")


@dataclass(frozen=True)
class DevicesConfig:
    gpus: Optional[Tuple[int, ...]] = _doc("GPU ids, one tower per id (for example `[0, 1, 2, "
                                           "3]`). Exclusive with `devices.cpus`.", default=None)
    cpus: Optional[int] = _doc("Number of CPU towers when no GPUs are named (each a TensorFlow "
                               "CPU device; the same code path as GPUs). Defaults to 1.",
                               default=None)
    batch_size: int = _doc("Images per tower per step; a step takes `batch_size` x towers.",
                           default=8)
    soft_placement: bool = _doc("Let TensorFlow move ops to another device when the named one "
                                "cannot run them. Off, a wrong device map fails loudly instead of "
                                "collapsing silently onto one device.", default=False)

    @property
    def towers(self) -> int:
        return len(self.gpus) if self.gpus else (self.cpus or 1)

    def check(self) -> None:
        _at_least_1(("devices.batch_size", self.batch_size))
        if self.gpus is not None and self.cpus is not None:
            raise ConfigError("devices.gpus and devices.cpus are both set: name GPUs, or a "
                              "number of CPU towers, not both")
        if self.gpus is not None:
            if not self.gpus:
                raise ConfigError("devices.gpus is an empty list: name at least one GPU id, "
                                  "or use devices.cpus")
            if len(set(self.gpus)) != len(self.gpus) or min(self.gpus) < 0:
                raise ConfigError(f"devices.gpus: {list(self.gpus)} must be distinct ids >= 0")
        if self.cpus is not None and self.cpus < 1:
            raise ConfigError(f"devices.cpus: must be at least 1, got {self.cpus}")


@dataclass(frozen=True)
class OutputConfig:
    dir: Path = _doc("Output folder; features go to `<dir>/features/`. Or an `s3://` or "
                     "`gs://` prefix (the `remote` extra): parts are written whole as objects "
                     "and committed exactly once (docs/cluster.md). Required.", default=None)
    format: str = _doc("`parquet` (columns `path`, `fc7`), `npy` (float32 matrix plus a path "
                       "index per part) or `csv` (wide: `path`, `vgg0`..`vgg4095`).",
                       default="parquet")
    rows_per_part: int = _doc("Rows per output part file; bounds the memory the writer holds.",
                              default=1024)
    overwrite: bool = _doc("Start afresh: delete the features, errors, manifest and search "
                           "index already in `output.dir` (nothing else there). Without it a "
                           "rerun resumes, and refuses if the weights or preprocessing differ.",
                           default=False)
    storage_options: Optional[dict] = _doc("With `output.dir` on an object store: passed to its "
                                           "fsspec filesystem (`endpoint_url`, `key`, "
                                           "`secret`, ...), the output's own (the input's are "
                                           "not borrowed). Redacted in the manifest.",
                                           default=None)
    retries: int = _doc("Retries of an object store request that failed transiently (5xx, "
                        "connection reset, timeout), with exponential backoff; then the job "
                        "stops naming the part.", default=3)
    request_timeout_s: float = _doc("Seconds an object store request may take before it is "
                                    "abandoned (and retried).", default=60.0)
    multipart_mb: int = _doc("Objects larger than this are uploaded in parts of this size "
                             "(S3 multipart upload; at least 5).", default=64)
    lease_s: float = _doc("On an object store: how long a run's hold on the output lasts "
                          "unless refreshed (every third of it). A rerun after a driver died on "
                          "another machine waits at most this long; on the same machine it "
                          "goes on at once.", default=60.0)
    break_lease: bool = _doc("Take the output over even though another run's lease on it is "
                             "fresh: only when you know that run is dead (its machine is gone).",
                             default=False)

    def check(self) -> None:
        if self.dir is None:
            raise ConfigError("output.dir is required: the folder the features are written to")
        if is_uri(self.dir):
            _check_output_scheme(self.dir)
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(f"output.format: {self.format!r} is not a format; choose one of "
                              f"{', '.join(OUTPUT_FORMATS)}")
        _at_least_1(("output.rows_per_part", self.rows_per_part))
        _check_requests("output", self.retries, self.request_timeout_s)
        if self.multipart_mb < 5:
            raise ConfigError(f"output.multipart_mb: S3 takes parts of at least 5 MB, got "
                              f"{self.multipart_mb}")
        if self.lease_s <= 0:
            raise ConfigError(f"output.lease_s: must be more than 0, got {self.lease_s}")


@dataclass(frozen=True)
class RayConfig:
    address: Optional[str] = _doc("The Ray cluster to run on: `auto` joins the cluster this node "
                                  "belongs to (started with `ray start`), `HOST:PORT` joins the "
                                  "one whose head listens there, empty or null starts a "
                                  "private local cluster for this run.", default=None)
    cpus_per_task: float = _doc("CPUs each shard's task reserves on its node, beside the GPUs "
                                "that `devices.gpus` names (for CPU towers, the cores it runs "
                                "on). Ray counts them for scheduling; it does not pin threads.",
                                default=1.0)
    parts_per_shard: int = _doc("Consecutive output parts per Ray task. Each task pays a fixed "
                                "start-up (graph build, weights restore; a fresh worker also "
                                "imports TensorFlow), so a shard should take much longer than "
                                "that: raise it for fast GPUs.", default=1)
    max_retries: int = _doc("Times Ray reruns a shard whose worker process or node died; its "
                            "part is written once either way. An error raised by the job itself "
                            "(a config or weights problem) is not retried.", default=3)

    def check(self) -> None:
        if self.cpus_per_task < 0:
            raise ConfigError(f"run.ray.cpus_per_task: must be 0 or more, got "
                              f"{self.cpus_per_task}")
        _at_least_1(("run.ray.parts_per_shard", self.parts_per_shard))
        if self.max_retries < 0:
            raise ConfigError(f"run.ray.max_retries: must be 0 or more, got {self.max_retries}")
        if self.cpus_per_task != round(self.cpus_per_task, 4) or self.cpus_per_task > 1e6:
            raise ConfigError(f"run.ray.cpus_per_task: Ray counts CPUs in steps of 0.0001, got "
                              f"{self.cpus_per_task}")


@dataclass(frozen=True)
class ExecutionConfig:
    executor: str = _doc("`local`: this process, over the devices of this machine. `ray`: the "
                         "listing is cut into the same parts as locally, and shards of "
                         "`run.ray.parts_per_shard` parts each become a Ray task running the "
                         "same Estimator job on its node's devices "
                         "(needs the `ray` extra; see \"On a Ray cluster\").", default="local")
    ray: RayConfig = field(default_factory=RayConfig)

    def check(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"run.executor: {self.executor!r} is not an executor; choose one "
                              f"of {', '.join(EXECUTORS)}")
        self.ray.check()
