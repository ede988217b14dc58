"""The job's configuration: strict YAML and command-line overrides, read into the frozen
sections of sections.py (defaults in code) and checked, section by section, once.

    cfg = load_config("configs/demo.yaml", ["devices.cpus=1"])

Everything else in the package receives the frozen `Config` built here (or the one section
it reads) and never a raw dict. The config reference in docs/configuration.md is generated
from the sections' field docs (`python -m estimator_vgg.config --write`), and a test keeps the
two identical.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import yaml

from estimator_vgg.sections import (  # noqa: F401  (re-exported: the config's public names)
    DEFAULT_EXTENSIONS, NAMED_WEIGHTS, URI_KEYS, ConfigError, DevicesConfig, ExecutionConfig,
    InputConfig, ModelConfig, OutputConfig, PreprocessConfig, RayConfig, is_uri)


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
        return self.devices.towers

    def check(self) -> None:
        """Each section's own check, then what spans two sections."""
        for sec in _SECTIONS:
            getattr(self, sec).check()
        if self.model.precision == "float16" and not self.devices.gpus:
            raise ConfigError("model.precision: float16 is for GPUs (CPUs have no fast float16 "
                              "kernels); on CPUs use bfloat16, or name devices.gpus")

    def to_dict(self) -> dict:
        """Plain, YAML-safe dict of the resolved config (for manifests)."""
        from estimator_vgg.downloads import is_url, without_query

        out = {sec: _plain(getattr(self, sec)) for sec in _SECTIONS}
        if is_url(self.model.weights):  # a presigned URL's signature stays out of the manifest
            out["model"]["weights"] = without_query(self.model.weights)
        for key in ("dir", "list"):
            if is_uri(out["input"][key]):
                out["input"][key] = without_query(out["input"][key])
        for sec in ("input", "output"):  # credentials may be in there: keys only
            if out[sec]["storage_options"]:
                out[sec]["storage_options"] = {k: "<redacted>" for k in
                                               out[sec]["storage_options"]}
        if is_uri(out["output"]["dir"]):
            out["output"]["dir"] = without_query(out["output"]["dir"])
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
    cfg.check()
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


def reference_markdown() -> str:
    """The configuration reference table of docs/configuration.md, from the field docs."""
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
