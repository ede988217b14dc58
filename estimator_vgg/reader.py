"""The Python stage of the input pipeline, for the entries TensorFlow cannot read itself:
remote objects, tar members, images only Pillow decodes, and EXIF orientations.

    reader = Reader(cfg.input, [(key, where), ...], errors, exif=True)  # output order
    for key, contents, orientation in reader.take(n): ...  # the next n that could be read

input.read_concurrency reads are in flight ahead of the decoder, on threads of its own, in
the order of the entries. What cannot be read is not yielded: its (reason, message) goes to
`errors[key]`, which the accountant (parts.py) reads when it meets the gap. Bytes TensorFlow
decodes (JPEG, PNG, GIF, BMP) are passed through untouched, so their fc7 is the local path's;
what only Pillow opens is decoded here, under the same pixel limit, and handed on as a BMP
(lossless, decoded by TensorFlow in microseconds), to be resized by the same TensorFlow ops.
"""
from __future__ import annotations

import collections
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, Sequence, Tuple

from estimator_vgg import remote
from estimator_vgg.sections import InputConfig
from estimator_vgg.remote import FetchError
from estimator_vgg.sources import Where, read_bytes

TF_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM")
ErrorRow = Tuple[str, str]


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of JPEG bytes; 1 when there is none or it cannot be read."""
    if not data.startswith(b"\xff\xd8"):
        return 1
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            return 1
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\0\0":
            return _tiff_orientation(data[i + 10:i + 2 + length])
        i += 2 + length
    return 1


def _tiff_orientation(t: bytes) -> int:
    order = {b"II": "little", b"MM": "big"}.get(t[:2])
    if order is None or len(t) < 8:
        return 1
    ifd = int.from_bytes(t[4:8], order)
    if ifd + 2 > len(t):
        return 1
    for k in range(int.from_bytes(t[ifd:ifd + 2], order)):
        at = ifd + 2 + 12 * k
        if at + 12 > len(t):
            break
        if int.from_bytes(t[at:at + 2], order) == 0x0112:  # Orientation, a SHORT
            value = int.from_bytes(t[at + 8:at + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def pillow_to_bmp(data: bytes, max_pixels: int) -> bytes:
    """An image only Pillow opens -> the same pixels as an RGB BMP; FetchError(too_large)
    from its header before decoding, FetchError(decode_error) if Pillow fails on it."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # input.max_pixels is checked here, before decoding
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise FetchError("too_large", f"the header claims {w}x{h} = {w * h} pixels, "
                                 f"above input.max_pixels={max_pixels}")
            rgb = im.convert("RGB")  # the first page or frame
    except FetchError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow's own words, with the format it saw
        raise FetchError("decode_error", f"Pillow: {type(e).__name__}: {e}") from None
    out = io.BytesIO()
    rgb.save(out, "BMP")
    return out.getvalue()


def pillow_opens(data: bytes) -> bool:
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Exception:  # noqa: BLE001
        return False


class Reader:
    """Bytes of `entries` in their order, input.read_concurrency ahead; exif: read each JPEG's
    EXIF orientation (preprocess.exif_orientation)."""

    def __init__(self, input_cfg: InputConfig, entries: Sequence[Tuple[str, Where]],
                 errors: Dict[str, ErrorRow], exif: bool = False):
        self.input_cfg, self.errors = input_cfg, errors
        self._entries = iter(entries)
        self._window: collections.deque = collections.deque()
        self._ahead = max(1, input_cfg.read_concurrency)
        self._pool = ThreadPoolExecutor(self._ahead, thread_name_prefix="estimator-vgg-read")
        self._closed = False
        self._pillow = input_cfg.fallback_decoder == "pillow"
        self._exif = exif

    def prepare(self, where: Where) -> Tuple[bytes, int]:
        """(bytes for TensorFlow's decoders, EXIF orientation) of one entry."""
        return self.decodable(read_bytes(self.input_cfg, where))

    def decodable(self, data: bytes) -> Tuple[bytes, int]:
        """(bytes for TensorFlow's decoders, EXIF orientation) of an image file's bytes."""
        if self._pillow and data and not data.startswith(TF_MAGIC) and pillow_opens(data):
            return pillow_to_bmp(data, self.input_cfg.max_pixels), 1
        return data, (jpeg_orientation(data) if self._exif else 1)

    def next_entry(self, wait: bool):
        """The next (key, where) to read ahead, None at the end. wait=False: the window holds
        entries already, so a subclass fed as it goes may say None when none is ready yet."""
        return next(self._entries, None)

    def _fill(self) -> None:
        while not self._closed and len(self._window) < 2 * self._ahead:
            nxt = self.next_entry(wait=not self._window)
            if nxt is None:
                return
            key, where = nxt
            self._window.append((key, self._pool.submit(self.prepare, where)))

    def take(self, n: int) -> Iterator[Tuple[bytes, bytes, int]]:
        """The next `n` entries that could be read, as (key, bytes, orientation)."""
        for _ in range(n):
            self._fill()
            if self._closed or not self._window:
                return
            key, future = self._window.popleft()
            try:
                data, orientation = future.result()
            except FetchError as e:
                self.errors[key] = (e.reason, remote.redact(e.message))
                continue
            except Exception as e:  # noqa: BLE001 - a bug here still names the entry
                self.errors[key] = ("read_error", remote.redact(f"{type(e).__name__}: {e}"))
                continue
            yield key.encode("utf-8", "surrogateescape"), data, orientation

    def close(self) -> None:
        self._closed = True  # TensorFlow's generator thread may still be in take()
        for _, f in self._window:
            f.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
