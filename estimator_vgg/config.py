"""The job's configuration: defaults in code, strict YAML and command-line overrides, one validation.

Everything else in the package receives the frozen `Config` built here and never a raw dict.
The README's config reference is generated from the field docs below
(`python -m estimator_vgg.config`), and a test keeps the two identical.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import yaml

from estimator_vgg.recipe import RESIZE_POLICIES

OUTPUT_FORMATS = ("parquet", "npy", "csv")
NAMED_WEIGHTS = ("imagenet", "synthetic")
PRECISIONS = ("float32", "bfloat16", "float16")
EXECUTORS = ("local", "ray")
# tif, tiff and webp are listed so that such files show up as `unsupported_format` errors
# instead of being skipped unseen.
DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp")
FALLBACK_DECODERS = ("pillow", "none")
LIST_FORMATS = (".csv", ".tsv", ".parquet", ".jsonl", ".txt")  # what input.list may be


class ConfigError(ValueError):
    """A config value is wrong; the message names the key (or file) and what to do."""


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


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


@dataclass(frozen=True)
class OutputConfig:
    dir: Path = _doc("Output folder; features go to `<dir>/features/`. Required.", default=None)
    format: str = _doc("`parquet` (columns `path`, `fc7`), `npy` (float32 matrix plus a path "
                       "index per part) or `csv` (wide: `path`, `vgg0`..`vgg4095`).",
                       default="parquet")
    rows_per_part: int = _doc("Rows per output part file; bounds the memory the writer holds.",
                              default=1024)
    overwrite: bool = _doc("Start afresh: delete the features, errors, manifest and search "
                           "index already in `output.dir` (nothing else there). Without it a rerun resumes, and "
                           "refuses if the weights or preprocessing differ.", default=False)


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


@dataclass(frozen=True)
class ExecutionConfig:
    executor: str = _doc("`local`: this process, over the devices of this machine. `ray`: the "
                         "listing is cut into the same parts as locally, and shards of "
                         "`run.ray.parts_per_shard` parts each become a Ray task running the "
                         "same Estimator job on its node's devices "
                         "(needs the `ray` extra; see \"On a Ray cluster\").", default="local")
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass(frozen=True)
class Config:
    input: InputConfig = field(default_factory=InputConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: ExecutionConfig = field(default_factory=ExecutionConfig)
    source: Optional[Path] = None  # the YAML file this came from, if any

    @property
    def towers(self) -> int:
        return len(self.devices.gpus) if self.devices.gpus else (self.devices.cpus or 1)

    def to_dict(self) -> dict:
        """Plain, YAML-safe dict of the resolved config (for manifests)."""
        from estimator_vgg.downloads import is_url, without_query

        out = {sec: _plain(getattr(self, sec)) for sec in _SECTIONS}
        if is_url(self.model.weights):  # a presigned URL's signature stays out of the manifest
            out["model"]["weights"] = without_query(self.model.weights)
        for key in ("dir", "list"):
            if is_uri(out["input"][key]):
                out["input"][key] = without_query(out["input"][key])
        if out["input"]["storage_options"]:  # credentials may be in there: keys only
            out["input"]["storage_options"] = {k: "<redacted>" for k in
                                               out["input"]["storage_options"]}
        return out


def _plain(obj: Any) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = _plain(v)
        elif isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


_SECTIONS = {"input": InputConfig, "preprocess": PreprocessConfig, "model": ModelConfig,
             "devices": DevicesConfig, "output": OutputConfig, "run": ExecutionConfig}


def _leaves(cls: Any, prefix: str):
    """(dotted key, field, type) of every value in a section, nested sections flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def _leaf_types() -> dict:
    return {key: tp for sec, cls in _SECTIONS.items() for key, _, tp in _leaves(cls, sec + ".")}


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _optional_of(tp: Any) -> Any:
    """X for Optional[X], None for any other type."""
    if typing.get_origin(tp) is typing.Union:
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if _optional_of(tp) is not None:
        return _type_name(_optional_of(tp)) + " or null"
    if origin in (tuple, Tuple):
        return "list of " + _type_name(typing.get_args(tp)[0])
    return {Path: "path", str: "string", int: "integer", bool: "boolean",
            float: "number", dict: "mapping"}.get(tp, str(tp))


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotated type; return it in the frozen form (tuples, Paths)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        return _coerce(key, _optional_of(tp), value)
    if origin in (tuple, Tuple):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]  # a lone value where a list is expected: `devices.gpus=0`
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(f"{key}[{i}]", inner, v) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is dict:
        if not isinstance(value, dict):
            # the value is not echoed: it may be a credential given in the wrong place
            raise ConfigError(f"{key}: expected a mapping of options (key: value), got a "
                              f"{type(value).__name__}")
        return dict(value)
    if tp in (str, Path):
        if isinstance(value, (datetime.date, datetime.datetime)):
            return str(value)  # a folder named 2024-05-01, read by YAML as a date
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a {_type_name(tp)}, got {value!r}")
        return str(value)
    raise TypeError(tp)  # a field type this module does not handle: a bug here, not in the config


def _merge(tree: dict, overrides: Mapping[str, Any], origin: str, base: Path,
           bases: dict) -> None:
    for sec, body in overrides.items():
        if sec not in _SECTIONS:
            raise ConfigError(f"{origin}: unknown section {sec!r}; known sections: "
                              f"{', '.join(_SECTIONS)}")
        _merge_section(tree.setdefault(sec, {}), _SECTIONS[sec], sec, body, origin, base, bases)


def _merge_section(tree: dict, cls: Any, name: str, body: Any, origin: str, base: Path,
                   bases: dict) -> None:
    if body is None:
        return
    if not isinstance(body, dict):
        raise ConfigError(f"{origin}: section {name!r} must be a mapping of keys, got {body!r}")
    hints = typing.get_type_hints(cls)
    for k, v in body.items():
        if k not in hints:
            raise ConfigError(f"{origin}: unknown key {name}.{k}; keys of {name}: "
                              f"{', '.join(sorted(hints))}")
        if dataclasses.is_dataclass(hints[k]):
            _merge_section(tree.setdefault(k, {}), hints[k], f"{name}.{k}", v, origin, base,
                           bases)
        elif ((_optional_of(hints[k]) or hints[k]) is dict and isinstance(v, dict)
              and isinstance(tree.get(k), dict)):
            tree[k] = {**tree[k], **v}  # input.storage_options.key=... adds to the mapping
            bases[f"{name}.{k}"] = base
        else:
            tree[k] = v
            bases[f"{name}.{k}"] = base


def _is_text(key: str) -> bool:
    """Whether a dotted key holds a string or a path (then an override is taken verbatim)."""
    tp = _leaf_types().get(key)
    return (_optional_of(tp) or tp) in (str, Path)


def _nest(key: str, value: Any) -> dict:
    """"run.ray.address", v -> {"run": {"ray": {"address": v}}}"""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def parse_override(text: str) -> Tuple[str, Any]:
    """`devices.cpus=2` -> ("devices.cpus", 2); the value is read as YAML (`[0,1]`, `true`),
    except for string and path keys, whose text is kept as typed (`output.dir=010`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    if key.count(".") < 1 or "" in key.strip().split("."):
        raise ConfigError(f"override {text!r}: the key must be section.key, like devices.cpus "
                          f"(or run.ray.address)")
    if _is_text(key.strip()) and raw != "":
        return key.strip(), raw
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from None
    return key.strip(), value


def load_config(path: Optional[os.PathLike | str] = None, overrides: Any = (),
                **sections: Mapping[str, Any]) -> Config:
    """Read a YAML config, apply `section.key=value` overrides, validate, and freeze.

    `overrides` may be a list of "section.key=value" strings or a dict {"section.key": value};
    keyword sections (`input={"dir": ...}`) are merged first, for notebooks that skip YAML.
    """
    tree: dict = {}
    bases: dict = {}
    cwd = Path.cwd()
    source = None
    if sections:
        _merge(tree, sections, "load_config arguments", cwd, bases)
    if path is not None:
        source = Path(os.path.abspath(Path(path).expanduser()))  # the link's folder, not its target's
        if not source.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.load(source.read_text(encoding="utf-8"), Loader=_StrictLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _merge(tree, data, str(path), source.parent, bases)
    pairs = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in pairs:
        if key.count(".") < 1:
            raise ConfigError(f"override key {key!r} must be section.key, like devices.cpus")
        _merge(tree, _nest(key, value), "command line", cwd, bases)
    return _build(tree, bases, source)


def _resolve(p: str, base: Path) -> Path:
    q = Path(p).expanduser()
    # abspath, not resolve(): keep symlinked folders as the user named them, drop the "..".
    return Path(os.path.abspath(q if q.is_absolute() else base / q))


def _extensions(v: Tuple[str, ...], base: Path) -> Tuple[str, ...]:
    return tuple(sorted({e.lower().lstrip(".") for e in v}))


def _weights(v: str, base: Path) -> str:
    if v in NAMED_WEIGHTS or v.startswith(("http://", "https://")):
        return v
    return str(_resolve(v, base))


def _ray_address(v: Optional[str], base: Path) -> Optional[str]:
    # `run.ray.address=null` on the command line arrives as text: it means no address too
    if v is None or v.strip().lower() in ("", "null", "~", "none"):
        return None
    return v.strip()


# Keys that take a local path or a URI (scheme://...); a URI is kept as text, not a Path.
URI_KEYS = ("input.dir", "input.list")


def is_uri(v) -> bool:
    """Whether `v` names a URI (`s3://b/k`, `https://h/p`) rather than a local path."""
    return isinstance(v, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", v) is not None


# Values put in their canonical form while the sections are built (defaults included), so
# the frozen Config is never rewritten afterwards. Path keys are resolved by their type.
_NORMALISE = {
    "input.extensions": _extensions,
    "model.weights": _weights,
    "model.cache_dir": lambda v, base: v.expanduser(),
    "run.ray.address": _ray_address,
    "model.weights_sha256": lambda v, base: v.strip().lower(),
}


def _build(tree: dict, bases: dict, source: Optional[Path]) -> Config:
    built = {sec: _build_section(cls, sec, tree.get(sec, {}), bases)
             for sec, cls in _SECTIONS.items()}
    cfg = Config(source=source, **built)
    _validate(cfg)
    return cfg


def _build_section(cls: Any, name: str, tree: dict, bases: dict) -> Any:
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{name}.{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build_section(hints[f.name], key, tree.get(f.name, {}), bases)
        else:
            if f.name in tree:
                v = _coerce(key, hints[f.name], tree[f.name])
                if key in URI_KEYS and v is not None and is_uri(v):
                    pass  # a URI stays the text it is
                elif (_optional_of(hints[f.name]) or hints[f.name]) is Path and v is not None:
                    v = _resolve(v, bases[key])
            else:
                v = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            if key in _NORMALISE and v is not None:
                v = _NORMALISE[key](v, bases.get(key, Path.cwd()))
            kwargs[f.name] = v
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    from estimator_vgg.downloads import without_query

    i, p, m, d, o = cfg.input, cfg.preprocess, cfg.model, cfg.devices, cfg.output
    if i.dir is None and i.list is None:
        raise ConfigError("input.dir is required: the folder of images to embed (or name "
                          "them in input.list)")
    for key, v in (("input.dir", i.dir), ("input.list", i.list)):
        if is_uri(v):
            from estimator_vgg.remote import ExtraMissing, check_scheme
            try:
                check_scheme(key, v)  # the remote extra installed for the scheme
            except ExtraMissing as e:
                raise ConfigError(str(e)) from None
    if i.dir is not None and not is_uri(i.dir) and not i.dir.is_dir():
        raise ConfigError(f"input.dir: folder {i.dir} does not exist"
                          + (" (it is a file)" if i.dir.exists() else ""))
    if is_uri(i.dir) and i.dir.split("://", 1)[0].lower() not in ("s3", "gs"):
        raise ConfigError(f"input.dir: {without_query(i.dir)} is a URI but not an s3:// or gs:// prefix; a "
                          f"folder of images over http(s) cannot be listed: name them in "
                          f"input.list")
    if i.list is not None and not is_uri(i.list):
        if not i.list.is_file():
            raise ConfigError(f"input.list: file {i.list} does not exist"
                              + (" (it is a folder)" if i.list.exists() else ""))
    if i.list is not None:
        suffix = os.path.splitext(str(i.list).split("?", 1)[0])[1].lower()
        if suffix not in LIST_FORMATS:
            raise ConfigError(f"input.list: {without_query(str(i.list))} is not a list this job reads; name a "
                              f"{', '.join(LIST_FORMATS)} file")
    if i.fallback_decoder not in FALLBACK_DECODERS:
        raise ConfigError(f"input.fallback_decoder: {i.fallback_decoder!r} is not a decoder; "
                          f"choose one of {', '.join(FALLBACK_DECODERS)}")
    if i.fallback_decoder == "pillow":
        try:
            import PIL  # noqa: F401  (a base dependency; a broken install says so here)
        except ImportError:
            raise ConfigError("input.fallback_decoder: pillow, but Pillow is not installed; "
                              "reinstall estimator-vgg (Pillow is a dependency) or set "
                              "input.fallback_decoder: none") from None
    if not i.path_column:
        raise ConfigError("input.path_column is empty: name the list's column of entries")
    if i.retries < 0:
        raise ConfigError(f"input.retries: must be 0 or more, got {i.retries}")
    if i.request_timeout_s <= 0:
        raise ConfigError(f"input.request_timeout_s: must be more than 0, got "
                          f"{i.request_timeout_s}")
    if not 0.0 <= i.max_error_fraction <= 1.0:
        raise ConfigError(f"input.max_error_fraction: must be between 0 and 1, got "
                          f"{i.max_error_fraction}")
    if i.max_pixels < 1:
        raise ConfigError(f"input.max_pixels: must be at least 1, got {i.max_pixels}")
    if not i.extensions:
        raise ConfigError("input.extensions is empty: name at least one extension, like jpg")
    for key, v in (("input.decode_threads", i.decode_threads),
                   ("input.read_concurrency", i.read_concurrency),
                   ("input.prefetch_batches", i.prefetch_batches),
                   ("devices.batch_size", d.batch_size), ("output.rows_per_part", o.rows_per_part)):
        if v < 1:
            raise ConfigError(f"{key}: must be at least 1, got {v}")
    if p.resize not in RESIZE_POLICIES:
        raise ConfigError(f"preprocess.resize: {p.resize!r} is not a policy; choose one of "
                          f"{', '.join(RESIZE_POLICIES)}")
    if m.precision not in PRECISIONS:
        raise ConfigError(f"model.precision: {m.precision!r} is not a precision; choose one of "
                          f"{', '.join(PRECISIONS)}")
    if m.precision == "float16" and not d.gpus:
        raise ConfigError("model.precision: float16 is for GPUs (CPUs have no fast float16 "
                          "kernels); on CPUs use bfloat16, or name devices.gpus")
    if o.dir is None:
        raise ConfigError("output.dir is required: the folder the features are written to")
    if o.format not in OUTPUT_FORMATS:
        raise ConfigError(f"output.format: {o.format!r} is not a format; choose one of "
                          f"{', '.join(OUTPUT_FORMATS)}")
    if m.weights_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", m.weights_sha256):
        raise ConfigError(f"model.weights_sha256: {m.weights_sha256!r} is not a sha256 (64 hex "
                          f"digits, as `sha256sum FILE` prints)")
    if m.weights.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        from estimator_vgg.downloads import without_query
        if not urlsplit(m.weights).path.lower().endswith((".h5", ".hdf5")):
            raise ConfigError(f"model.weights: {without_query(m.weights)} does not name a Keras .h5 file; a "
                              f"URL must point at a Keras-layout .h5 (the path ends in .h5)")
    elif m.weights not in NAMED_WEIGHTS:
        w = Path(m.weights)  # made absolute while building
        if not w.is_file():
            raise ConfigError(f"model.weights: file {w} does not exist; give a Keras .h5 or a "
                              f"tensorflow-vgg .npy file, or `imagenet` to download Keras' "
                              f"published weights")
        if w.suffix.lower() not in (".h5", ".hdf5", ".npy"):
            raise ConfigError(f"model.weights: {w} is neither a Keras .h5 nor a tensorflow-vgg "
                              f".npy file (judged by its extension)")
        if w.suffix.lower() == ".npy" and not m.allow_pickle:
            raise ConfigError(f"model.weights: {w} is a .npy file, which is read with Python's "
                              f"pickle and can run code hidden in the file. If you trust it, set "
                              f"model.allow_pickle: true; otherwise convert it to .h5 elsewhere")
    if d.gpus is not None and d.cpus is not None:
        raise ConfigError("devices.gpus and devices.cpus are both set: name GPUs, or a number of "
                          "CPU towers, not both")
    if d.gpus is not None:
        if not d.gpus:
            raise ConfigError("devices.gpus is an empty list: name at least one GPU id, or use "
                              "devices.cpus")
        if len(set(d.gpus)) != len(d.gpus) or min(d.gpus) < 0:
            raise ConfigError(f"devices.gpus: {list(d.gpus)} must be distinct ids >= 0")
    if d.cpus is not None and d.cpus < 1:
        raise ConfigError(f"devices.cpus: must be at least 1, got {d.cpus}")
    r = cfg.run
    if r.executor not in EXECUTORS:
        raise ConfigError(f"run.executor: {r.executor!r} is not an executor; choose one of "
                          f"{', '.join(EXECUTORS)}")
    if r.ray.cpus_per_task < 0:
        raise ConfigError(f"run.ray.cpus_per_task: must be 0 or more, got {r.ray.cpus_per_task}")
    if r.ray.parts_per_shard < 1:
        raise ConfigError(f"run.ray.parts_per_shard: must be at least 1, got "
                          f"{r.ray.parts_per_shard}")
    if r.ray.max_retries < 0:
        raise ConfigError(f"run.ray.max_retries: must be 0 or more, got {r.ray.max_retries}")
    if r.ray.cpus_per_task != round(r.ray.cpus_per_task, 4) or r.ray.cpus_per_task > 1e6:
        raise ConfigError(f"run.ray.cpus_per_task: Ray counts CPUs in steps of 0.0001, got "
                          f"{r.ray.cpus_per_task}")


def reference_markdown() -> str:
    """The README's config reference table, generated from the field docs."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for sec, cls in _SECTIONS.items():
        for key, f, tp in _leaves(cls, sec + "."):
            default = f.default
            if default is None:
                shown = "required" if f.name == "dir" else "null"
            elif isinstance(default, tuple):
                shown = "[" + ", ".join(map(str, default)) + "]"
            elif isinstance(default, bool):
                shown = str(default).lower()
            else:
                shown = str(default)
            kind = _type_name(tp).replace("path", "path or URI") if key in URI_KEYS else _type_name(tp)
            rows.append(f"| `{key}` | {kind} | `{shown}` | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


REFERENCE_DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
REFERENCE_MARKERS = ("<!-- config-reference:start -->", "<!-- config-reference:end -->")


def reference_in_doc(text: str) -> str:
    """The generated table as it stands between the markers of docs/configuration.md."""
    start, end = REFERENCE_MARKERS
    if start not in text or end not in text:
        raise ValueError(f"{REFERENCE_DOC} lost its markers {start} ... {end}")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n") + "\n"


if __name__ == "__main__":
    # python -m estimator_vgg.config          print the reference table
    # python -m estimator_vgg.config --write  put it into docs/configuration.md
    if sys.argv[1:] == ["--write"]:
        text = REFERENCE_DOC.read_text(encoding="utf-8")
        old = reference_in_doc(text)
        REFERENCE_DOC.write_text(text.replace(old, reference_markdown(), 1), encoding="utf-8")
    else:
        sys.stdout.write(reference_markdown())
