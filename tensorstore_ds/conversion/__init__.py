"""Source to store: everything :func:`tensorstore_ds.convert` does.

The data's path through this package: ``sources`` opens a dataset and yields
rows; ``columns`` says which column is the media, the caption and the kept
text; ``fetch`` downloads URLs; ``pipeline`` decodes (``decode/``) in worker
processes and gives results back in source order; ``writer`` commits chunk
files and the manifest last. ``shards`` and ``merge`` split a conversion and
put the parts together again; ``api`` is the entry point.

Rests on :mod:`tensorstore_ds.format` and :mod:`tensorstore_ds.store`; never
imports :mod:`tensorstore_ds.serve` (no torch).
"""
