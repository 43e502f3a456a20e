"""Every error this package raises.

Each error inherits :class:`TensorStoreDSError` and the builtin exception that
callers already catch (``FileNotFoundError``, ``ValueError``, ``MemoryError``,
...). An error keeps its facts as attributes (``BudgetError.needed``,
``StoreLockedError.pid``, the path or URL), so that programs never parse
messages; the message is built once, in the constructor, from those facts and
names the path, key or index involved together with the numbers that disagree.

The construction pattern: a subclass's ``__init__`` stores its facts, then
passes the finished message to ``super().__init__``. Errors cross process
boundaries (decode workers, DataLoader workers, Dask tasks), so pickling
rebuilds an error from its message and its attributes, without calling its
``__init__`` again.
"""

from __future__ import annotations

import os
from typing import Any

from .units import format_bytes

_OS_FIELDS = ("errno", "strerror", "filename")


class TensorStoreDSError(Exception):
    """Base class of every error raised by tensorstore_ds.

    Parameters
    ----------
    message
        What went wrong and what to do, for a person.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would repr() the message, OSError would format errno and filename
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        if isinstance(self, OSError):
            state.update({name: getattr(self, name) for name in _OS_FIELDS})
        return (_rebuild, (type(self), self.args, state))


def _rebuild(cls: type[TensorStoreDSError], args: tuple[Any, ...], state: dict[str, Any]) -> TensorStoreDSError:
    """An unpickled error: its message and its attributes, without running ``__init__``."""
    base: type[BaseException] = cls
    while base.__module__ != "builtins":  # the builtin whose memory layout the error has (OSError, Exception, ...)
        base = base.__base__  # type: ignore[assignment]  # always a BaseException subclass here
    error: TensorStoreDSError = base.__new__(cls, *args)
    BaseException.__init__(error, *args)
    for name, value in state.items():
        setattr(error, name, value)
    return error


# --- one sample ------------------------------------------------------------


class SampleError(TensorStoreDSError):
    """One sample could not be turned into a tensor.

    Parameters
    ----------
    reason
        A short, stable code (``"undecodable-image"``, ``"http-404"``, ...)
        used to group failures in the store's failure record.
    detail
        What went wrong, for a person.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class DecodeError(SampleError, ValueError):
    """Image or audio bytes could not be decoded into the store's layout."""


class FetchError(SampleError, OSError):
    """A URL could not be fetched (HTTP status, timeout, size limit, scheme)."""


class SampleFailedError(TensorStoreDSError, RuntimeError):
    """``on_error="fail"`` stopped a conversion at its first failed sample.

    Parameters
    ----------
    row
        The source row that failed.
    key
        The row's media key (URL, path or column).
    error
        The sample's error.
    """

    def __init__(self, row: int, key: str, error: SampleError) -> None:
        self.row = row
        self.key = key
        self.error = error
        super().__init__(
            f"source row {row} ({key}) failed: {error}; rerun with on_error='skip' to record failures and go on"
        )


# --- sources and options ---------------------------------------------------


class ColumnNotFoundError(TensorStoreDSError, KeyError):
    """A named column is not in the source.

    Parameters
    ----------
    role
        What the column was to be (``"image"``, ``"caption"``, ...).
    column
        The name asked for.
    available
        The source's columns.
    """

    def __init__(self, role: str, column: str, available: list[str]) -> None:
        self.role = role
        self.column = column
        self.available = list(available)
        names = ", ".join(map(repr, available)) or "(none)"
        super().__init__(f"{role} column {column!r} is not in the source; available columns: {names}")


class SourceError(TensorStoreDSError, ValueError):
    """A source could not be opened or understood."""


class SplitNotFoundError(SourceError):
    """The source has no split ``split``; it has ``available`` (``source`` as the user named it)."""

    def __init__(self, source: str, split: str, available: list[str]) -> None:
        self.source = source
        self.split = split
        self.available = sorted(available)
        super().__init__(f"{source} has no split {split!r}; splits: {self.available}; choose one with --split")


class MediaFilesMissingError(SourceError):
    """``count`` rows of a folder's ``metadata`` file name media files that do not exist (``missing``: a few)."""

    def __init__(self, metadata: str, missing: list[str], count: int) -> None:
        self.metadata = metadata
        self.missing = list(missing)
        self.count = count
        names = ", ".join(map(repr, self.missing)) + (", ..." if count > len(self.missing) else "")
        super().__init__(
            f"{metadata}: {count} row(s) name media files that do not exist ({names}); "
            "fix their file_name or remove those rows"
        )


class OptionsError(TensorStoreDSError, ValueError):
    """A conversion or loading option is invalid or contradicts another."""


class FieldNotFoundError(TensorStoreDSError, KeyError):
    """A store has no array or text column of that name.

    Parameters
    ----------
    location
        The store's path or URL.
    kind
        ``"array"`` or ``"text column"``.
    name
        The name asked for.
    available
        The names the store has.
    """

    def __init__(self, location: str, kind: str, name: str, available: list[str]) -> None:
        self.location = location
        self.kind = kind
        self.name = name
        self.available = list(available)
        plural = "arrays" if kind == "array" else "columns"
        super().__init__(f"store {location} has no {kind} {name!r}; {plural}: {self.available}")


# --- stores ----------------------------------------------------------------


class StoreError(TensorStoreDSError, OSError):
    """A store is damaged, unfinished, or not a tensorstore_ds store."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store (no manifest) at the given path."""

    def __init__(self, path: str | os.PathLike[str], why: str = "") -> None:
        self.path = os.fspath(path)
        self.why = why
        super().__init__(f"no tensorstore_ds store at {self.path}" + (f": {why}" if why else ""))


class StoreIncompleteError(StoreError):
    """The store's conversion has not finished."""

    def __init__(self, path: str | os.PathLike[str], done: int) -> None:
        self.path = os.fspath(path)
        self.done = done
        super().__init__(
            f"store {self.path} is unfinished: its conversion stopped or is still running "
            f"after {done} samples; rerun the same convert command to finish it"
        )


class StoreLockedError(StoreError):
    """Another process is converting into the same store."""

    def __init__(self, path: str | os.PathLike[str], pid: int) -> None:
        self.path = os.fspath(path)
        self.pid = pid
        super().__init__(f"store {self.path} is being converted by process {pid}; wait for it to finish")


class StoreFormatError(StoreError, ValueError):
    """A store file disagrees with the format (version, shape, size, paths)."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OptionsMismatchError(TensorStoreDSError, ValueError):
    """A rerun or merge uses different preprocessing options than the store."""

    def __init__(self, path: str | os.PathLike[str], option: str, stored: Any, given: Any) -> None:
        self.path = os.fspath(path)
        self.option = option
        self.stored = stored
        self.given = given
        super().__init__(
            f"store {self.path} was made with {option}={stored!r}, this run asks for "
            f"{option}={given!r}; use the same options to resume, or overwrite=True to start over"
        )


# --- memory ----------------------------------------------------------------


class BudgetError(TensorStoreDSError, MemoryError):
    """The selected fields do not fit the memory budget in RAM mode."""

    def __init__(self, needed: int, budget: int) -> None:
        self.needed = needed
        self.budget = budget
        super().__init__(
            f"store needs {format_bytes(needed)}, budget is {format_bytes(budget)}; "
            "raise memory_budget or use mode='paged'"
        )


class SharedMemoryError(TensorStoreDSError, OSError):
    """There is not enough shared memory to hold the store in RAM mode."""

    def __init__(self, where: str, needed: int, free: int) -> None:
        self.where = where
        self.needed = needed
        self.free = free
        super().__init__(
            f"RAM mode needs {format_bytes(needed)} of shared memory, {where} has {format_bytes(free)} free; "
            "enlarge it (docker: --shm-size), set TENSORSTORE_DS_SHM_DIR, or use mode='paged'"
        )


class ResumeStateError(TensorStoreDSError, ValueError):
    """A sampler checkpoint this sampler cannot resume from: ``key`` differs (``saved`` there, ``current`` here).

    ``key`` is ``"state"`` for a dict that holds no sampler state at all.
    """

    def __init__(self, key: str, saved: Any, current: Any) -> None:
        self.key, self.saved, self.current = key, saved, current
        super().__init__(
            f"no ChunkShuffleSampler state in this checkpoint (keys {saved!r}); pass sampler.state_dict() or a "
            "StatefulDataLoader's state_dict()"
            if key == "state"
            else f"the checkpoint was taken with {key}={saved!r}, this sampler has {key}={current!r}; a sampler "
            "resumes only with the seed, shuffle and store it was saved with"
        )


# --- several stores --------------------------------------------------------


class StoresMismatchError(OptionsMismatchError):
    """Stores merged or served together were made with different options or layouts."""

    def __init__(
        self,
        first: str | os.PathLike[str],
        other: str | os.PathLike[str],
        option: str,
        first_value: Any,
        other_value: Any,
    ) -> None:
        self.first = self.path = os.fspath(first)
        self.other = os.fspath(other)
        self.option = option
        self.first_value = self.stored = first_value
        self.other_value = self.given = other_value
        TensorStoreDSError.__init__(  # the message names both stores, not "this run"
            self,
            f"stores {self.first} and {self.other} differ in {option}: {first_value!r} and {other_value!r}; "
            "only stores converted with the same preprocessing options can be combined",
        )


# --- writing ---------------------------------------------------------------


class StoreWriteError(StoreError):
    """Writing a store failed (disk full, quota, I/O error); rerunning the conversion resumes it.

    ``errno`` and ``filename`` are those of the operating system's error
    (``errno.ENOSPC`` when the disk is full), as for any :class:`OSError`.
    """

    def __init__(
        self, path: str | os.PathLike[str], file: str | os.PathLike[str], error: int | None, reason: str, committed: int
    ) -> None:
        self.path = os.fspath(path)
        self.committed = committed
        super().__init__(
            f"writing store {self.path} failed: {reason} (errno {error}, {os.fspath(file)}); the {committed} "
            "samples committed so far are kept: free space (or fix the cause) and rerun the same convert "
            "command to resume"
        )
        self.errno = error
        self.strerror = reason
        self.filename = os.fspath(file)


class DecoderStartError(TensorStoreDSError, RuntimeError):
    """Decode processes fail even on a known-good sample, so no sample is to blame."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(
            f"decode worker processes cannot run: a fresh one failed on a known-good sample too "
            f"({kind}: {detail or 'the process died'}); nothing was recorded as failed. If you run from "
            "an interactive session or stdin, use workers=0 or run a script file; rerun to resume"
        )


class AudioFormatError(TensorStoreDSError, RuntimeError):
    """The source's audio is in a format no decoder here reads; found before any row is decoded.

    Parameters
    ----------
    fmt
        The format (``"MP3"``, ``"M4A/AAC"``...).
    key
        The sample it was first seen in.
    why
        Why it cannot be read here (the libsndfile version, a missing PyAV).
    fix
        What to install.
    """

    def __init__(self, fmt: str, key: str, why: str, fix: str) -> None:
        self.format = fmt
        self.key = key
        self.why = why
        self.fix = fix
        super().__init__(f"the source's audio is {fmt} (first seen in {key}), which {why}; {fix}")


# --- object storage --------------------------------------------------------


class ObjectStoreError(StoreError):
    """A request to object storage (``s3://``, ``gs://``, ...) kept failing.

    Parameters
    ----------
    url
        The object or prefix the request was about.
    operation
        What was being done (``"upload"``, ``"read"``, ``"list"``...).
    detail
        The storage library's own words.
    """

    def __init__(self, url: str, operation: str, detail: str) -> None:
        self.url = url
        self.operation = operation
        self.detail = detail
        super().__init__(f"cannot {operation} {url}: {detail}; rerun the same command to resume")


class StoreAccessError(StoreError, PermissionError):
    """Object storage refused the credentials (or their rights) for a URL."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        super().__init__(
            f"access to {url} was refused ({detail}); check the credentials and endpoint "
            "(storage_options= or --storage-option key=VALUE, or the environment's AWS_* / GOOGLE_* settings)"
        )


class BucketNotFoundError(StoreError, FileNotFoundError):
    """The bucket (or container) of a URL does not exist."""

    def __init__(self, url: str, bucket: str) -> None:
        self.url = url
        self.bucket = bucket
        super().__init__(f"the bucket {bucket!r} of {url} does not exist; create it first (or fix the URL)")


class StoreLeaseError(StoreError):
    """Another conversion holds the lease on a store URL."""

    def __init__(self, url: str, holder: str, seconds_left: float) -> None:
        self.url = url
        self.holder = holder
        self.seconds_left = seconds_left
        super().__init__(
            f"store {url} is being converted by {holder} (its lease runs {seconds_left:.0f} s more unless renewed); "
            "wait for it to finish, or rerun after the lease has expired if that conversion is dead"
        )
