"""Similar-image search over a finished output: exact cosine similarity, one part at a time.

    estimator-vgg neighbors out/demo demo_images/chelsea_cat.JPG -k 5
    estimator-vgg neighbors out/demo chelsea_cat.JPG            (a path already in the output)
    estimator-vgg neighbors out/demo --duplicates 0.95 --html dups.html

Memory holds one part (plus the k best so far), so the search scales to outputs larger than
memory; the duplicate search compares every pair of parts, so its time grows with the square
of the number of rows.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from estimator_vgg.manifest import Manifest, read_manifest
from estimator_vgg.writer import iter_parts

log = logging.getLogger(__name__)


class SearchError(ValueError):
    """The query or the output cannot be used; the message says why."""


@dataclass(frozen=True)
class Match:
    path: str      # as in the features table (relative to input.dir)
    score: float   # cosine similarity to the query, -1..1


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float32)
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.maximum(norms, np.float32(1e-12))  # an all-zero row scores 0 against anything


def manifest_of(out_dir: Path) -> Manifest:
    if not Path(out_dir).is_dir():
        raise SearchError(f"{out_dir} does not exist: give the output.dir of a job")
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise SearchError(f"{out_dir} has no manifest.json: not an estimator-vgg output folder")
    return manifest


def check_has_features(out_dir: Path) -> None:
    """Refuse an output with no feature rows (nothing to search)."""
    manifest = manifest_of(out_dir)
    if not any(p.features for p in manifest.parts):
        raise SearchError(f"{out_dir} has no feature rows ({len(manifest.parts)} parts "
                          f"committed, none with features): run the job first, or look in "
                          f"its errors table")


def input_root(out_dir: Path) -> Path:
    """The input.dir the output was made from (where its relative paths point)."""
    return manifest_of(out_dir).input_dir


def _input_of(out_dir: Path):
    """The input section the output was made from, as the readers of sources.py take it
    (storage_options were redacted in the manifest: the libraries' own credentials apply)."""
    import dataclasses
    from types import SimpleNamespace

    from estimator_vgg.config import DEFAULT_EXTENSIONS, InputConfig, is_uri

    recorded = dict((manifest_of(out_dir).config or {}).get("input") or {})
    kw = {f.name: recorded[f.name] for f in dataclasses.fields(InputConfig)
          if f.name in recorded}
    for key in ("dir", "list"):
        if kw.get(key) and not is_uri(kw[key]):
            kw[key] = Path(kw[key])
    if kw.get("dir") is None and not kw.get("list"):
        kw["dir"] = input_root(out_dir)
    opts = {k: v for k, v in (kw.get("storage_options") or {}).items() if v != "<redacted>"}
    kw["storage_options"] = opts or None
    kw["extensions"] = tuple(kw.get("extensions") or DEFAULT_EXTENSIONS)
    return SimpleNamespace(input=InputConfig(**kw))


def image_source(out_dir: Path, path: str) -> Union[Path, bytes, None]:
    """The image of a row's `path`, for the pages' thumbnails and a query by path: the file
    under input.dir, or, for a list entry, a URI or a tar member, its bytes read again (None,
    with a warning, when they cannot be read). The one place that turns an output's path
    back into an image."""
    from estimator_vgg import sources
    from estimator_vgg.config import is_uri
    from estimator_vgg.remote import FetchError, redact

    cfg = _input_of(out_dir)
    i = cfg.input
    if i.list is None and not is_uri(i.dir) and not (i.expand_tars and ".tar/" in path.lower()):
        return Path(i.dir) / path
    try:
        return sources.read_entry(cfg, path)
    except FetchError as e:
        log.warning("cannot read %s again: %s (%s)", redact(path), e.reason, e.message)
        return None


def describe(out_dir: Path) -> str:
    """The output's name for the page, with a warning when its weights were synthetic."""
    synthetic = manifest_of(out_dir).fingerprint.synthetic_weights
    return f"{out_dir}" + (" (synthetic weights: not ImageNet features)" if synthetic else "")


def vector_of(out_dir: Path, path: str) -> Optional[np.ndarray]:
    """The fc7 row of `path` if the output holds it."""
    for paths, fc7 in iter_parts(out_dir):
        if path in paths:
            return fc7[paths.index(path)]
    return None


def embed_file(out_dir: Path, file: Path) -> np.ndarray:
    """fc7 of an image file, with the weights and preprocessing the output was made with."""
    from estimator_vgg.config import load_config

    manifest = manifest_of(out_dir)
    c = manifest.config
    cfg = load_config(
        None, input={"dir": str(Path(file).resolve().parent), "max_pixels": c["input"]["max_pixels"]},
        preprocess=c["preprocess"],
        model=dict({k: c["model"][k] for k in ("weights", "seed", "allow_pickle", "cache_dir")},
                   # float16 needs a GPU; a single query on the CPU uses float32 instead
                   precision={"float16": "float32"}.get(c["model"].get("precision", "float32"),
                                                        c["model"].get("precision", "float32"))),
        devices={"cpus": 1, "batch_size": 1}, output={"dir": str(out_dir)})
    from estimator_vgg import weights
    from estimator_vgg.estimator import build_estimator
    from estimator_vgg.input import input_fn

    prepared = weights.prepare(cfg.model)
    made_with = manifest.fingerprint.weights_sha256
    if prepared.sha256 != made_with:
        raise SearchError(f"the weights {cfg.model.weights} now have sha256 "
                          f"{prepared.sha256[:12]}, but {out_dir} was made with "
                          f"{made_with[:12]}: the query would "
                          f"not be comparable")
    est = build_estimator(cfg, prepared)
    import tensorflow as tf
    try:
        rows = list(est.predict(input_fn(cfg, [Path(file).name]), yield_single_examples=False,
                                checkpoint_path=prepared.checkpoint))
    except tf.errors.InvalidArgumentError:
        rows = []
    if not rows:  # the input pipeline dropped it: say why, as the errors table would
        from estimator_vgg.probe import classify
        reason, message = classify(cfg.input.dir, Path(file).name, cfg.input.max_pixels,
                                   preprocessing=cfg.preprocess)
        raise SearchError(f"the query image {file} cannot be embedded: {reason}: {message}")
    return rows[0]["fc7"][0]


def query_vector(out_dir: Path, query: str) -> Tuple[np.ndarray, Optional[str]]:
    """(fc7, path in the output or None) for a query that is an output path or an image file."""
    v = vector_of(out_dir, query)
    if v is not None:
        return v, query
    if os.path.isfile(query):
        return embed_file(out_dir, Path(query)), None
    raise SearchError(not_a_query(out_dir, query))


def not_a_query(out_dir: Path, query: str) -> str:
    return (f"{query!r} is neither a path in {out_dir}'s features (relative to input.dir, as "
            f"in the `path` column) nor an image file")


def nearest(out_dir: Path, query: np.ndarray, k: int = 10,
            exclude: Optional[str] = None) -> List[Match]:
    """The k rows most similar to `query` by cosine similarity, best first (exact)."""
    q = _unit(query)
    best_scores = np.zeros(0, np.float32)
    best_paths: List[str] = []
    for paths, fc7 in iter_parts(out_dir):
        if not paths:
            continue
        scores = _unit(fc7) @ q
        if exclude is not None and exclude in paths:
            scores[paths.index(exclude)] = -np.inf
        scores = np.concatenate([best_scores, scores])
        names = best_paths + list(paths)
        keep = np.argpartition(-scores, min(k, len(scores)) - 1)[:k] if len(scores) > k \
            else np.arange(len(scores))
        best_scores = scores[keep]
        best_paths = [names[i] for i in keep]
    order = np.lexsort((np.array(best_paths, dtype=object).astype(str), -best_scores))
    return [Match(best_paths[i], float(best_scores[i])) for i in order
            if np.isfinite(best_scores[i])]


def duplicate_pairs(out_dir: Path, threshold: float
                    ) -> Tuple[List[str], np.ndarray, np.ndarray, np.ndarray]:
    """(paths, a, b, score): every pair of rows a < b with cosine similarity >= threshold,
    exactly, comparing every pair of parts (time grows with the square of the rows)."""
    names: List[str] = []
    A: List[np.ndarray] = []
    B: List[np.ndarray] = []
    S: List[np.ndarray] = []

    def link(sims: np.ndarray, start_a: int, start_b: int) -> None:
        i, j = np.nonzero(sims >= threshold)
        A.append(i + start_a)
        B.append(j + start_b)
        S.append(sims[i, j])

    for a, (paths_a, fa) in enumerate(iter_parts(out_dir)):
        start_a = len(names)
        names.extend(paths_a)
        ua = _unit(fa)
        within = ua @ ua.T  # each pair once: above the diagonal
        link(np.triu(within, k=1) + np.tril(np.full_like(within, -np.inf)), start_a, start_a)
        start_b = start_a + len(paths_a)
        for paths_b, fb in iter_parts(out_dir, skip=a + 1):
            link(ua @ _unit(fb).T, start_a, start_b)
            start_b += len(paths_b)
    cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)  # noqa: E731
    return names, cat(A, np.int64), cat(B, np.int64), cat(S, np.float32)


def duplicate_groups(out_dir: Path, threshold: float) -> List[List[Match]]:
    """Groups of rows linked by cosine similarity >= threshold (single linkage), largest first,
    exactly. Each member's score is its best similarity to another member of its group."""
    names, a, b, s = duplicate_pairs(out_dir, threshold)
    return groups_of(a, b, s, names.__getitem__)


def groups_of(a: np.ndarray, b: np.ndarray, s: np.ndarray,
              path_of: Callable[[int], str]) -> List[List[Match]]:
    """Single-linkage groups of pairs (a, b, score), largest first; each member's score is its
    best similarity to another member of its group."""
    parent: Dict[int, int] = {}
    best: Dict[int, float] = {}

    def find(i):
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, sc in zip(a.tolist(), b.tolist(), s.tolist()):
        best[i] = max(best.get(i, -1.0), sc)
        best[j] = max(best.get(j, -1.0), sc)
        parent[find(i)] = find(j)
    groups: Dict[int, List[int]] = {}
    for i in best:
        groups.setdefault(find(i), []).append(i)
    out = [sorted((Match(path_of(i), best[i]) for i in members), key=lambda m: m.path)
           for members in groups.values()]
    return sorted(out, key=lambda g: (-len(g), g[0].path))
