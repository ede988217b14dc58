"""Search over an output, chosen in one place: its index (index_search.py) when it has one,
else exact search (exact.py); both are searcher.Searcher.

    searcher = open_searcher("out/big")            # the index when there is one, else exact
    searcher.how()                                 # what is searched and what the scores are
    matches = nearest_to(searcher, "a/b.jpg", k=10)  # a path of the output, or an image file
    a, b, s = searcher.duplicate_pairs(0.98)       # row ids; searcher.path_of(row)

A query by a path of the output reads that path's column and its one row: no TensorFlow, no
other row's vector (through an index; exact search reads every row). Light at import.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional

from estimator_vgg import index_files
from estimator_vgg.exact import ExactSearcher
from estimator_vgg.index_search import load_index
from estimator_vgg.searcher import Match, Searcher, SearchError, not_a_query, open_output


def open_searcher(where, exact: bool = False, say: Callable[[str], None] = lambda line: None,
                  storage_options: Optional[dict] = None) -> Searcher:
    """The searcher of an output (a folder, or an s3:// or gs:// prefix read with
    storage_options): its index when it has one (and exact is False), else exact search.
    say(line) hears what the user should know: an index that cannot be used (faiss missing)
    or that is stale. SearchError when the output has no feature rows."""
    output = open_output(where, storage_options)
    manifest = output.manifest
    if not any(p.features for p in manifest.parts):
        raise SearchError(f"{output.dir} has no feature rows ({len(manifest.parts)} parts "
                          f"committed, none with features): run the job first, or look in "
                          f"its errors table")
    if not exact and index_files.has_index(output):
        try:
            searcher = load_index(output)
        except SearchError as e:
            if index_files.INSTALL_HINT not in str(e):
                raise
            say(f"{output.dir} has an index, but {e}; searching exactly")
        else:
            if searcher.stale_parts:
                say(f"the index is stale: {len(searcher.stale_parts)} parts committed since "
                    f"it was built are searched exactly; run `estimator-vgg index "
                    f"{output.dir}` to add them")
            return searcher
    return ExactSearcher(output)


def nearest_to(searcher: Searcher, query: str, k: int = 10) -> List[Match]:
    """The k nearest rows to `query`: a path of the output (its row left out), or an image
    file, embedded with the weights and preprocessing the output was made with."""
    if searcher.row_of(query) is not None:
        return searcher.search_paths([query], k)[0]
    if os.path.isfile(query):
        from estimator_vgg.query import embed_file
        return searcher.search(embed_file(searcher.output, Path(query)), k)[0]
    raise SearchError(not_a_query(searcher.out_dir, query))


def describe_output(where) -> str:
    """The output's name for a page, with a warning when its weights were synthetic."""
    output = open_output(where)
    synthetic = output.manifest.fingerprint.synthetic_weights
    return f"{output.dir}" + (" (synthetic weights: not ImageNet features)" if synthetic
                              else "")
