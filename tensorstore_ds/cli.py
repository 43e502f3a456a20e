"""The ``tensorstore-ds`` command: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Sequence

from .conversion.api import ConvertOptions
from .errors import TensorStoreDSError

CONVERT_HELP = {
    "image_column": "column with images: HF Image feature, http(s) URL, local path, or array",
    "audio_column": "column with audio: HF Audio feature, path, URL, or {array, sampling_rate}",
    "caption_column": "column with the caption: a string, a list of strings (all kept), or a dict with 'raw'",
    "keep_columns": "comma-separated columns carried into the caption index (e.g. ytid,aspect_list)",
    "audio_dir": "directory of audio files, for sources without an audio column (MusicCaps)",
    "audio_template": "file name built from any columns, e.g. '{ytid}.wav' (with --audio-dir)",
    "clip_start_column": "column with the clip start in seconds",
    "clip_end_column": "column with the clip end in seconds",
    "limit": "convert only the first N rows",
    "image_size": "output images are SIZE x SIZE x 3 uint8",
    "resize": "squash (stretch, the default), center-crop, or pad",
    "max_pixels": "reject larger images as decompression bombs",
    "jpeg_draft": "decode large JPEGs at reduced scale (DCT scaling) before resizing",
    "sample_rate": "output sample rate of audio, Hz",
    "audio_seconds": "audio is cut or zero-padded to this many seconds",
    "resampler": "soxr (fast, the default) or resampy",
    "chunk_mb": "target size of one chunk file, MiB",
    "workers": "decode processes (default: all cores; 0 decodes in the main process)",
    "split": "split to load from a dataset name, folder, or data files",
    "fetch_concurrency": "concurrent URL downloads",
    "timeout": "seconds before a stalled download fails",
    "retries": "retries for 5xx, 429, timeouts and connection errors",
    "max_download_mb": "largest accepted download, MiB",
    "allow_schemes": "comma-separated URL schemes allowed (default http,https; add file to read file:// URLs)",
    "on_error": "skip: record failed samples and go on (default); fail: stop at the first one",
    "overwrite": "delete an existing store at OUT and start over",
    "progress": "show a progress bar",
    "engine": "dask: run the conversion as shards on a Dask cluster (default: this machine's process pool)",
    "scheduler": "with --engine dask: the scheduler's address, e.g. tcp://HOST:8786",
    "shards": "with --engine dask: number of shards (default: 4 per worker thread)",
    "shard": "convert only shard K/N of the source into OUT/.shards/ (job arrays); then run 'commit OUT'",
}


def _add_convert(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert a dataset into a store (resumable)",
                       description="Convert an image-text or audio-text dataset into a store, once.")
    p.add_argument("source", help="dataset name, save_to_disk dir, image/audio folder, or .parquet/.jsonl/.csv files")
    p.add_argument("out", help="store directory")
    for f in dataclasses.fields(ConvertOptions):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=CONVERT_HELP[f.name])
        elif isinstance(f.default, tuple):
            p.add_argument(flag, type=lambda s: tuple(x for x in s.split(",") if x), default=f.default,
                           help=CONVERT_HELP[f.name])
        else:
            kind = {"limit": int, "workers": int, "shards": int}.get(f.name) or (type(f.default) if f.default is not None else str)
            p.add_argument(flag, type=kind, default=f.default, help=CONVERT_HELP[f.name])


def _run_convert(args: argparse.Namespace) -> int:
    from .conversion.api import convert
    from .store.info import summary

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(ConvertOptions)}
    manifest = convert(args.source, args.out, **options)
    where = args.out
    if args.shard and args.engine is None:
        from .conversion.shards import parse_shard, shard_dir

        where = shard_dir(args.out, *parse_shard(args.shard))
    print(summary(where, manifest))
    return 0


def _run_commit(args: argparse.Namespace) -> int:
    from .store.info import summary
    from .conversion.shards import commit

    print(summary(args.out, commit(args.out, progress=not args.quiet)))
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from .store.info import info

    doc = info(args.store)
    print(json.dumps(doc, indent=2) if args.json else _format_info(doc))
    return 0


def _format_info(doc: dict[str, Any]) -> str:
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {v}" for k, v in value.items())
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _run_verify(args: argparse.Namespace) -> int:
    from .store.verify import verify

    report = verify(args.store, progress=not args.quiet)
    print(report)
    return 0 if report.ok else 1


def _run_pull(args: argparse.Namespace) -> int:
    from .units import format_bytes
    from .store.pull import pull

    manifest = pull(args.url, args.dest, workers=args.workers, progress=not args.quiet, retries=args.retries)
    size = sum(entry["size"] for entry in manifest.files.values())
    print(f"store {args.dest}: {len(manifest.files) + 1} files ({format_bytes(size)}) from {args.url}, all verified")
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from .conversion.merge import merge
    from .store.info import summary

    manifest = merge(args.out, args.stores, progress=not args.quiet)
    print(summary(args.out, manifest))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    run_demo(args.workdir, samples=args.samples, epochs=args.epochs, memory_budget=args.memory_budget)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorstore-ds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    p = sub.add_parser("info", help="describe a store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print JSON for programs")
    p = sub.add_parser("verify", help="re-read every file of a store and check it against the manifest")
    p.add_argument("store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("pull", help="copy a store from a URL (http, s3, gs, ...), verified and resumable")
    p.add_argument("url", help="the store's URL")
    p.add_argument("dest", help="a new or empty directory (or an interrupted pull into it, which is resumed)")
    p.add_argument("--workers", type=int, default=8, help="parallel transfers")
    p.add_argument("--retries", type=int, default=3, help="failed requests tolerated per file before stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("merge", help="merge stores converted from consecutive parts of one source",
                       description="Merge stores converted from consecutive parts of one source, with the same "
                                   "options, into the store a conversion of the whole would make. Each part's "
                                   "source rows are offset by the rows read by the parts before it.")
    p.add_argument("out", help="the merged store's directory")
    p.add_argument("stores", nargs="+", help="store directories or URLs, in source order")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("commit", help="assemble the shards converted with 'convert --shard K/N' into the store")
    p.add_argument("out", help="the store directory given to every 'convert --shard K/N'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("demo", help="convert a built-in sample dataset, load it, and iterate as training would")
    p.add_argument("--workdir", default=None, help="where to put the sample data and store (default: ~/.cache/tensorstore_ds/demo)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--memory-budget", default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    handler = {"convert": _run_convert, "info": _run_info, "verify": _run_verify, "pull": _run_pull,
               "merge": _run_merge, "commit": _run_commit, "demo": _run_demo}[args.command]
    try:
        return handler(args)
    except TensorStoreDSError as exc:
        print(f"tensorstore-ds {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tensorstore-ds {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
