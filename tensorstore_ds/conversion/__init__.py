"""Source to store: everything :func:`tensorstore_ds.convert` does.

The data's path through this package:

- ``sources`` picks a reader for the input (``sourcebase``: the ``Source``
  interface and ``datasets`` objects; ``folders``: Hugging Face image and
  audio folders; ``webdataset``: tar shards, streamed) and yields rows;
- ``columns`` says which column is the media, the caption and the kept text;
- ``fetch`` downloads one URL (``urls``: URL checks and error mapping;
  ``hosts``: the per-host cap and circuit breaker);
- ``pipeline`` fetches and decodes (``decode/``) out of order in worker
  processes (``tasks``) and hands results back in source order through the
  ``staging`` file;
- ``writer`` commits chunk files (written and hashed by decode processes:
  ``chunkio``) and writes the manifest last; ``upload`` does the same into
  object storage, uploading each committed chunk; ``compact`` turns the part
  files into the small arrays, the caption index and the failure record;
- ``run`` is one conversion, ``retry`` fetches again what failed transiently,
  ``shards``/``parts``/``dask`` split a conversion and commit it, ``merge``
  joins stores; ``options`` describes every option once; ``api`` is the entry
  point.

Rests on :mod:`tensorstore_ds.format` and :mod:`tensorstore_ds.store`; never
imports :mod:`tensorstore_ds.serve` (no torch).
"""
