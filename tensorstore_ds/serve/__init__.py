"""PyTorch: a store served as a Dataset, from one shared copy in RAM or paged from disk.

- ``dataset``: :class:`TensorStoreDataset`, one store or several as one
  (``multi``: the explicit several-store class), made of one ``part`` per
  store; ``fields`` selects the fields and decides RAM or paged within the
  ``budget``;
- ``copies`` keeps one shared-memory copy of a field per machine, on top of
  ``shm``'s shared buffers; ``arrays`` is the protocol every served array and
  text column follows (and ``ConcatArray`` joins stores);
- ``ring`` and ``batch`` gather batches into reusable buffers and hand them to
  the training loop without copies; ``threads`` gathers with threads of the
  main process instead of worker processes; ``derived`` makes the caption
  choice and audio masks at serving time;
- ``sampler`` orders samples chunk by chunk across ranks (``order``: the
  arithmetic of an epoch; ``resume``: its checkpoint).

Rests on :mod:`tensorstore_ds.store` and :mod:`tensorstore_ds.format`; never
imports :mod:`tensorstore_ds.conversion`.
"""
