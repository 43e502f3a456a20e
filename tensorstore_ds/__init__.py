"""tensorstore_ds: image-text and audio-text datasets as training-ready tensors.

Convert once with :func:`convert`; serve with :class:`TensorStoreDataset` (RAM
or paged) or read with :func:`open_store` (numpy, no torch), from a directory
or a URL; copy a store with :func:`pull`, combine stores with :func:`merge`.
Nothing heavy is imported until a name is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__

_EXPORTS = {
    "Batch": ".batch",
    "ChunkShuffleSampler": ".sampler",
    "ConvertOptions": ".conversion",
    "MultiStoreDataset": ".multi",
    "Store": ".store",
    "TensorStoreDataset": ".dataset",
    "collate": ".batch",
    "convert": ".conversion",
    "errors": ".errors",
    "merge": ".merge_stores",
    "open_store": ".store",
    "pull": ".pull_store",
    "verify": ".checksums",
    "VerifyReport": ".checksums",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tensorstore_ds' has no attribute {name!r}")
    module = import_module(_EXPORTS[name], __name__)
    value = module if name == "errors" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
