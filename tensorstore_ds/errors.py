"""Every error this package raises.

Each error inherits :class:`TensorStoreDSError` and the builtin exception that
callers already catch (``FileNotFoundError``, ``ValueError``, ``MemoryError``,
...). Messages are built once, in the constructor, and name the path, key or
index involved together with the numbers that disagree.
"""

from __future__ import annotations

import os
from typing import Any


class TensorStoreDSError(Exception):
    """Base class of every error raised by tensorstore_ds."""

    def __init__(self, *args: Any) -> None:
        self._init_args = args
        super().__init__(self._message(*args))

    def _message(self, *args: Any) -> str:
        return str(args[0]) if args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (decode workers, DataLoader workers).
        return (type(self), self._init_args)


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
        super().__init__(reason, detail)

    def _message(self, reason: str, detail: str) -> str:  # type: ignore[override]
        return f"{reason}: {detail}"


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
        super().__init__(row, key, error)

    def _message(self, row: int, key: str, error: SampleError) -> str:  # type: ignore[override]
        return (
            f"source row {row} ({key}) failed: {error}; "
            "rerun with on_error='skip' to record failures and go on"
        )


# --- sources and options ---------------------------------------------------


class ColumnNotFoundError(TensorStoreDSError, KeyError):
    """A named column is not in the source."""

    def __init__(self, role: str, column: str, available: list[str]) -> None:
        self.column = column
        super().__init__(role, column, available)

    def _message(self, role: str, column: str, available: list[str]) -> str:  # type: ignore[override]
        return (
            f"{role} column {column!r} is not in the source; "
            f"available columns: {', '.join(map(repr, available)) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class SourceError(TensorStoreDSError, ValueError):
    """A source could not be opened or understood."""


class OptionsError(TensorStoreDSError, ValueError):
    """A conversion or loading option is invalid or contradicts another."""


# --- stores ----------------------------------------------------------------


class StoreError(TensorStoreDSError, OSError):
    """A store is damaged, unfinished, or not a tensorstore_ds store."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store (no manifest) at the given path."""

    def __init__(self, path: str | os.PathLike[str], why: str = "") -> None:
        super().__init__(os.fspath(path), why)

    def _message(self, path: str, why: str) -> str:  # type: ignore[override]
        return f"no tensorstore_ds store at {path}" + (f": {why}" if why else "")


class StoreIncompleteError(StoreError):
    """The store's conversion has not finished."""

    def __init__(self, path: str | os.PathLike[str], done: int) -> None:
        super().__init__(os.fspath(path), done)

    def _message(self, path: str, done: int) -> str:  # type: ignore[override]
        return (
            f"store {path} is unfinished: its conversion stopped or is still running "
            f"after {done} samples; rerun the same convert command to finish it"
        )


class StoreLockedError(StoreError):
    """Another process is converting into the same store."""

    def __init__(self, path: str | os.PathLike[str], pid: int) -> None:
        super().__init__(os.fspath(path), pid)

    def _message(self, path: str, pid: int) -> str:  # type: ignore[override]
        return f"store {path} is being converted by process {pid}; wait for it to finish"


class StoreFormatError(StoreError, ValueError):
    """A store file disagrees with the format (version, shape, size, paths)."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        super().__init__(self.path, problem)

    def _message(self, path: str, problem: str) -> str:  # type: ignore[override]
        return f"{path}: {problem}"


class OptionsMismatchError(TensorStoreDSError, ValueError):
    """A rerun or merge uses different preprocessing options than the store."""

    def __init__(self, path: str | os.PathLike[str], option: str, stored: Any, given: Any) -> None:
        super().__init__(os.fspath(path), option, stored, given)

    def _message(self, path: str, option: str, stored: Any, given: Any) -> str:  # type: ignore[override]
        return (
            f"store {path} was made with {option}={stored!r}, this run asks for "
            f"{option}={given!r}; use the same options to resume, or overwrite=True to start over"
        )


# --- memory ----------------------------------------------------------------


class BudgetError(TensorStoreDSError, MemoryError):
    """The selected fields do not fit the memory budget in RAM mode."""

    def __init__(self, needed: int, budget: int) -> None:
        super().__init__(needed, budget)

    def _message(self, needed: int, budget: int) -> str:  # type: ignore[override]
        from .units import format_bytes

        return (
            f"store needs {format_bytes(needed)}, budget is {format_bytes(budget)}; "
            "raise memory_budget or use mode='paged'"
        )


class SharedMemoryError(TensorStoreDSError, OSError):
    """There is not enough shared memory to hold the store in RAM mode."""

    def __init__(self, where: str, needed: int, free: int) -> None:
        super().__init__(where, needed, free)

    def _message(self, where: str, needed: int, free: int) -> str:  # type: ignore[override]
        from .units import format_bytes

        return (
            f"RAM mode needs {format_bytes(needed)} of shared memory, {where} has {format_bytes(free)} free; "
            "enlarge it (docker: --shm-size), set TENSORSTORE_DS_SHM_DIR, or use mode='paged'"
        )


# --- several stores --------------------------------------------------------


class StoresMismatchError(OptionsMismatchError):
    """Stores merged or served together were made with different options or layouts."""

    def __init__(self, first: str | os.PathLike[str], other: str | os.PathLike[str], option: str,
                 first_value: Any, other_value: Any) -> None:
        TensorStoreDSError.__init__(self, os.fspath(first), os.fspath(other), option, first_value, other_value)

    def _message(self, first: str, other: str, option: str, first_value: Any,  # type: ignore[override]
                 other_value: Any) -> str:
        return (
            f"stores {first} and {other} differ in {option}: {first_value!r} and {other_value!r}; "
            "only stores converted with the same preprocessing options can be combined"
        )


# --- writing ---------------------------------------------------------------


class StoreWriteError(StoreError):
    """Writing a store failed (disk full, quota, I/O error); rerunning the conversion resumes it.

    ``errno`` and ``filename`` are those of the operating system's error
    (``errno.ENOSPC`` when the disk is full), as for any :class:`OSError`.
    """

    def __init__(self, path: str | os.PathLike[str], file: str | os.PathLike[str], error: int | None,
                 reason: str, committed: int) -> None:
        super().__init__(os.fspath(path), os.fspath(file), error, reason, committed)
        self.errno = error
        self.strerror = reason
        self.filename = os.fspath(file)

    def _message(self, path: str, file: str, error: int | None, reason: str,  # type: ignore[override]
                 committed: int) -> str:
        return (
            f"writing store {path} failed: {reason} (errno {error}, {file}); the {committed} samples "
            "committed so far are kept: free space (or fix the cause) and rerun the same convert command to resume"
        )

    def __str__(self) -> str:  # OSError would otherwise format errno, strerror and filename
        return str(self.args[0])


class DecoderStartError(TensorStoreDSError, RuntimeError):
    """Decode processes fail even on a known-good sample, so no sample is to blame."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)

    def _message(self, kind: str, detail: str) -> str:  # type: ignore[override]
        return (
            f"decode worker processes cannot run: a fresh one failed on a known-good sample too "
            f"({kind}: {detail or 'the process died'}); nothing was recorded as failed. If you run from "
            "an interactive session or stdin, use workers=0 or run a script file; rerun to resume"
        )
