"""Weights that come over the network: Keras' published ImageNet file and a Keras-layout .h5
at an http(s):// URL (a company mirror), fetched by one downloader into one cache each.

    ensure(url, dest, hash, algorithm)   # Keras' own downloader, atomic, hash checked

Light at import (TensorFlow, whose Keras downloader this is, is imported by `ensure` only), so
--dry-run can say where the weights would come from without fetching them.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

IMAGENET_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
IMAGENET_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                + IMAGENET_FILE)
IMAGENET_MD5 = "64373286793e3c8b2b4e3219cbf3544b"
log = logging.getLogger(__name__)
TIMEOUT_S = 60  # per socket operation: a stalled server fails the download, never hangs it


def is_url(weights: str) -> bool:
    return weights.startswith(("http://", "https://"))


def without_query(url: str) -> str:
    """The URL as shown in logs and errors: a presigned query string carries a signature."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl() + ("?..." if parts.query else "")


def imagenet_path() -> Path:
    """Where Keras keeps the ImageNet file ($KERAS_HOME or ~/.keras, then models/)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / IMAGENET_FILE


def url_path(url: str, cache_dir: Path) -> Path:
    """Where weights from `url` are cached: under model.cache_dir, one file per URL without
    its query string (a presigned URL's signature changes; the file does not)."""
    bare = urlsplit(url)._replace(query="", fragment="").geturl()
    name = os.path.basename(urlsplit(url).path) or "weights.h5"
    key = hashlib.sha256(bare.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "downloads" / f"{key}-{name}"


def _hash_ok(path: Path, digest: str, algorithm: str) -> bool:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest() == digest.lower()


def ensure(url: str, dest: Path, digest: Optional[str] = None,
           algorithm: str = "sha256") -> Path:
    """`dest`, downloaded from `url` unless it is there (and matches `digest` when given).

    The bytes come through Keras' downloader (tf.keras.utils.get_file, with its progress bar
    and hash check) into a temporary name beside `dest`, renamed into place only when whole
    and, with a digest, verified: a failed or mismatching download leaves nothing cached.
    Raises OSError or ValueError with the downloader's words.
    """
    if dest.is_file() and (digest is None or _hash_ok(dest, digest, algorithm)):
        return dest
    import tensorflow as tf

    dest.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(dest.parent, os.W_OK):  # Keras would quietly download elsewhere
        raise OSError(f"{dest.parent} is not writable")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S)
    log.info("downloading %s into %s", without_query(url), dest)
    try:
        # Keras prints the URL it fetches, signature and all: its chatter is dropped
        with contextlib.redirect_stdout(io.StringIO()):
            got = tf.keras.utils.get_file(tmp.name, url, cache_dir=str(dest.parent),
                                          cache_subdir=".", file_hash=digest,
                                          hash_algorithm=algorithm if digest else "auto")
        if Path(got).resolve() != tmp.resolve():
            raise OSError(f"the download landed in {got}, not {tmp}")
        os.replace(got, dest)
    except Exception as e:
        message = str(e).replace(url, without_query(url))  # no signature in any message
        raise (ValueError if isinstance(e, ValueError) else OSError)(message) from None
    finally:
        socket.setdefaulttimeout(old)
        tmp.unlink(missing_ok=True)  # Keras keeps a file whose hash did not match
    return dest
