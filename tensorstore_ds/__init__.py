"""tensorstore_ds: image-text and audio-text datasets as training-ready tensors.

Convert once with :func:`convert`; serve with :class:`TensorStoreDataset` (RAM
or paged) or read with :func:`open_store` (numpy, no torch), from a directory
or a URL; look at one with :func:`preview`; copy a store with :func:`pull`, combine stores with :func:`merge`.
Nothing heavy is imported until a name is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS = {
    "Batch": ".serve.batch",
    "ChunkShuffleSampler": ".serve.sampler",
    "ConvertOptions": ".conversion.options",
    "MultiStoreDataset": ".serve.multi",
    "Store": ".store.store",
    "TensorStoreDataset": ".serve.dataset",
    "collate": ".serve.batch",
    "convert": ".conversion.api",
    "errors": ".errors",
    "merge": ".conversion.merge",
    "open_store": ".store.store",
    "preview": ".store.preview.api",
    "pull": ".store.pull",
    "verify": ".store.verify",
    "VerifyReport": ".store.verify",
}

__all__ = [
    "Batch",
    "ChunkShuffleSampler",
    "ConvertOptions",
    "MultiStoreDataset",
    "Store",
    "TensorStoreDataset",
    "VerifyReport",
    "__version__",
    "collate",
    "convert",
    "errors",
    "merge",
    "open_store",
    "preview",
    "pull",
    "verify",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name loads on first use
    from . import errors
    from .conversion.api import convert
    from .conversion.merge import merge
    from .conversion.options import ConvertOptions
    from .serve.batch import Batch, collate
    from .serve.dataset import TensorStoreDataset
    from .serve.multi import MultiStoreDataset
    from .serve.sampler import ChunkShuffleSampler
    from .store.preview.api import preview
    from .store.pull import pull
    from .store.store import Store, open_store
    from .store.verify import VerifyReport, verify


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tensorstore_ds' has no attribute {name!r}")
    module = import_module(_EXPORTS[name], __name__)
    value = module if name == "errors" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
