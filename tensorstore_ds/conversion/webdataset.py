"""WebDataset tar shards as a source, streamed sample by sample.

**Shards** are named by local paths, globs, directories (their ``*.tar``,
``*.tar.gz`` and ``*.tgz`` files), brace patterns (``shards/{00000..00099}.tar``,
``{train,test}.tar``) and URLs: http(s) and any other fsspec protocol (``s3://``,
``gs://``, ... with s3fs/gcsfs installed), or a list of any of these.

**Reading** uses the standard library's ``tarfile`` in stream mode (``"r|*"``:
strictly sequential, any compression) over a plain file or an fsspec file; an
http(s) shard is one GET read as it arrives (fsspec ``block_size=0``). Nothing
is downloaded whole or written to disk, and one sample is in memory at a time.
Neither the ``datasets`` WebDataset builder nor the ``webdataset`` library fits:
the builder decodes ``.jpg``/``.flac`` into Image/Audio features (audio needs
torchcodec), copies shards into its cache unless streaming, knows no brace
patterns, and a cut tar raises from inside its generator; the library opens
URLs through a ``curl`` subprocess and reports a cut tar only to an error
handler, so neither can record the cut as a row in its place. Both miss a tar
cut at a member boundary, which ``tarfile`` takes for the end of the archive;
we check for the end-of-archive marker.

**Samples** are grouped as WebDataset groups them: a member's key is its path up
to the first ``.`` of its file name, the rest (lower-cased) its extension, and
consecutive members with one key are one sample. A row has the columns

- ``__key__`` and ``__url__`` (the shard);
- one per extension: image and audio files as ``{"bytes", "path"}`` (the path
  names shard and member, for the failure record), ``.json`` parsed, text files
  (``.txt``, ...) as text, anything else as bytes;
- the fields of the ``.json`` object, each a column of its own (kept columns);
- ``image`` / ``audio``: the sample's first image / audio file, the names
  Hugging Face users know, and ``caption``: the ``.json``'s ``caption`` field,
  else the ``.txt`` file (img2dataset writes both).

The columns are those of the first sample; a later sample without one has None.

**Failures**: a shard that cannot be opened, that breaks off (a cut download, a
truncated file: ``tarfile`` or the decompressor fails, or the end-of-archive
marker is missing), or a sample whose JSON does not parse, becomes one failed
row naming the shard, in its place: the rows before the cut are kept, the sample
being read at the cut is dropped (its files may be incomplete), and reading goes
on with the next shard.

**Resume**: rows are numbered in shard order; resuming at row N reads and skips
the first N rows again (a stream has no index).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlsplit

from ..errors import SampleError, SourceError
from .sourcebase import ROW_ERROR, Source, media_kind

SHARD_SUFFIX = re.compile(r"\.(tar|tar\.gz|tgz)$", re.IGNORECASE)
MEMBER_NAME = re.compile(r"^((?:.*/|)[^./][^./]*)\.([^/]+)$")  # key: up to the file name's first dot
BRACE = re.compile(r"\{([^{}]*)\}")
TEXT_EXTS = frozenset({"txt", "text", "caption", "cls", "url"})
HTTP_TIMEOUT = 60.0  # seconds to connect, and without data while reading
TRAILER_LIMIT = 1 << 20  # bytes read after the end-of-archive marker to check it is the end


def is_shard_spec(spec: str) -> bool:
    """Whether ``spec`` (a path, glob, brace pattern or URL) names tar shards."""
    path = urlsplit(spec).path if "://" in spec else spec
    return bool(SHARD_SUFFIX.search(BRACE.sub("x", path)))


def shards_in(directory: Path) -> list[str]:
    """The tar shards directly inside ``directory``, sorted by name."""
    return sorted(str(p) for p in directory.iterdir() if p.is_file() and SHARD_SUFFIX.search(p.name))


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` alternatives and ``{000..099}`` numeric ranges (zero-padded as written)."""
    match = BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    low, dots, high = body.partition("..")
    if dots and "," not in body:
        if not (low.isdigit() and high.isdigit()) or int(low) > int(high):
            raise SourceError(
                f"brace range {{{body}}} in {pattern!r} is not an ascending range of numbers like {{000..099}}"
            )
        padded = (len(low) > 1 and low[0] == "0") or (len(high) > 1 and high[0] == "0")
        width = max(len(low), len(high)) if padded else 0
        items = [str(i).zfill(width) for i in range(int(low), int(high) + 1)]
    else:
        items = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for item in items for name in expand_braces(head + item + tail)]


def expand_shards(specs: Sequence[str]) -> list[str]:
    """Every shard the specs name, in order: URLs as they are (globbed by fsspec, not over http), local files checked to exist."""
    shards: list[str] = []
    for spec in specs:
        for name in expand_braces(spec):
            if "://" in name and glob.has_magic(name) and not name.startswith(("http://", "https://")):
                shards += _remote_glob(name)
            elif "://" in name:
                shards.append(name)
            elif glob.has_magic(name):
                shards += sorted(glob.glob(name, recursive=True))
            elif os.path.isdir(name):
                shards += shards_in(Path(name))
            elif os.path.isfile(name):
                shards.append(name)
            else:
                raise SourceError(f"shard {name} does not exist; check the path or pattern {spec!r}")
    if not shards:
        raise SourceError(f"no WebDataset shards match {', '.join(specs)}")
    return shards


def _remote_glob(pattern: str) -> list[str]:
    """The objects an fsspec URL glob (``s3://bucket/shards/*.tar``) matches, as URLs."""
    import fsspec

    try:
        fs, _, paths = fsspec.get_fs_token_paths(pattern)
    except Exception as exc:
        raise SourceError(f"cannot list {pattern}: {type(exc).__name__}: {exc}") from exc
    return sorted(fs.unstrip_protocol(p) for p in paths)


def open_webdataset(specs: Sequence[str]) -> WebDatasetSource:
    """The rows of the shards ``specs`` name (see the module docstring)."""
    shards = expand_shards(specs)
    problems = []
    for row in iter_rows(shards):
        if ROW_ERROR not in row:
            return WebDatasetSource(shards, ", ".join(specs), list(row), _fingerprint(shards))
        problems.append(row[ROW_ERROR].detail)
    found = f": {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") if problems else ""
    raise SourceError(f"no readable samples in the WebDataset shards {', '.join(specs)}{found}")


def _fingerprint(shards: list[str]) -> str:
    """The shard names, and for local shards their size and modification time."""
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(shard.encode() + b"\0")
        if "://" not in shard:
            stat = os.stat(shard)
            digest.update(f"{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]


class WebDatasetSource(Source):
    """Rows streamed from WebDataset shards.

    Parameters
    ----------
    shards
        Shard paths or URLs, in reading order.
    spec
        What the user named.
    columns
        The columns of the first sample.
    fingerprint
        See :class:`~.sourcebase.Source`.
    window
        The rows of the shards this source covers: ``(first, stop)``, stop None for all.
    """

    def __init__(
        self,
        shards: Sequence[str],
        spec: str,
        columns: list[str],
        fingerprint: str,
        window: tuple[int, int | None] = (0, None),
    ) -> None:
        self.shards = tuple(shards)
        self.kind = "webdataset"
        self.spec = spec
        self.fingerprint = fingerprint
        self.base_dir = Path.cwd()
        self._columns = list(columns)
        self.window = window

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "shards": len(self.shards)}

    def slice(self, start: int, stop: int) -> Source:
        first, end = self.window
        stop = first + stop if end is None else min(first + stop, end)
        return WebDatasetSource(self.shards, self.spec, self._columns, self.fingerprint, (first + start, stop))

    def rows(self, start: int, stop: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
        first, end = self.window
        begin = first + start
        if stop is not None:
            end = first + stop if end is None else min(first + stop, end)
        if end is not None and begin >= end:
            return
        for index, row in enumerate(iter_rows(self.shards)):
            if index >= begin:
                yield index - first, row
            if end is not None and index + 1 >= end:  # not a row more: the next may not have arrived
                return


def iter_rows(shards: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The rows of every shard in turn, failed rows included (see the module docstring)."""
    for shard in shards:
        for key, sample in _samples(shard):
            yield sample if key is None else _row(shard, key, sample)


def _failure(reason: str, shard: str, detail: str) -> dict[str, Any]:
    return {ROW_ERROR: SampleError(reason, f"shard {shard} {detail}"), "__url__": shard}


def _open(shard: str) -> IO[bytes]:
    """A shard's bytes as a sequential stream: a file, one streamed http(s) GET, or an fsspec file."""
    if "://" not in shard:
        return open(shard, "rb")
    if shard.startswith(("http://", "https://")):
        return cast(IO[bytes], _HTTPStream(shard))  # a raw stream: read() returns what has arrived
    import fsspec

    opened: IO[bytes] = fsspec.open(shard, "rb").open()
    return opened


class _HTTPStream(io.RawIOBase):
    """The body of one GET, read as it arrives.

    ``read`` returns what has arrived (``read1``), so the bytes before a
    connection breaks reach ``tarfile``, and the break is raised by the read after
    them. The request is retried on 429/5xx and connection errors; a body that
    breaks off is not (the rows before the break are kept, and the break recorded).
    """

    def __init__(self, url: str) -> None:
        import urllib3

        self.url = url
        retries = urllib3.Retry(total=3, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504))
        timeout = urllib3.Timeout(connect=HTTP_TIMEOUT, read=HTTP_TIMEOUT)
        self._pool = urllib3.PoolManager(retries=retries, timeout=timeout)
        self._response = self._pool.request("GET", url, preload_content=False, decode_content=True)
        if self._response.status >= 400:
            status = f"HTTP {self._response.status} {self._response.reason or ''}".strip()
            self.close()
            raise OSError(status)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._response.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._response.release_conn()
            self._pool.clear()
        super().close()


def _samples(shard: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """``(key, {extension: bytes})`` per sample of one shard; ``(None, failed row)`` where it breaks."""
    try:
        stream = _open(shard)
    except Exception as exc:
        yield None, _failure("unreadable-shard", shard, f"cannot be opened: {type(exc).__name__}: {exc}")
        return
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115  # closed below, with the stream
    except Exception as exc:
        stream.close()
        what = "is not a tar archive" if isinstance(exc, tarfile.ReadError) else "breaks off in its first member"
        yield None, _failure("unreadable-shard", shard, f"{what}: {type(exc).__name__}: {exc}")
        return
    done, key, sample = 0, None, dict[str, bytes]()
    try:
        with stream, tar:
            for member in tar:
                match = MEMBER_NAME.match(member.name) if member.isfile() else None
                if match is None:
                    continue
                if match.group(1) != key and sample:  # before this member's data: it may not have come yet
                    yield key, sample
                    done, sample = done + 1, {}
                key = match.group(1)
                sample[match.group(2).lower()] = tar.extractfile(member).read()  # type: ignore[union-attr]
            problem = _end_problem(tar)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        if sample:
            yield key, sample
        return
    dropped = f"; sample {key!r}, being read there, is dropped" if sample else ""
    yield None, _failure("truncated-shard", shard, f"breaks off after {done} samples ({problem}){dropped}")


def _end_problem(tar: tarfile.TarFile) -> str | None:
    """Why a tar that ``tarfile`` finished reading did not really end, or None.

    ``tarfile`` ends quietly at a missing or cut header, which is where a cut
    download usually stops; a whole archive has a 512-byte end-of-archive block
    there, and nothing but zeros after it.
    """
    stream = tar.fileobj
    if stream is None or tar.offset == 0:
        return None
    read_past = stream.tell() - tar.offset  # what tarfile read where the next header would be
    if read_past < tarfile.BLOCKSIZE:
        return f"no end-of-archive block after byte {tar.offset}"
    seen = 0
    while seen < TRAILER_LIMIT:
        chunk = stream.read(tarfile.RECORDSIZE)
        if not chunk:
            return None
        if chunk.strip(b"\0"):
            return f"data after the end-of-archive block at byte {tar.offset}"
        seen += len(chunk)
    return None


def _row(shard: str, key: str, sample: dict[str, bytes]) -> dict[str, Any]:
    """One sample as a row (see the module docstring for its columns)."""
    row: dict[str, Any] = {"__key__": key, "__url__": shard}
    fields: dict[str, Any] = {}
    for ext, data in sample.items():
        last = ext.rsplit(".", 1)[-1]
        if media_kind(f"x.{last}"):
            row[ext] = {"bytes": data, "path": f"{shard}/{key}.{ext}"}
        elif last == "json":
            try:
                row[ext] = json.loads(data)
            except ValueError as exc:
                return {**_failure("bad-json", shard, f"sample {key!r}: {key}.{ext} is not JSON ({exc})"), **row}
            fields = row[ext] if isinstance(row[ext], dict) and not fields else fields
        elif last in TEXT_EXTS:
            row[ext] = _text(data)
        else:
            row[ext] = data
    for name, value in fields.items():
        row.setdefault(name, value)
    for ext in sample:
        kind = media_kind(f"x.{ext.rsplit('.', 1)[-1]}")
        if kind:
            row.setdefault(kind, row[ext])
    if "caption" not in row and "txt" in row:
        row["caption"] = row["txt"]
    return row


def _text(data: bytes) -> str | bytes:
    """UTF-8 text as str; other bytes stay bytes (a caption that is not UTF-8 then fails as such)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data
