"""The input listing: every image file under `input.dir`, as sorted `/`-separated relative paths.

The relative path is the key that rides with each image to its output row, and the sort order
is the output order, so two runs over the same folder write the same rows in the same order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List


def list_images(root: Path, extensions: Iterable[str]) -> List[str]:
    """Relative paths (`/`-separated, sorted by code point) of files whose extension matches.

    Extensions are compared case-insensitively (`.JPG` is a jpg). Hidden files are included: a
    file that looks like an image is never skipped silently.
    """
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    found = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if os.path.splitext(name)[1].lower() in exts:
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                found.append(rel.replace(os.sep, "/"))
    found.sort()
    return found
