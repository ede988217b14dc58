"""Where an output's files live: a local folder, or a prefix of an object store (s3://, gs://).

    loc = location("out/demo")                          # Folder
    loc = location("s3://bucket/out", output_cfg)       # Bucket: the output section's options
    ref = loc.write("features/part-00000.parquet", write)  # whole, or not at all
    loc.create("_commits/000000000003.json", data)      # only if the name is new: else Exists
    loc.read(name); loc.open(name); loc.info(name); loc.list("features/"); loc.delete(name)

Names are `/`-separated and relative to the location. A Folder writes to a temporary name,
syncs and renames; a Bucket writes an object with one request (a multipart upload above
output.multipart_mb, aborted if it fails), and its create() is the store's own conditional
write (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`), which nothing else can race. Every
Bucket request has the output's timeout and is retried with backoff while it fails
transiently (remote.py); what keeps failing raises StorageError naming the object (query
strings and credentials cut). Light at import.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from estimator_vgg import remote

Writer = Callable[[object], None]        # write(f): the file's bytes into the binary file f


class StorageError(OSError):
    """A request to the output's store failed for good; the message names the object."""


class Exists(Exception):
    """create(): the name is taken."""


@dataclass(frozen=True)
class ObjectRef:
    """What was written: the name, its size, and the store's version of it where it has one
    (S3 ETag and VersionId, GCS generation), recorded with a commit."""
    name: str
    size: int
    etag: Optional[str] = None
    version: Optional[str] = None

    def to_dict(self) -> dict:
        return {k: v for k, v in (("key", self.name), ("size", self.size), ("etag", self.etag),
                                  ("version", self.version)) if v is not None}


def _bytes(write: Union[bytes, Writer]) -> bytes:
    if isinstance(write, (bytes, bytearray, memoryview)):
        return bytes(write)
    buf = io.BytesIO()
    write(buf)
    return buf.getvalue()


def is_store(where) -> bool:
    return isinstance(where, str) and "://" in where


def location(where, output_cfg=None):
    """The Folder or Bucket of an output: `where` is output.dir (a path or an s3://, gs://
    URI); output_cfg (the output section, or anything with storage_options, retries,
    request_timeout_s, multipart_mb) sets a Bucket's options."""
    if is_store(str(where)) and not isinstance(where, Path):
        return Bucket(str(where), output_cfg)
    return Folder(Path(where))


class Folder:
    """A local output folder."""
    remote = False

    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def open(self, name: str):
        return open(self.path(name), "rb", buffering=0)

    def info(self, name: str) -> Optional[dict]:
        try:
            st = self.path(name).stat()
        except FileNotFoundError:
            return None
        return {"size": st.st_size, "mtime": st.st_mtime}

    def list(self, prefix: str = "") -> List[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)).replace(os.sep, "/")
                      for p in base.rglob("*") if p.is_file())

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def write(self, name: str, write: Union[bytes, Writer],
              before_rename: Callable[[], None] = lambda: None) -> ObjectRef:
        """The file whole (temporary name, flushed, synced, renamed), or not at all."""
        from estimator_vgg.writer import commit_file

        final = self.path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        data = write if isinstance(write, (bytes, bytearray)) else None
        commit_file(final, (lambda f: f.write(data)) if data is not None else write,
                    before_rename)
        return ObjectRef(name, final.stat().st_size)

    def create(self, name: str, data: bytes) -> ObjectRef:
        final = self.path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise Exists(name) from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return ObjectRef(name, len(data))


class _Requests:
    """The output section's retry settings, as remote._retried takes them."""

    def __init__(self, output_cfg):
        self.retries = getattr(output_cfg, "retries", 3)
        self.request_timeout_s = float(getattr(output_cfg, "request_timeout_s", 60.0))
        self.storage_options = getattr(output_cfg, "storage_options", None)


class Bucket:
    """A prefix of an object store, through fsspec (s3fs, gcsfs: the remote extra)."""
    remote = True

    def __init__(self, uri: str, output_cfg=None):
        self.uri = uri.rstrip("/")
        self.scheme = remote.scheme(self.uri)
        self.cfg = _Requests(output_cfg)
        self.multipart = int(getattr(output_cfg, "multipart_mb", 64)) << 20
        self.fs = remote.filesystem(self.cfg, self.uri)
        self.root = self.fs._strip_protocol(self.uri).rstrip("/")

    def __str__(self) -> str:
        return remote.redact(self.uri)

    def key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def url(self, name: str) -> str:
        return remote.redact(f"{self.uri}/{name}")

    def _call(self, what: str, name: str, call):
        try:
            return remote._retried(self.cfg, call)
        except remote.FetchError as e:
            if e.reason == "missing":
                raise FileNotFoundError(f"{self.url(name)} does not exist") from None
            raise StorageError(f"{what} {self.url(name)} failed: {e.reason}: {e.message}"
                               ) from None

    def exists(self, name: str) -> bool:
        return self.info(name) is not None

    def read(self, name: str) -> bytes:
        return self._call("reading", name, lambda: self.fs.cat_file(self.key(name)))

    def open(self, name: str):
        """A seekable binary file over the object, read in ranged requests of 1 MiB, each with
        the output's timeout and retries (remote.RangeFile)."""
        info = self.info(name)
        if info is None:
            raise FileNotFoundError(f"{self.url(name)} does not exist")
        return remote.RangeFile(self.cfg, f"{self.uri}/{name}", info["size"])

    def info(self, name: str) -> Optional[dict]:
        """size, etag, version and mtime (the store's clock) of an object, fresh; None when
        it does not exist."""
        self.fs.invalidate_cache(self.key(name))
        try:
            raw = self._call("looking up", name, lambda: self.fs.info(self.key(name)))
        except FileNotFoundError:
            return None
        return {"size": int(raw.get("size", -1)), "etag": raw.get("ETag") or raw.get("etag"),
                "version": _version(raw), "mtime": _mtime(raw)}

    def list(self, prefix: str = "") -> List[str]:
        """Every object under the prefix, listed afresh (no cached listing)."""
        base = self.key(prefix.rstrip("/")) if prefix else self.root
        self.fs.invalidate_cache(base)
        try:
            found = self._call("listing", prefix, lambda: self.fs.find(base))
        except FileNotFoundError:
            return []
        return sorted(f[len(self.root) + 1:] for f in found if f.startswith(self.root + "/"))

    def delete(self, name: str) -> None:
        try:
            self._call("deleting", name, lambda: self.fs.rm_file(self.key(name)))
        except FileNotFoundError:
            pass

    def write(self, name: str, write: Union[bytes, Writer],
              before_rename: Callable[[], None] = lambda: None) -> ObjectRef:
        """The object whole (one request, or a multipart upload completed at once)."""
        data = _bytes(write)
        before_rename()
        return self._put(name, data, create=False)

    def create(self, name: str, data: bytes) -> ObjectRef:
        """The object, only if `name` is new (Exists otherwise). Bytes equal to ours there
        count as ours: every caller writes bytes no other writer could (a run id, a token)."""
        return self._put(name, data, create=True)

    def _put(self, name: str, data: bytes, create: bool) -> ObjectRef:
        put = _put_s3 if self.scheme == "s3" else _put_gcs
        out = self._call("writing", name, lambda: _exists_as(put, self, name, data, create))
        if out is _TAKEN:
            # A create whose answer was lost is retried (by the client library, or here) and
            # meets its own object: taken by this very write when the bytes are these.
            try:
                if self.read(name) == data:
                    info = self.info(name) or {}
                    return ObjectRef(name, len(data), info.get("etag"), info.get("version"))
            except FileNotFoundError:
                pass
            raise Exists(name)
        return out

    def abort_uploads(self, prefix: str = "") -> int:
        """Abort the multipart uploads left under the prefix (a killed run's); how many."""
        if self.scheme != "s3":
            return 0   # GCS resumable uploads expire by themselves; nothing is visible
        bucket, _, key = self.key(prefix).partition("/")
        aborted, more = 0, {}
        while True:   # a page of at most 1,000 uploads at a time
            listed = self._call("listing the uploads under", prefix, lambda: self.fs.call_s3(
                "list_multipart_uploads", Bucket=bucket, Prefix=key, **more))
            for u in listed.get("Uploads", []):
                self._call("aborting the upload of", u["Key"],
                           lambda u=u: self.fs.call_s3("abort_multipart_upload", Bucket=bucket,
                                                       Key=u["Key"], UploadId=u["UploadId"]))
                aborted += 1
            if not listed.get("IsTruncated"):
                return aborted
            more = {"KeyMarker": listed["NextKeyMarker"],
                    "UploadIdMarker": listed["NextUploadIdMarker"]}


_TAKEN = object()


def _exists_as(put, bucket: Bucket, name: str, data: bytes, create: bool):
    """put(), with a refused create-only write returned as _TAKEN (not an error to retry)."""
    try:
        return put(bucket, name, data, create)
    except FileExistsError:
        return _TAKEN
    except OSError as e:
        status = getattr(e, "status", None) or getattr(e, "code", None)
        if create and (status == 412 or "Precondition" in str(e) or "412" in str(e)):
            return _TAKEN
        raise


def _put_s3(bucket: Bucket, name: str, data: bytes, create: bool) -> ObjectRef:
    b, _, key = bucket.key(name).partition("/")
    cond: Dict[str, str] = {"IfNoneMatch": "*"} if create else {}
    fs = bucket.fs
    if len(data) <= bucket.multipart:
        out = fs.call_s3("put_object", Bucket=b, Key=key, Body=data, **cond)
    else:
        upload = fs.call_s3("create_multipart_upload", Bucket=b, Key=key)["UploadId"]
        try:
            parts = []
            for n, at in enumerate(range(0, len(data), bucket.multipart), start=1):
                from estimator_vgg.faults import fault
                if n > 1:
                    fault("multipart")
                r = fs.call_s3("upload_part", Bucket=b, Key=key, UploadId=upload, PartNumber=n,
                               Body=data[at:at + bucket.multipart])
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
            out = fs.call_s3("complete_multipart_upload", Bucket=b, Key=key, UploadId=upload,
                             MultipartUpload={"Parts": parts}, **cond)
        except BaseException:
            try:
                fs.call_s3("abort_multipart_upload", Bucket=b, Key=key, UploadId=upload)
            except Exception:  # noqa: BLE001 - the rerun aborts what is left (abort_uploads)
                pass
            raise
    fs.invalidate_cache(bucket.key(name))
    return ObjectRef(name, len(data), (out.get("ETag") or "").strip('"') or None,
                     out.get("VersionId"))


def _put_gcs(bucket: Bucket, name: str, data: bytes, create: bool) -> ObjectRef:
    fs = bucket.fs
    fs.pipe_file(bucket.key(name), data, mode="create" if create else "overwrite",
                 chunksize=max(bucket.multipart, 1 << 18))
    fs.invalidate_cache(bucket.key(name))
    info = fs.info(bucket.key(name))
    return ObjectRef(name, len(data), info.get("etag") or info.get("md5Hash"), _version(info))


def _version(raw: dict) -> Optional[str]:
    v = raw.get("VersionId") or raw.get("generation")
    return str(v) if v not in (None, "", "null") else None


def _mtime(raw: dict) -> Optional[float]:
    v = raw.get("LastModified") or raw.get("updated") or raw.get("mtime")
    if v is None:
        return None
    if hasattr(v, "timestamp"):
        return v.timestamp()
    try:
        import datetime
        return datetime.datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
