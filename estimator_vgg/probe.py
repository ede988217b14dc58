"""Why an image failed: a short machine-readable reason and the decoder's own words.

Runs only for the files the pipeline dropped (and for symlinks that must not be opened), so
the good path never pays for it.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:
    from estimator_vgg.sections import InputConfig, PreprocessConfig
    from estimator_vgg.sources import Where

# Formats Pillow reads but TensorFlow's decoders do not: reported, not decoded.
_UNSUPPORTED = [
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"8BPS", "Photoshop"), (b"\x00\x00\x01\x00", "ICO"),
]
_SUPPORTED = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM")



def special_file(path: os.PathLike) -> bool:
    """Whether `path` exists and is neither a regular file nor a folder (FIFO, socket, device)."""
    import stat
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # missing or dangling: classify() says which
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@functools.lru_cache(maxsize=8)
def _real(root: str) -> str:
    return os.path.realpath(root)


def outside_root(root: Path, rel: str) -> bool:
    """Whether `rel` is a symlink (or under one) whose target lies outside `root`."""
    target = os.path.realpath(os.path.join(root, rel))
    real_root = _real(str(root))  # once per root, not once per file
    return os.path.commonpath([target, real_root]) != real_root


def _clean(message: str) -> str:
    """TensorFlow's message without its `{{function_node ...}}` prefix, op suffix, and the
    Python stack of where the op was defined (graph mode: "Detected at node ... Node: 'x'"),
    which says nothing about the file and differs from one process to the next."""
    if "Detected at node" in message:
        message = re.split(r"^Node: '[^']*'\s*$", message, flags=re.M)[-1]
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*\[\[\{\{node [^\]]*\]\]", "", message)
    return re.sub(r"\s*\[Op:\w+\].*$", "", message, flags=re.S).strip()


def classify(root: Path, rel: str, max_pixels: int,
             follow_external_symlinks: bool = False,
             preprocessing: Optional["PreprocessConfig"] = None) -> Tuple[str, str]:
    """(reason, message) for a file the pipeline could not turn into an image, decoded as the
    pipeline decodes it: preprocess.preprocess with the job's `preprocessing` (default: the
    defaults), so the reason and message are those of the decode the job ran (fast_decode's
    windowed decode, say), and a file only the other path reads is not called unreadable."""
    path = os.path.join(root, rel)
    if os.path.islink(path) and not os.path.exists(path):
        return "dangling_symlink", f"symlink to {os.readlink(path)}, which does not exist"
    if not follow_external_symlinks and outside_root(Path(root), rel):
        return ("symlink_outside_root", f"links to {os.path.realpath(path)}, outside input.dir; "
                "set input.follow_external_symlinks: true to read it")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError as e:
        return "missing", f"{e.strerror} (removed during the run?)"
    except PermissionError as e:
        return "permission_denied", e.strerror
    except IsADirectoryError:
        return "not_a_file", "a folder named like an image"
    except OSError as e:
        return "read_error", e.strerror or str(e)
    return _by_head(head, max_pixels, preprocessing, path=path)


def classify_bytes(data: bytes, max_pixels: int,
                   preprocessing: Optional["PreprocessConfig"] = None,
                   pillow: bool = False) -> Tuple[str, str]:
    """(reason, message) for bytes (a remote object, a tar member) the pipeline could not
    turn into an image; pillow: input.fallback_decoder was pillow (and did not open it)."""
    return _by_head(data[:64], max_pixels, preprocessing, data=data, pillow=pillow)


def _by_head(head: bytes, max_pixels: int, preprocessing, path: str = None,
             data: bytes = None, pillow: bool = False) -> Tuple[str, str]:
    if not head:
        return "empty_file", "the file has 0 bytes"
    for magic, name in _UNSUPPORTED:
        if head.startswith(magic) and (name != "WebP" or head[8:12] == b"WEBP"):
            if pillow:
                return ("unsupported_format", f"{name}: neither TensorFlow nor the installed "
                        f"Pillow decodes this file; convert it")
            return ("unsupported_format", f"{name}: TensorFlow decodes JPEG, PNG, GIF and BMP "
                    "only; set input.fallback_decoder: pillow, or convert the file")
    if not head.startswith(_SUPPORTED):
        return "not_an_image", f"not an image file this job reads (starts with {head[:8]!r})"
    return _decode_failure(path, max_pixels, preprocessing, data)


def _decode_failure(path: str, max_pixels: int, preprocessing=None,
                    data: bytes = None) -> Tuple[str, str]:
    import tensorflow as tf

    from estimator_vgg.sections import PreprocessConfig
    from estimator_vgg.preprocess import header_size, preprocess

    p = preprocessing or PreprocessConfig()

    # A graph of its own: this runs inside Estimator.predict, whose graph is finalized.
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        contents = tf.io.read_file(path) if data is None else tf.constant(data)
        try:
            h, w = (int(v) for v in sess.run(header_size(contents)))
            if h * w > max_pixels:
                return ("too_large", f"the header claims {w}x{h} = {h * w} pixels, above "
                        f"input.max_pixels={max_pixels}")
            sess.run(preprocess(contents, p.resize, p.antialias, 0, p.jpeg_dct_scaling,
                                p.fast_decode))
        except tf.errors.OpError as e:
            return "decode_error", _clean(e.message)
    return "read_error", "failed during the run but reads now (was it being written?)"


class Prober:
    """Why an entry the pipeline dropped failed, asked where its bytes are and decoded as the
    job decodes them: a file under input.dir (symlink rules and all), a listed local file
    (named by the user, so its symlinks are followed), or the bytes of a remote object or a tar
    member, read again."""

    def __init__(self, input_cfg: "InputConfig", preprocess_cfg: "PreprocessConfig"):
        self.input_cfg, self.preprocess_cfg = input_cfg, preprocess_cfg

    def __call__(self, rel: str, where: Optional["Where"]) -> Tuple[str, str]:
        from estimator_vgg.remote import FetchError
        from estimator_vgg.sources import read_bytes

        i, p = self.input_cfg, self.preprocess_cfg
        if where is None or (i.list is None and not where.remote and not where.member):
            return classify(i.dir, rel, i.max_pixels, i.follow_external_symlinks, p)
        if not where.remote and not where.member:
            return classify("", where.target, i.max_pixels, True, p)
        try:
            data = read_bytes(i, where)
        except FetchError as e:
            return e.reason, e.message
        return classify_bytes(data, i.max_pixels, p, i.fallback_decoder == "pillow")
