"""What an Embedder's items are and how they are read: paths and URIs as the job reads a list's
entries, bytes of an image file, uint8 RGB arrays and PIL images; and why one failed.

    call = Call(7, room=4)                    # one embed() call: its queue of Items, its errors
    reader = ItemReader(cfg.input, exif, call, current)  # the Python stage over the call
    reason, message = why(cfg.input, cfg.preprocess, item)  # a dropped item, as probe.py says

Paths and bytes are handed to TensorFlow's decoders as the job's Python stage hands them (the
Pillow fallback and EXIF orientation included); an array or a PIL image as its pixels in a
BMP, which TensorFlow decodes losslessly. Light at import (embedder.py says how the calls run).
"""
from __future__ import annotations

import io
import os
import queue
import sys
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from estimator_vgg.reader import Reader
from estimator_vgg.remote import ExtraMissing, FetchError, check_scheme, redact, scheme
from estimator_vgg.sections import is_uri

POLL_S = 0.05  # how often a wait for items looks whether its call was given up
END = object()  # the end of a call's items, in its queue


class Item:
    """One item of a call: its position and what the caller gave (a path-like as its str)."""
    __slots__ = ("index", "obj")

    def __init__(self, index: int, obj):
        self.index = index
        self.obj = os.fsdecode(obj) if isinstance(obj, os.PathLike) else obj

    def name(self, input_dir=None) -> str:
        """What the item was, for its error: a relative path with the input.dir it is under."""
        o = self.obj
        if isinstance(o, str):
            under = not (is_uri(o) or os.path.isabs(o) or input_dir is None)
            return repr(redact(o)) + (f" under input.dir {redact(str(input_dir))}" if under
                                      else "")
        if isinstance(o, (bytes, bytearray, memoryview)):
            return f"{memoryview(o).nbytes} bytes starting {bytes(o[:8])!r}"
        if isinstance(o, np.ndarray):
            return f"an array of {o.dtype} {tuple(o.shape)}"
        if is_pil(o):
            return f"a PIL image, {o.mode} {o.width}x{o.height}"
        return f"a {type(o).__name__}"


def is_pil(o) -> bool:
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(o, pil.Image)


def single(items) -> bool:
    """Whether `items` is one item rather than an iterable of them."""
    return (isinstance(items, (str, bytes, bytearray, memoryview, os.PathLike)) or is_pil(items)
            or (isinstance(items, np.ndarray) and items.ndim == 3))


def to_bmp(image) -> bytes:
    """A PIL image or a uint8 [h, w, 3] array as the same pixels in a BMP, which TensorFlow
    decodes losslessly (as reader.pillow_to_bmp hands on Pillow's formats)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or not image.size:
            raise FetchError("not_an_image", f"an array of {image.dtype} {tuple(image.shape)} "
                             f"is not an image this embeds: give uint8 [height, width, 3] RGB, "
                             f"as a decoder returns it")
        image = Image.fromarray(np.ascontiguousarray(image), "RGB")
    out = io.BytesIO()
    image.save(out, "BMP")
    return out.getvalue()


def pil_orientation(image) -> int:
    """The EXIF orientation (1-8) a PIL image carries; 1 when none or unreadable."""
    try:
        o = int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: as stored, as jpeg_orientation says
        return 1
    return o if 1 <= o <= 8 else 1


class Call:
    """One embed() call as both sides see it: the caller puts its Items (then END) in `feed`,
    the Python stage takes them; what it cannot read goes to `errors` by key."""

    def __init__(self, cid: int, room: int):
        self.id = cid
        self.feed: queue.Queue = queue.Queue(maxsize=room)
        self.errors: Dict[str, Tuple[str, str]] = {}
        self.pending: Dict[int, Item] = {}   # fed, not yet accounted for (the caller's side)
        self.fed = 0
        self.ended = False                   # the Python stage took END
        self.broken: Optional[BaseException] = None  # the Python stage itself failed

    def key(self, index: int) -> str:
        return f"{self.id}:{index}"


class ItemReader(Reader):
    """The Python stage over one call's items (reader.Reader: read ahead on its own threads,
    in order): a path or URI read as the job reads a list's entries (sources.read_entry),
    bytes as they are, arrays and PIL images as BMPs. current(): the call being served; once
    it is another one the call was given up, and this reader stops."""

    def __init__(self, input_cfg, exif: bool, call: Call, current: Callable[[], object]):
        super().__init__(input_cfg, (), call.errors, exif=exif)
        self.exif, self.call, self.current = exif, call, current
        self.schemes: Dict[str, object] = {}

    def next_entry(self, wait: bool):
        call = self.call
        while not call.ended:
            if call is not self.current():   # given up (Ctrl-C, an error) or closed
                self.close()
                return None
            try:
                item = call.feed.get(timeout=POLL_S) if wait else call.feed.get_nowait()
            except queue.Empty:
                if not wait:
                    return None
                continue
            if item is END:
                call.ended = True
                return None
            return call.key(item.index), item
        return None

    def prepare(self, item: Item) -> Tuple[bytes, int]:
        o = item.obj
        if isinstance(o, str):
            return self.decodable(self.read(o))
        if isinstance(o, (bytes, bytearray, memoryview)):
            return self.decodable(bytes(o))
        if isinstance(o, np.ndarray):
            return to_bmp(o), 1
        if is_pil(o):
            return to_bmp(o.convert("RGB")), (pil_orientation(o) if self.exif else 1)
        raise FetchError("not_an_image", f"a {type(o).__name__} is not an item this embeds: "
                         f"give a path, a URI, the bytes of an image file, a uint8 [height, "
                         f"width, 3] array or a PIL image")

    def read(self, key: str) -> bytes:
        """The bytes a path or URI names, resolved as a list entry of the job: relative to
        input.dir, absolute, a URI, or a tar member."""
        from estimator_vgg.sources import read_entry

        if is_uri(key):
            s = scheme(key)
            if s not in self.schemes:
                try:
                    self.schemes[s] = check_scheme("an item", key) or (
                        f"no installed filesystem reads {s}:// URIs")
                except ExtraMissing as e:
                    self.schemes[s] = str(e)
            if self.schemes[s] is not True:
                raise FetchError("unsupported_uri", str(self.schemes[s]))
        elif not os.path.isabs(key) and self.input_cfg.dir is None:
            raise FetchError("missing", "a relative path, and input.dir is not set: give an "
                             "absolute path, or set input.dir")
        return read_entry(self.input_cfg, key)


def why(input_cfg, preprocess_cfg, item: Item) -> Tuple[str, str]:
    """(reason, message) of an item the pipeline dropped, as the errors table gives it: a
    local file classified as the job's list entries are (probe.classify), other bytes
    (a URI's, a tar member's, the caller's, an array's BMP) read again and classified."""
    from estimator_vgg import probe

    i, p, o = input_cfg, preprocess_cfg, item.obj
    if isinstance(o, str) and not is_uri(o) and ".tar/" not in o.lower() and (
            os.path.isabs(o) or (i.dir is not None and not is_uri(i.dir))):
        return probe.classify("", os.path.join(str(i.dir or ""), o), i.max_pixels, True, p)
    reader = ItemReader(i, p.exif_orientation, Call(0, 1), lambda: None)
    try:
        data = reader.read(o) if isinstance(o, str) else reader.prepare(item)[0]
    except FetchError as e:
        return e.reason, redact(e.message)
    finally:
        reader.close()
    return probe.classify_bytes(data, i.max_pixels, p, i.fallback_decoder == "pillow")
