"""The errors module: facts as attributes, builtins callers already catch, and a round trip through pickle."""

from __future__ import annotations

import errno
import pickle

import pytest

from tensorstore_ds import errors
from tensorstore_ds.errors import (
    BudgetError,
    ColumnNotFoundError,
    DecodeError,
    FieldNotFoundError,
    OptionsMismatchError,
    SampleFailedError,
    SharedMemoryError,
    StoreFormatError,
    StoreLockedError,
    StoresMismatchError,
    StoreWriteError,
    TensorStoreDSError,
)

EXAMPLES = [
    (
        BudgetError(3 * 2**30, 2**30),
        MemoryError,
        {"needed": 3 * 2**30, "budget": 2**30},
        "needs 3.0 GiB, budget is 1.0 GiB",
    ),
    (StoreLockedError("/s", 4242), OSError, {"path": "/s", "pid": 4242}, "converted by process 4242"),
    (StoreFormatError("/s/zarr.json", "bad shape"), ValueError, {"path": "/s/zarr.json"}, r"^/s/zarr.json: bad shape$"),
    (ColumnNotFoundError("image", "img", ["a", "b"]), KeyError, {"column": "img"}, r"^image column 'img' is not in"),
    (FieldNotFoundError("/s", "array", "x", ["images"]), KeyError, {"name": "x"}, r"has no array 'x'; arrays"),
    (SharedMemoryError("/dev/shm", 2**20, 1024), OSError, {"free": 1024}, "needs 1.0 MiB of shared memory"),
    (
        StoresMismatchError("/a", "/b", "image_size", 224, 64),
        OptionsMismatchError,
        {"first": "/a", "other": "/b", "option": "image_size"},
        "stores /a and /b differ in image_size: 224 and 64",
    ),
    (
        SampleFailedError(7, "http://x/7.jpg", DecodeError("undecodable-image", "cannot identify")),
        RuntimeError,
        {"row": 7, "key": "http://x/7.jpg"},
        r"source row 7 \(http://x/7.jpg\) failed: undecodable-image",
    ),
]


@pytest.mark.parametrize(("error", "builtin", "facts", "message"), EXAMPLES, ids=lambda v: type(v).__name__)
def test_facts_builtin_message_and_pickling(
    error: TensorStoreDSError, builtin: type[Exception], facts: dict[str, object], message: str
) -> None:
    assert isinstance(error, TensorStoreDSError) and isinstance(error, builtin)
    for name, value in facts.items():
        assert getattr(error, name) == value
    with pytest.raises(type(error), match=message):
        raise error
    copy = pickle.loads(pickle.dumps(error))  # errors cross decode workers, DataLoader workers and Dask tasks
    assert type(copy) is type(error) and str(copy) == str(error)
    assert {name: getattr(copy, name) for name in facts} == facts


def test_write_error_is_an_oserror_with_errno_and_filename_after_pickling() -> None:
    error = StoreWriteError("/s", "/s/images/c/3/0/0/0", errno.ENOSPC, "No space left on device", 96)
    copy = pickle.loads(pickle.dumps(error))
    for e in (error, copy):
        assert (e.errno, e.filename, e.committed) == (errno.ENOSPC, "/s/images/c/3/0/0/0", 96)
        assert str(e).startswith("writing store /s failed: No space left on device (errno 28")


def test_every_error_is_ours_and_documented() -> None:
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)]
    assert classes and all(issubclass(c, TensorStoreDSError) for c in classes)
    assert all(c.__doc__ and c.__module__ == "tensorstore_ds.errors" for c in classes)
    # every error but the base also inherits a builtin that callers already catch
    builtins = (ValueError, OSError, KeyError, MemoryError, RuntimeError)
    assert all(issubclass(c, builtins) for c in classes if c not in (TensorStoreDSError, errors.SampleError))
