"""Smoke test run by ``tools/check_min_versions.sh`` inside a virtualenv of the declared minimum versions.

It touches every dependency on the path a user takes, with media it makes itself:

- images (Pillow) fetched over HTTP from a loopback server (urllib3's ``read1``),
  and audio (soundfile; FLAC and WAV, resampled by soxr and by resampy, 44.1 kHz
  stereo to 16 kHz mono) from a ``datasets`` dataset, each converted (numpy, tqdm);
- each store opened with :func:`tensorstore_ds.open_store` (zarr must not be
  needed) and served in RAM and paged mode through a torch ``DataLoader``;
- the image store read again from an ``http://`` URL (fsspec with aiohttp);
- when PyAV is installed, an M4A clip decoded through it;
- when the ``s3``/``gcs`` extras are installed, their filesystems constructed.

Prints one line per step and ``min-versions smoke: N passed, 0 failed`` at the end;
any failure raises.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import json
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

PASSED: list[str] = []


def step(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Run the decorated function as one named step and record it."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def run(*args: object) -> None:
            fn(*args)
            PASSED.append(name)
            print(f"ok   {name}", flush=True)

        return run

    return wrap


def _png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _audio(seed: int, fmt: str) -> bytes:
    import soundfile as sf

    t = np.arange(44100 * 2) / 44100
    tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t)
    out = io.BytesIO()
    sf.write(out, np.stack([tone, tone[::-1]], axis=1).astype(np.float32), 44100, format=fmt)
    return out.getvalue()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@step("convert images fetched over HTTP (Pillow, urllib3)")
def convert_images(work: Path, base: str) -> None:
    import tensorstore_ds as tsds

    rows = [{"url": f"{base}/media/{i}.png", "text": f"picture {i}"} for i in range(6)]
    (work / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = tsds.convert(
        str(work / "images.jsonl"),
        work / "www" / "images",
        image_column="url",
        caption_column="text",
        workers=0,
        progress=False,
    )
    assert manifest.num_samples == 6 and manifest.counts["failed"] == 0, manifest.counts


@step("convert FLAC and WAV audio from a datasets dataset (soundfile, soxr)")
def convert_audio(work: Path, resampler: str) -> None:
    import datasets

    import tensorstore_ds as tsds

    clips = [_audio(i, "FLAC" if i % 2 else "WAV") for i in range(4)]
    table = datasets.Dataset.from_dict({"audio": clips, "caption": [f"tone {i}" for i in range(4)]})
    manifest = tsds.convert(
        table,
        work / f"audio-{resampler}",
        audio_column="audio",
        audio_seconds=1.5,
        resampler=resampler,
        workers=0,
        progress=False,
    )
    assert manifest.num_samples == 4 and manifest.counts["failed"] == 0, manifest.counts


@step("convert with resampy")
def convert_audio_resampy(work: Path) -> None:
    convert_audio.__wrapped__(work, "resampy")  # type: ignore[attr-defined]


@step("open_store and serve a batch in RAM and paged mode (torch DataLoader)")
def serve(work: Path) -> None:
    import torch

    import tensorstore_ds as tsds

    store = tsds.open_store(work / "www" / "images")
    assert store.array("image")[0:2].shape == (2, 224, 224, 3)
    for mode in ("ram", "paged"):
        ds = tsds.TensorStoreDataset(work / "www" / "images", mode=mode, memory_budget="64MiB", progress=False)
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=tsds.collate)))
        assert batch["image"].shape[0] == 4, batch
    ds = tsds.TensorStoreDataset(work / "audio-soxr", progress=False)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=tsds.collate)))
    assert batch["audio"].dtype == torch.float16 and tuple(batch["audio"].shape) == (4, 24000), batch


@step("read a store from an http:// URL (fsspec, aiohttp)")
def serve_remote(work: Path, base: str) -> None:
    import tensorstore_ds as tsds

    ds = tsds.TensorStoreDataset(
        f"{base}/images", mode="paged", memory_budget="8MiB", progress=False, cache_dir=work / "cache"
    )
    assert len(ds) == 6 and ds[5]["caption"] == "picture 5", ds[5]


@step("decode an M4A clip through PyAV")
def convert_m4a(work: Path) -> None:
    import av
    import datasets

    import tensorstore_ds as tsds

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        tone = (0.3 * np.sin(np.arange(44100) / 10)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    table = datasets.Dataset.from_dict({"audio": [out.getvalue()], "caption": ["m4a"]})
    manifest = tsds.convert(table, work / "m4a", audio_column="audio", audio_seconds=1.0, workers=0, progress=False)
    assert manifest.counts["failed"] == 0, manifest.counts


@step("object-storage filesystems construct (s3fs, gcsfs)")
def object_storage(names: list[str]) -> None:
    import fsspec

    for name in names:
        options = {"anon": True} if name == "s3fs" else {"token": "anon"}
        fs = fsspec.filesystem("s3" if name == "s3fs" else "gcs", **options)
        assert fs.protocol, fs


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "www" / "media").mkdir(parents=True)
        for i in range(6):
            (work / "www" / "media" / f"{i}.png").write_bytes(_png(i))
        server, base = _serve(work / "www")
        try:
            convert_images(work, base)
            convert_audio(work, "soxr")
            convert_audio_resampy(work)
            serve(work)
            serve_remote(work, base)
            try:
                import av  # noqa: F401
            except ImportError:
                print("skip decode an M4A clip through PyAV (av is not installed)")
            else:
                convert_m4a(work)
            extras = [name for name in ("s3fs", "gcsfs") if importlib.util.find_spec(name) is not None]
            if extras:
                object_storage(extras)
        finally:
            server.shutdown()
    print(f"min-versions smoke: {len(PASSED)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
