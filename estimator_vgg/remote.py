"""Remote bytes: s3://, gs://, http(s):// through fsspec and its filesystems (the `remote`
extra), with a timeout on every request, retries with backoff for what is transient, and a
reason for what is not.

    data = fetch(cfg.input, "s3://bucket/a.jpg")          # bytes, or FetchError(reason, message)
    data = fetch(cfg.input, "https://h/t.tar", 1024, 2048)  # a byte range

Light at import: fsspec is imported when a URI is first used. No secret reaches a message:
URL query strings (presigned signatures) are cut from every text this module produces.
"""
from __future__ import annotations

import functools
import io
import json
import re
import time
from typing import List, Optional, Tuple

# The schemes this job reads, and the package that handles each one.
BACKENDS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
INSTALL = ("install the remote extra: ESTIMATOR_VGG_REMOTE=1 ./run.sh ... (or "
           "pip install 'estimator-vgg[remote]')")
BACKOFF_S = 0.25  # first retry after this, doubling, at most MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0


class ExtraMissing(ValueError):
    """A URI whose filesystem package is not installed; config turns it into a ConfigError."""


class FetchError(OSError):
    """An entry that cannot be read: `reason` is the errors table's, `message` says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def redact(text: str) -> str:
    """`text` with the query string of every URL in it cut (signatures, tokens), and any
    user:password@ in a URL."""
    text = re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@'\"]+@", r"\1<redacted>@", str(text))
    return re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"]*)\?[^\s#'\"]*", r"\1?<redacted>",
                  text)


def _missing_extra(key: str, uri: str, package: str) -> Exception:
    return ExtraMissing(f"{key}: {redact(uri)} needs {package}, which is not installed: {INSTALL}")


def check_scheme(key: str, uri: str) -> bool:
    """Whether an installed filesystem handles `uri`'s scheme. A scheme this job knows whose
    package is missing raises ExtraMissing saying how to install it; a scheme nothing
    handles returns False (the entry's row: `unsupported_uri`). ExtraMissing when the scheme
    is one this job reads and its package is not installed."""
    s = scheme(uri)
    try:
        import fsspec
    except ImportError:
        if s in BACKENDS:
            raise _missing_extra(key, uri, "fsspec") from None
        return False
    if s in BACKENDS:
        try:
            __import__(BACKENDS[s])
        except ImportError:
            raise _missing_extra(key, uri, BACKENDS[s]) from None
        return True
    try:
        fsspec.get_filesystem_class(s)
    except (ValueError, ImportError):
        return False
    return s not in ("file", "local", "memory")  # local files are named as paths


def _options(input_cfg) -> str:
    return json.dumps(input_cfg.storage_options or {}, sort_keys=True, default=str)


@functools.lru_cache(maxsize=16)
def _filesystem(s: str, options: str, timeout_s: float):
    import fsspec

    opts = json.loads(options)
    if s in ("http", "https"):
        import aiohttp  # every request bounded: connect, read, the whole request
        return fsspec.filesystem("http", client_kwargs={"timeout": aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=timeout_s, sock_read=timeout_s)})
    if s == "s3":
        cfg = dict(opts.pop("config_kwargs", {}) or {})
        cfg.setdefault("connect_timeout", timeout_s)
        cfg.setdefault("read_timeout", timeout_s)
        # One attempt per request (botocore and s3fs would otherwise retry 5 x 5 times
        # themselves): the retries are _retried's, so `retries` and `request_timeout_s` bound
        # how long a failing store can hold the job.
        cfg.setdefault("retries", {"total_max_attempts": 1})
        fs = fsspec.filesystem("s3", config_kwargs=cfg, **opts)
        fs.retries = 1
        return fs
    if s in ("gs", "gcs"):
        opts.setdefault("timeout", timeout_s)
        return fsspec.filesystem("gs", **opts)
    return fsspec.filesystem(s, **opts)


def filesystem(input_cfg, uri: str):
    """The fsspec filesystem for `uri`, made once per scheme and input.storage_options."""
    return _filesystem(scheme(uri), _options(input_cfg), float(input_cfg.request_timeout_s))


def _classify(e: BaseException) -> Tuple[str, str]:
    """(reason, message) of a failed request; reason `transient` is worth a retry."""
    status = getattr(e, "status", None) or getattr(e, "code", None)
    answer = getattr(e.__cause__, "response", None)   # s3fs's OSError from botocore's answer
    if status is None and isinstance(answer, dict):
        status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = redact(f"{type(e).__name__}: {e}")
    if isinstance(e, FileNotFoundError) or status in (404, 410):
        return "missing", message
    forbidden = isinstance(e, OSError) and str(e).startswith("Forbidden: ")   # gcsfs's 403
    if isinstance(e, PermissionError) or status in (401, 403) or forbidden:
        return "permission_denied", message
    if isinstance(status, int):
        return ("transient" if status >= 500 or status in (408, 429) else "read_error"), message
    transient = (ConnectionError, TimeoutError)
    try:
        import asyncio

        import aiohttp
        transient += (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                      asyncio.TimeoutError)
    except ImportError:
        pass
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError
        transient += (BotoConnectionError, HTTPClientError)   # refused, reset, closed, timed out
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError
        transient += (FSTimeoutError,)
    except ImportError:
        pass
    if isinstance(e, transient) or "timeout" in type(e).__name__.lower():
        return "transient", message
    return "read_error", message


def _retried(input_cfg, call):
    """call(), retried input.retries times with backoff while it fails transiently;
    FetchError(missing | permission_denied | read_error) otherwise."""
    attempts = input_cfg.retries + 1
    for attempt in range(attempts):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - every failure becomes a reason
            reason, message = _classify(e)
            if reason != "transient":
                raise FetchError(reason, message) from None
            if attempt + 1 == attempts:
                raise FetchError("read_error", f"{message} (after {attempts} attempts)") from None
            time.sleep(min(MAX_BACKOFF_S, BACKOFF_S * 2 ** attempt))
    raise AssertionError("unreachable")


def fetch(input_cfg, uri: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
    """The bytes of `uri` (or of [start, end)), retried while the failure is transient."""
    fs = filesystem(input_cfg, uri)
    return _retried(input_cfg, lambda: fs.cat_file(uri, start=start, end=end))


def size(input_cfg, uri: str) -> int:
    """The size of the object at `uri`, retried as fetch() is."""
    fs = filesystem(input_cfg, uri)
    return _retried(input_cfg, lambda: int(fs.size(uri)))


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over a remote object, read in blocks of `block` bytes by
    fetch() (so every request has its timeout and its retries): what tarfile reads headers
    through, and pyarrow and the part readers read an output's objects through."""

    def __init__(self, input_cfg, uri: str, total: int, block: int = 1 << 20):
        super().__init__()
        self.cfg, self.uri, self.total, self.block = input_cfg, uri, total, block
        self.pos = 0
        self._cache: dict = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.read(len(memoryview(buf).cast("B")))
        memoryview(buf).cast("B")[:len(data)] = data
        return len(data)

    def _block(self, k: int) -> bytes:
        if k not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            start = k * self.block
            self._cache[k] = fetch(self.cfg, self.uri, start, min(self.total, start + self.block))
        return self._cache[k]

    def read(self, n: int = -1) -> bytes:
        end = self.total if n is None or n < 0 else min(self.total, self.pos + n)
        out = []
        while self.pos < end:
            k, at = divmod(self.pos, self.block)
            piece = self._block(k)[at:at + end - self.pos]
            if not piece:
                break
            out.append(piece)
            self.pos += len(piece)
        return b"".join(out)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.total + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._cache.clear()
        super().close()


def list_prefix(input_cfg, prefix: str) -> List[str]:
    """Every object under `prefix` (s3:// or gs://), as keys relative to it, `/`-separated."""
    fs = filesystem(input_cfg, prefix)
    root = fs._strip_protocol(prefix).rstrip("/")
    try:
        found = _retried(input_cfg, lambda: fs.find(root))
    except FetchError as e:
        from estimator_vgg.listing import ListingError
        raise ListingError(f"cannot list {redact(prefix)} ({e.reason}: {e.message}); check the "
                           f"prefix, its permissions and input.storage_options") from None
    return sorted(f[len(root) + 1:] for f in found if f.startswith(root + "/"))


def join(prefix: str, rel: str) -> str:
    return prefix.rstrip("/") + "/" + rel
