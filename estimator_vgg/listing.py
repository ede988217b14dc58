"""The input listing: every image file under `input.dir`, as sorted `/`-separated relative paths.

The relative path is the key that rides with each image to its output row, and the sort order
is the output order, so two runs over the same folder write the same rows in the same order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List


class ListingError(OSError):
    """A folder under input.dir cannot be listed; the message names it."""


def display_path(rel: str) -> str:
    """The path as written to the output tables: `rel` itself when it is valid UTF-8; a name
    that is not (bytes listed by Python as surrogates) with each such byte written as \\xNN,
    since Parquet, JSON and CSV hold UTF-8 text only."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace")


def list_images(root: Path, extensions: Iterable[str]) -> List[str]:
    """Relative paths (`/`-separated, sorted by code point) of files whose extension matches.

    Extensions are compared case-insensitively (`.JPG` is a jpg). Hidden files are included: a
    file that looks like an image is never skipped silently.
    """
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    found = []
    root = Path(root)
    def unreadable(err: OSError) -> None:  # never skip a folder silently
        raise ListingError(f"cannot list {err.filename} under input.dir ({err.strerror}); fix "
                           f"its permissions or move it out of input.dir")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if os.path.splitext(name)[1].lower() in exts:
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                found.append(rel.replace(os.sep, "/"))
    found.sort()
    return found
