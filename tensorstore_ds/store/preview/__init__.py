"""Preview sheets: one PNG that shows what a conversion made, at a glance.

A sheet has a header (the store's location, sample count, preprocessing
options, failures by reason with example keys) and one tile per shown sample:
for image stores the stored 224x224 pixels, unchanged, above the sample's
index, original size and the start of its caption; for audio stores one row
per clip with its waveform and log-mel spectrogram (the zero padding after the
true length hatched and marked in red), its lengths and its caption.

How it works, and what it promises:

- **Layout as data.** :func:`preview` returns a :class:`PreviewLayout` naming
  the box of every tile, label and the header in sheet pixels, so a program (or
  a test) can find the stored pixels and the text it looks for.
- **Reads only what it shows.** Sample arrays are gathered with ``take`` and
  captions are read from the few chunk files that hold them, so a store at a
  URL downloads the chunks of the shown samples, never the whole store.
- **Deterministic.** The samples are the first N, ``seed``'s random N (shown
  in index order) or the given ``indices``; drawing uses no clock and no
  system font (Pillow's built-in one), so equal inputs give equal bytes.
- **Untrusted text.** Captions and keys are drawn as text in the PNG and
  HTML-escaped in the page (:mod:`tensorstore_ds.store.preview.html`).

Heavy modules (numpy, Pillow) are imported when a preview is made, not when
this module is imported (the command line imports it to build its parser).
"""
