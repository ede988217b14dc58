"""Self-contained HTML pages of search results: thumbnails inlined as data URIs, no other file.

    neighbors_page(query_file, query_label, matches, locate, "page.html", source)
    duplicates_page(groups, locate, "dups.html", threshold, source)
"""
from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

log = logging.getLogger(__name__)

THUMB_PX = 180

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.note { color: #666; font-size: 13px; margin-bottom: 16px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 190px; background: #fff; border: 1px solid #ddd; border-radius: 6px;
        padding: 6px; box-sizing: border-box; }
.card.query { border: 2px solid #2a6edb; }
.card img, .card .missing { width: 178px; height: 178px; object-fit: contain; display: block;
        background: #eee; }
.card .missing { display: flex; align-items: center; justify-content: center; color: #999;
        font-size: 12px; }
.path { font-size: 12px; word-break: break-all; margin-top: 4px; }
.score { font-size: 13px; font-weight: 600; color: #2a6edb; }
"""


def thumbnail_uri(image: Union[Path, bytes, None], label: str = "") -> Optional[str]:
    """A JPEG thumbnail of an image (a file, or its bytes: query.image_source) as a data:
    URI, or None if it cannot be read or decoded (what only Pillow decodes, Pillow decodes)."""
    import tensorflow as tf

    if image is None:
        return None
    try:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        if not data.startswith((b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM")):
            from estimator_vgg.reader import pillow_opens, pillow_to_bmp
            if pillow_opens(data):
                data = pillow_to_bmp(data, 1 << 62)
        img = tf.io.decode_image(data, channels=3, expand_animations=False)
        img = tf.image.resize(img, [THUMB_PX, THUMB_PX], preserve_aspect_ratio=True,
                              antialias=True)
        data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8),
                                 quality=85).numpy()
    except (tf.errors.OpError, OSError) as e:
        from estimator_vgg.remote import redact
        log.warning("no thumbnail for %s: %s", redact(label or str(image)[:200]), e)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _card(image: Union[Path, bytes, None], label: str, score: Optional[float],
          query: bool = False) -> str:
    uri = thumbnail_uri(image, label)
    img = (f'<img src="{uri}" alt="{html.escape(label)}">' if uri
           else '<div class="missing">no preview</div>')
    score_html = f'<div class="score">{score:.4f}</div>' if score is not None else \
        '<div class="score">query</div>'
    cls = "card query" if query else "card"
    return (f'<div class="{cls}">{img}{score_html}<div class="path">{html.escape(label)}'
            f'</div></div>')


def _page(title: str, note: str, body: str) -> str:
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<div class=\"note\">{html.escape(note)}</div>{body}</body></html>\n")


def neighbors_page(query_file: Path, query_label: str, matches: Sequence,
                   locate: Callable[[str], Path], out: Path, source: str) -> None:
    """`locate(path)` gives the image of an output's path (query.image_source)."""
    cards = [_card(query_file, query_label, None, query=True)]
    cards += [_card(locate(m.path), m.path, m.score) for m in matches]
    body = f'<div class="grid">{"".join(cards)}</div>'
    note = (f"{len(matches)} nearest by cosine similarity of VGG16 fc7, from {source}")
    Path(out).write_text(_page(f"Images like {query_label}", note, body), encoding="utf-8")


MAX_GROUPS = 100      # groups drawn on a duplicates page; the rest are counted
MAX_PER_GROUP = 12    # images drawn per group; the rest are counted


def duplicates_page(groups: List[list], locate: Callable[[str], Path], out: Path,
                    threshold: float, source: str, scores: str = "fc7 cosine similarity",
                    max_groups: int = MAX_GROUPS, max_per_group: int = MAX_PER_GROUP,
                    pairs_file: Optional[Path] = None) -> None:
    """The groups, largest first: at most `max_groups` groups and `max_per_group` images of
    each are drawn (so a page of a million-row output stays small), and what is left out is
    counted on the page."""
    sections = []
    hidden_images = 0
    for n, group in enumerate(groups[:max_groups], 1):
        shown = group[:max_per_group]
        cards = "".join(_card(locate(m.path), m.path, m.score) for m in shown)
        more = (f'<div class="note">{len(group) - len(shown)} more images of this group not '
                f'shown</div>' if len(group) > len(shown) else "")
        hidden_images += len(group) - len(shown)
        sections.append(f"<h2>Group {n}: {len(group)} images</h2><div class=\"grid\">{cards}"
                        f"</div>{more}")
    body = "".join(sections) or "<p>No near-duplicates at this threshold.</p>"
    left = groups[max_groups:]
    note = (f"{len(groups)} group{'s' if len(groups) != 1 else ''} of images whose {scores} is at least "
            f"{threshold} (score: best similarity to another member), from {source}.")
    if left or hidden_images:
        note += (f" Left out of this page: {len(left)} groups ({sum(map(len, left))} images) "
                 f"after the first {max_groups}, and {hidden_images} images of the groups "
                 f"shown (at most {max_per_group} a group).")
        if pairs_file is not None:
            note += f" Every pair is in {pairs_file}."
    Path(out).write_text(_page("Near-duplicate images", note, body), encoding="utf-8")
