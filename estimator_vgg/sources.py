"""What a job reads: the entries of a folder, an s3:// or gs:// prefix, or a list file, each
with the output `path` it is keyed by and where its bytes are (a local file, a URI, or a
member of a tar shard), in output order.

    listing = sources.build(cfg.input)    # Listing: keys, where, preset rows
    todo = sources.todo(listing, first, repeats)   # indices still to do on a resume

A folder keeps today's form: sorted `/`-separated relative paths, local files read by
TensorFlow. A list is taken line by line: every line yields exactly one row, a repeated
entry the row `duplicate_entry`. Tar shards (input.expand_tars) are read header by header,
never extracted: a member is a byte range of its tar. Light at import.
"""
from __future__ import annotations

import logging
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from estimator_vgg import remote
from estimator_vgg.sections import ConfigError, InputConfig, is_uri
from estimator_vgg.listing import display_path, list_images
from estimator_vgg.manifest import LIST_COPY
from estimator_vgg.parquet_layout import read_table

log = logging.getLogger(__name__)

TF_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "bmp"})  # TensorFlow decodes these
DUPLICATE = "duplicate_entry"


@dataclass(frozen=True)
class Where:
    """Where an entry's bytes are: a local file or a URI (`target`); for a tar member, the
    byte range [offset, offset + size) of the tar at `target`."""
    target: str
    remote: bool = False
    offset: int = -1
    size: int = -1

    @property
    def member(self) -> bool:
        return self.offset >= 0


@dataclass
class Listing:
    kind: str                          # "folder", "prefix" or "list"
    keys: List[str] = field(default_factory=list)      # the output `path` of each entry
    where: List[Optional[Where]] = field(default_factory=list)  # None: its row is preset
    preset: Dict[int, Tuple[str, str]] = field(default_factory=dict)  # index: (reason, msg)
    lines: Optional[List[str]] = None  # a list's entries as read (for the append check)
    labels: Optional[List[str]] = None  # where each is in the list file: "line 7", "row 7"
    tars: int = 0
    tar_of: Dict[int, str] = field(default_factory=dict)  # index: the key of its tar (members,
    # `<tar>/`, and the tar's own row when it could not be opened)

    def add(self, key: str, where: Optional[Where], preset: Optional[Tuple[str, str]] = None):
        if preset is not None:
            self.preset[len(self.keys)] = preset
        self.keys.append(key)
        self.where.append(where)

    @property
    def remote(self) -> int:
        return sum(1 for w in self.where if w is not None and w.remote)


def python_needed(where, pillow: bool, exif: bool) -> bool:
    """Whether any entry of `where` needs the Python stage (a remote read, a tar member, Pillow
    for input.fallback_decoder: pillow, the EXIF orientation for preprocess.exif_orientation)
    rather than TensorFlow reading the local file itself."""
    if exif:
        return True
    for w in where:
        if w is None:
            continue
        if w.remote or w.member:
            return True
        if pillow and _ext(w.target) not in TF_EXTENSIONS:
            return True
    return False


def _ext(name: str) -> str:
    return os.path.splitext(name.split("?", 1)[0])[1].lower().lstrip(".")


def _is_tar(name: str) -> bool:
    return _ext(name) == "tar"


def read_bytes(input_cfg: InputConfig, where: Where) -> bytes:
    """The bytes an entry names: a local file, a URI, or a tar member's range of either."""
    if where.remote:
        if where.member:
            return remote.fetch(input_cfg, where.target, where.offset, where.offset + where.size)
        return remote.fetch(input_cfg, where.target)
    try:
        with open(where.target, "rb") as f:
            if where.member:
                f.seek(where.offset)
                return f.read(where.size)
            return f.read()
    except FileNotFoundError as e:
        if os.path.islink(where.target):
            raise remote.FetchError("dangling_symlink", f"symlink to {os.readlink(where.target)}"
                                    f", which does not exist") from None
        raise remote.FetchError("missing", f"{e.strerror} (removed during the run?)") from None
    except PermissionError as e:
        raise remote.FetchError("permission_denied", e.strerror) from None
    except IsADirectoryError:
        raise remote.FetchError("not_a_file", "a folder named like an image") from None
    except OSError as e:
        raise remote.FetchError("read_error", e.strerror or str(e)) from None


# ----------------------------------------------------------------------------- building

def build(input_cfg: InputConfig) -> Listing:
    """The entries of the job, in output order (ConfigError for an unusable list)."""
    i = input_cfg
    exts = set(i.extensions) | ({"tar"} if i.expand_tars else set())
    if i.list is not None:
        return _from_list(i)
    if is_uri(i.dir):
        listing = Listing("prefix")
        for rel in remote.list_prefix(i, i.dir):
            if _ext(rel) in exts:
                _add_entry(i, listing, rel, Where(remote.join(i.dir, rel), remote=True))
        return listing
    listing = Listing("folder")
    for rel in list_images(i.dir, exts):
        _add_entry(i, listing, rel, Where(os.path.join(str(i.dir), rel)))
    return listing


def _add_entry(input_cfg: InputConfig, listing: Listing, key: str, where: Where) -> None:
    if input_cfg.expand_tars and _is_tar(where.target):
        _add_tar(input_cfg, listing, key, where)
    else:
        listing.add(key, where)


def _add_tar(input_cfg: InputConfig, listing: Listing, key: str, where: Where) -> None:
    """Every image member of the tar as an entry, then `<tar>/` (bad_archive) if it is
    damaged; headers only are read (a remote tar by ranged requests)."""
    listing.tars += 1
    before = len(listing.keys)
    try:
        _tar_entries(input_cfg, listing, key, where)
    finally:
        listing.tar_of.update((k, key) for k in range(before, len(listing.keys)))


def _tar_entries(input_cfg: InputConfig, listing: Listing, key: str, where: Where) -> None:
    exts = set(input_cfg.extensions)
    try:
        if where.remote:
            total = remote.size(input_cfg, where.target)
            f = remote.RangeFile(input_cfg, where.target, total)
        else:
            total = os.path.getsize(where.target)
            f = open(where.target, "rb")
    except (OSError, remote.FetchError) as e:
        reason, message = ((e.reason, e.message) if isinstance(e, remote.FetchError) else
                           ("missing" if isinstance(e, FileNotFoundError) else "read_error",
                            e.strerror or str(e)))
        if reason == "read_error" and where.remote:  # a server that keeps failing
            raise _unreadable_tar(key, message) from None
        listing.add(key, None, (reason, remote.redact(message)))
        return
    damage, end = None, 0
    with f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
            while True:
                m = tar.next()
                if m is None:
                    break
                end = m.offset_data + (-(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
                if m.offset_data + m.size > total:
                    damage = (f"member {m.name} needs {m.offset_data + m.size} bytes, the tar "
                              f"has {total}: truncated")
                    break
                if m.isfile() and _ext(m.name) in exts:
                    listing.add(f"{key}/{m.name}", Where(where.target, where.remote,
                                                        m.offset_data, m.size))
        except remote.FetchError as e:  # the headers could not be read: not the tar's fault
            raise _unreadable_tar(key, e.message) from None
        except (tarfile.TarError, EOFError, OSError) as e:
            damage = f"{type(e).__name__}: {e}"
        if damage is None:  # tarfile stops quietly at a bad header past the first one
            try:
                f.seek(end)
                tail = f.read(2 * tarfile.BLOCKSIZE)
            except remote.FetchError as e:
                raise _unreadable_tar(key, e.message) from None
            except OSError as e:
                tail, damage = b"", f"{type(e).__name__}: {e}"
            if damage is None and (len(tail) < 2 * tarfile.BLOCKSIZE or tail.strip(b"\0")):
                damage = (f"no valid header or end-of-archive marker at byte {end} of {total}: "
                          f"truncated or corrupt")
    if damage is not None:
        listing.add(f"{key}/", None, ("bad_archive", remote.redact(damage) + "; the members "
                                      "before the damage were read"))


def _unreadable_tar(key: str, message: str) -> Exception:
    from estimator_vgg.listing import ListingError
    return ListingError(f"cannot read the headers of the tar {remote.redact(key)} "
                        f"({remote.redact(message)}), so its members cannot be listed; the job "
                        f"stops before any work. Rerun when the server answers (raise "
                        f"input.retries or input.request_timeout_s), or remove the entry")


def read_list(input_cfg: InputConfig) -> Tuple[List[str], List[str]]:
    """The entries of input.list, in order, and where each one is in the file (`line 7` of a
    .txt or .jsonl, `row 7` of a table under its header); ConfigError naming the file when it
    cannot be used: missing, unreadable, empty, or without the column."""
    i = input_cfg
    name = remote.redact(str(i.list))
    suffix = "." + _ext(str(i.list))
    try:
        if is_uri(i.list):
            data = remote.fetch(i, str(i.list))
        else:
            data = Path(i.list).read_bytes()
    except (OSError, remote.FetchError) as e:
        why = e.message if isinstance(e, remote.FetchError) else (e.strerror or str(e))
        raise ConfigError(f"input.list: cannot read {name} ({why})") from None
    if suffix == ".txt":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"input.list: {name} is not UTF-8 text ({e})") from None
        lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
        lines = [(n, e) for n, e in lines if e.strip()]  # blank lines are not entries
        entries, labels = [e for _, e in lines], [f"line {n}" for n, _ in lines]
    else:
        entries = _table_column(data, suffix, i.path_column, name)
        word = "line" if suffix == ".jsonl" else "row"
        labels = [f"{word} {n}" for n in range(1, len(entries) + 1)]
    if not entries:
        raise ConfigError(f"input.list: {name} names no image (it is empty)")
    return entries, labels


def _table_column(data: bytes, suffix: str, column: str, name: str) -> List[str]:
    import io

    import pandas as pd
    try:
        if suffix == ".parquet":
            table = read_table(data)
            columns = table.column_names
            values = table.column(column).to_pylist() if column in columns else None
        else:
            if suffix == ".jsonl":
                frame = pd.read_json(io.BytesIO(data), lines=True, dtype=False)
            else:
                frame = pd.read_csv(io.BytesIO(data), sep="\t" if suffix == ".tsv" else ",",
                                    dtype=str, keep_default_na=False)
            columns = [str(c) for c in frame.columns]
            values = frame[column].tolist() if column in columns else None
    except Exception as e:  # noqa: BLE001 - whatever the parser says, with the file's name
        raise ConfigError(f"input.list: cannot read {name} as {suffix[1:]}: "
                          f"{type(e).__name__}: {e}") from None
    if values is None:
        raise ConfigError(f"input.list: {name} has no column {column!r} (input.path_column); "
                          f"its columns: {', '.join(columns) or 'none'}")
    return ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]


def _from_list(input_cfg: InputConfig) -> Listing:
    i = input_cfg
    entries, labels = read_list(i)
    listing = Listing("list", lines=entries, labels=labels)
    first: Dict[str, str] = {}   # key -> the label of the line that processes it
    handled: Dict[str, bool] = {}
    relative_without_dir = None
    for entry, label in zip(entries, labels):
        before = len(listing.keys)
        if not entry.strip():
            listing.add(entry, None, ("empty_entry", f"{label} of the list is empty"))
            continue
        if entry in first:  # a repeated line, whatever it names (a tar: one row for the line)
            listing.add(entry, None, (DUPLICATE, f"{label} repeats {first[entry]}; the entry "
                                      f"was processed once"))
            continue
        first[entry] = label
        if is_uri(entry):
            s = remote.scheme(entry)
            if s not in handled:
                try:
                    handled[s] = remote.check_scheme(f"input.list {label}", entry)
                except remote.ExtraMissing as e:
                    raise ConfigError(str(e)) from None
            if not handled[s]:
                listing.add(entry, None, ("unsupported_uri", f"no installed filesystem reads "
                                          f"{s}:// URIs"))
                continue
        elif not os.path.isabs(entry) and i.dir is None:
            relative_without_dir = relative_without_dir or (label, entry)
            continue
        _add_entry(i, listing, entry, _where_of(i, entry))
        for k in range(before, len(listing.keys)):  # tar members named twice
            key = listing.keys[k]
            if key == entry or listing.where[k] is None:
                continue
            if key in first:
                listing.where[k] = None
                listing.preset[k] = (DUPLICATE, f"{key} ({label}) repeats {first[key]}; the "
                                     f"entry was processed once")
            else:
                first[key] = label
    if relative_without_dir:
        label, entry = relative_without_dir
        raise ConfigError(f"input.list: {label} ({entry!r}) is a relative path, and input.dir "
                          f"is not set; set input.dir to the folder (or s3:// prefix) the "
                          f"list's relative entries are under, or make them absolute")
    return listing


# ----------------------------------------------------------------------------- resuming

def todo(listing: Listing, first: Counter, repeats: Counter) -> List[int]:
    """Indices of the entries no committed row accounts for. `first`: committed rows per
    path other than duplicate_entry; `repeats`: duplicate_entry rows per path. A list walked
    in order consumes them: its k-th occurrence of a path is done while rows remain."""
    first, repeats = Counter(first), Counter(repeats)
    settled = _settled_tars(listing, first)
    out = []
    for n, key in enumerate(listing.keys):
        if n in settled:
            continue
        counter = repeats if listing.preset.get(n, ("",))[0] == DUPLICATE else first
        key = display_path(key)  # as the tables hold it
        if counter[key] > 0:
            counter[key] -= 1
        else:
            out.append(n)
    return out


def _settled_tars(listing: Listing, first: Counter) -> set:
    """Indices of tar entries whose tar reads otherwise than on an earlier run that committed
    rows for it; those rows stand, so the tar adds none now (its line stays one account):
    - the tar could not be opened then (its own row, e.g. `missing`) and can now: failed
      entries are not retried, so its members are not added;
    - it was read then (member or `<tar>/` rows) and cannot be opened now: no row for it."""
    if not listing.tar_of:
        return set()
    groups: Dict[str, List[int]] = {}
    for n, tar in listing.tar_of.items():
        groups.setdefault(tar, []).append(n)
    shown = {display_path(t): t for t in groups}
    read_before = Counter()  # committed rows under each tar
    for path, count in first.items():
        i = path.find("/")
        while i != -1:
            if path[:i] in shown:
                read_before[shown[path[:i]]] += count
            i = path.find("/", i + 1)
    settled = set()
    for tar, indices in groups.items():
        fails_now = any(listing.keys[n] == tar for n in indices)
        name = remote.redact(display_path(tar))
        if fails_now and read_before[tar]:
            settled.update(indices)
            log.warning("the tar %s cannot be read now (%s); its %d row(s) from an earlier "
                        "run stand", name, listing.preset[indices[0]][0], read_before[tar])
        elif not fails_now and first[display_path(tar)] > 0:
            settled.update(indices)
            log.warning("the tar %s could not be read on an earlier run, and its row stands: "
                        "failed entries are not retried, so its members are not added (use "
                        "another output.dir, or --overwrite, to read it)", name)
    return settled


def committed_counts(output) -> Tuple[Counter, Counter]:
    """(rows per path other than duplicate_entry, duplicate_entry rows per path) over the
    committed parts of `output` (an output.Output)."""
    first, repeats = Counter(), Counter()
    for part in output.parts:
        first.update(output.feature_paths(part.index))
        errors = output.error_rows(part.index, ("path", "reason"))
        for path, reason in zip(errors["path"], errors["reason"]):
            (repeats if reason == DUPLICATE else first)[path] += 1
    return first, repeats


def check_appended(listing: Listing, loc) -> None:
    """Refuse a list changed other than by appending lines since the output at `loc` (a
    storage location) was made from it (ConfigError naming the first line that differs);
    then record the list as it is now."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if listing.lines is None:
        return
    try:
        old = read_table(loc.read(LIST_COPY)).column("entry").to_pylist()
    except FileNotFoundError:
        old = None
    if old is not None:
        new = listing.lines
        differ = next((k for k, (a, b) in enumerate(zip(old, new)) if a != b), None)
        if differ is None and len(new) < len(old):
            differ = len(new)
        if differ is not None:
            now = repr(new[differ]) if differ < len(new) else "missing (the list is shorter)"
            label = listing.labels[differ] if differ < len(new) else f"entry {differ + 1}"
            raise ConfigError(
                f"input.list: {label} was {old[differ]!r} in the list output.dir "
                f"{loc} was made from, and is now {now}. A list may only grow by "
                f"appending lines; restore it, or use another output.dir (or "
                f"output.overwrite=true to start afresh)")
        if len(new) == len(old):
            return
    table = pa.table({"entry": pa.array(listing.lines, pa.string())})
    loc.write(LIST_COPY, lambda f: pq.write_table(table, f))


def describe(input_cfg: InputConfig, listing: Listing) -> str:
    """The source and what it holds, for the dry run and the log: `list l.csv (11 lines,
    relative entries under /d) (5 remote, 3 tars, 1 repeated)`."""
    i = input_cfg
    if listing.kind == "list":
        where = f"list {remote.redact(str(i.list))} ({len(listing.lines)} lines"
        where += f", relative entries under {remote.redact(str(i.dir))})" if i.dir else ")"
    elif listing.kind == "prefix":
        where = f"prefix {remote.redact(str(i.dir))}"
    else:
        where = f"folder {i.dir}"
    dups = sum(1 for r, _ in listing.preset.values() if r == DUPLICATE)
    extra = [f"{listing.remote} remote", f"{listing.tars} tars"]
    if dups:
        extra.append(f"{dups} repeated")
    return f"{where} ({', '.join(extra)})"


# ----------------------------------------------------------------------------- reading back

def read_entry(input_cfg: InputConfig, key: str) -> bytes:
    """The bytes of an output row's `path`, read again (neighbors' queries by path, the pages'
    thumbnails): a file under input.dir, a listed path or URI, or a tar member
    (`<tar>/<member>`, found by its name in the tar's headers). Raises remote.FetchError."""
    at = key.lower().find(".tar/")
    if at >= 0:
        tar_key, member = key[:at + 4], key[at + 5:]
        tar_where = _where_of(input_cfg, tar_key)
        listing = Listing("tar")
        _add_tar(input_cfg, listing, tar_key, tar_where)
        for k, w in zip(listing.keys, listing.where):
            if k == f"{tar_key}/{member}" and w is not None:
                return read_bytes(input_cfg, w)
        raise remote.FetchError("missing", f"{member} is not a member of {remote.redact(tar_key)}")
    return read_bytes(input_cfg, _where_of(input_cfg, key))


def _where_of(input_cfg: InputConfig, key: str) -> Where:
    i = input_cfg
    if is_uri(key):
        return Where(key, remote=True)
    if os.path.isabs(key):
        return Where(key)
    if is_uri(i.dir):
        return Where(remote.join(i.dir, key), remote=True)
    return Where(os.path.join(str(i.dir), key))
