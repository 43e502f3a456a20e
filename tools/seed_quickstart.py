"""The seed README's Quick Start, run on tensorstore_ds with one changed import line.

The two Quick Start blocks below are the seed's code as it was, except:

- the import line: ``from tensorstore_ds.compat import ...`` instead of
  ``from in_memory_datasets import ...``;
- ``load_dataset("allenai/pixmo-cap")`` / ``load_dataset("google/MusicCaps")``
  become local look-alikes built first (no network): a pixmo-cap-style dataset
  of JPEG URLs served by an http.server thread on 127.0.0.1 (one URL is
  missing), and a MusicCaps-style dataset with an embedded audio column;
- timing around the construction, and prints where the seed says
  ``# ... your training code ...``.

Run it twice: the first run converts both datasets into the cache
(``$TENSORSTORE_DS_CACHE`` or ``~/.cache/tensorstore_ds``); the second opens the
cached stores without fetching or decoding anything::

    python tools/seed_quickstart.py     # constructions take seconds: converting
    python tools/seed_quickstart.py     # constructions take a fraction of a second
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import datasets
import numpy as np

DEFAULT_PORT = 8765  # image URLs are part of the dataset's fingerprint: a fixed port keeps it stable
TIMES: dict[str, float] = {}


# --- local stand-ins for load_dataset(...) -------------------------------------------------


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(root: Path, port: int) -> ThreadingHTTPServer:
    """Serve ``root`` on 127.0.0.1:``port`` (any free port when it is taken) in a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        print(
            f"port {port} is taken; serving on {server.server_port}: the image URLs change, so "
            "this run converts again (give --port to keep one)"
        )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def local_pixmo_cap(workdir: Path, count: int, port: int) -> datasets.Dataset:
    """A pixmo-cap-style dataset: ``image_url`` (http URLs, the last one missing), ``caption``."""
    from tensorstore_ds.demo.samples import make_image_folder

    folder = workdir / "pixmo-images"
    if not (folder / "metadata.jsonl").is_file() or len(list(folder.glob("*.jpg"))) != count:
        make_image_folder(folder, count, sizes=((640, 480), (480, 640), (800, 600)))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    server = serve(folder, port)
    base = f"http://127.0.0.1:{server.server_port}"
    urls = [f"{base}/{row['file_name']}" for row in rows] + [f"{base}/gone.jpg"]
    captions = [row["caption"] for row in rows] + ["a picture that is gone"]
    return datasets.Dataset.from_dict({"image_url": urls, "caption": captions})


def local_music_caps(count: int, rate: int = 22050, seconds: float = 10.0) -> datasets.Dataset:
    """A MusicCaps-style dataset: an embedded ``audio`` column (WAV bytes) and ``caption``."""
    import pyarrow as pa
    import soundfile as sf

    blobs, captions = [], []
    t = np.arange(int(rate * seconds)) / rate
    for i in range(count):
        tone = 0.3 * np.sin(2 * np.pi * (220.0 * 2 ** (i / 12)) * t) * np.exp(-t / (2 + i % 5))
        buffer = io.BytesIO()
        sf.write(buffer, tone.astype(np.float32), rate, format="WAV", subtype="PCM_16")
        blobs.append({"bytes": buffer.getvalue(), "path": f"clip{i:03d}.wav"})
        captions.append(f"a fading sine tone, {i} semitones above A3")
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"audio": pa.array(blobs, type=kind), "caption": captions})
    return datasets.Dataset(table).cast_column("audio", datasets.Audio(decode=False))


def how(dataset: Any) -> str:
    """Whether a construction converted or opened the cached store."""
    return "converted now" if dataset.converted_now else "opened the cached store, nothing decoded"


def describe(batch: dict[str, list[Any]]) -> str:
    """Types and shapes of a seed-style batch."""
    parts = []
    for key, values in batch.items():
        first = values[0]
        shape = f" shape={first.shape} dtype={first.dtype}" if hasattr(first, "dtype") else ""
        size = f" size={first.size} mode={first.mode}" if hasattr(first, "mode") else ""
        parts.append(f"{key}: {type(values).__name__} of {len(values)} {type(first).__name__}{shape}{size}")
    return "; ".join(parts)


# --- the seed's Quick Start: images ----------------------------------------------------------


def quickstart_images(local_dataset: datasets.Dataset) -> None:
    from torch.utils.data import DataLoader

    from tensorstore_ds.compat import InMemoryImageTextDataset, collate_in_memory_images

    # Load and pre-load images
    hf_dataset = local_dataset  # seed: load_dataset("allenai/pixmo-cap", split="train")
    start = time.perf_counter()
    dataset = InMemoryImageTextDataset(
        hf_dataset=hf_dataset,
        max_samples=10000,  # Adjust based on RAM
        image_size=(224, 224),
    )
    TIMES["images"] = time.perf_counter() - start

    # Create DataLoader
    dataloader = DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        collate_fn=collate_in_memory_images,
    )

    # Use in training
    for batch in dataloader:
        batch["images"]  # List of PIL Images
        captions = batch["captions"]  # List of strings
        # ... your training code ...
    print(
        f"images: {len(dataset)} samples, failed source rows {dataset.failed_indices}; "
        f"constructed in {TIMES['images']:.2f} s ({how(dataset)}); last batch: {describe(batch)}; e.g. {captions[0]!r}"
    )


# --- the seed's Quick Start: audio -----------------------------------------------------------


def quickstart_audio(local_dataset: datasets.Dataset) -> None:
    from torch.utils.data import DataLoader

    from tensorstore_ds.compat import InMemoryAudioTextDataset, collate_in_memory_audio

    # Load and pre-load audio
    hf_dataset = local_dataset  # seed: load_dataset("google/MusicCaps", split="train")
    start = time.perf_counter()
    dataset = InMemoryAudioTextDataset(
        hf_dataset=hf_dataset,
        max_samples=5000,  # Adjust based on RAM
        target_sr=16000,
    )
    TIMES["audio"] = time.perf_counter() - start

    # Create DataLoader
    dataloader = DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        collate_fn=collate_in_memory_audio,
    )

    # Use in training
    for batch in dataloader:
        batch["audio"]  # List of np.ndarray
        captions = batch["captions"]  # List of strings
        # ... your training code ...
    print(
        f"audio: {len(dataset)} samples, failed source rows {dataset.failed_indices}; "
        f"constructed in {TIMES['audio']:.2f} s ({how(dataset)}); last batch: {describe(batch)}; e.g. {captions[0]!r}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tensorstore_ds_seed_quickstart",
        help="where the generated JPEGs are kept between runs",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the local image server")
    parser.add_argument("--images", type=int, default=200, help="images in the pixmo-cap look-alike")
    parser.add_argument("--clips", type=int, default=16, help="clips in the MusicCaps look-alike")
    args = parser.parse_args(argv)
    quickstart_images(local_pixmo_cap(args.workdir, args.images, args.port))
    quickstart_audio(local_music_caps(args.clips))
    from tensorstore_ds.compat import cache_root

    print(
        f"construction times: images {TIMES['images']:.2f} s, audio {TIMES['audio']:.2f} s "
        f"(cache: {cache_root()}); a second run opens the cached stores"
    )


if __name__ == "__main__":
    main()
