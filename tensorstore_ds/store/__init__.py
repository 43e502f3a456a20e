"""A finished store, without torch: open it, read it, check it, copy it, look at it.

- ``store`` opens a store (:func:`open_store`) from a directory or a URL, a
  store made of parts included; ``chunked`` maps its chunk files;
- ``remote`` and ``transfer`` reach stores at fsspec URLs through a verified
  local cache; ``objects`` writes to object storage (uploads, retries, the
  lease);
- ``verify`` and ``verify_remote`` check every byte (``report``: what they
  found), ``pull`` and ``push`` copy a store, ``info`` describes it, and
  ``preview/`` draws it.

Rests on :mod:`tensorstore_ds.format`; used by both
:mod:`tensorstore_ds.conversion` and :mod:`tensorstore_ds.serve`.
"""
