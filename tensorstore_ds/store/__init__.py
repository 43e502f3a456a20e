"""A finished store, without torch: open it, read it, check it, copy it.

``store`` opens a store (:func:`open_store`) from a directory or a URL;
``chunked`` maps its chunk files; ``remote`` and ``transfer`` reach stores at
fsspec URLs through a verified local cache; ``verify``, ``pull`` and ``info``
check, copy and describe a store.

Rests on :mod:`tensorstore_ds.format`; used by both
:mod:`tensorstore_ds.conversion` and :mod:`tensorstore_ds.serve`.
"""
