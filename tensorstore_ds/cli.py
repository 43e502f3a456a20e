"""The ``tensorstore-ds`` command: a thin layer over the library functions.

Every subcommand calls the function a user can import (``convert``, ``info``,
``preview``, ``verify``, ``pull``, ``merge``, ``commit``, ``demo``). Exit status: 0 on
success, 1 when the work failed (verify found damage, a store is damaged, a
write or a download failed), 2 on bad usage (an unknown flag, an invalid
option value, a source, column or store that is not there), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._version import __version__
from .conversion.options import option_fields
from .errors import ColumnNotFoundError, OptionsError, SourceError, StoreNotFoundError, TensorStoreDSError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DESCRIPTION = (
    "Convert image-text and audio-text datasets once into memory-mappable Zarr v3 stores, "
    "then check, copy, merge and describe them. Run 'tensorstore-ds COMMAND --help' for a command's options."
)
Handler = Callable[[argparse.Namespace], int]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, but not a default of None or False (nothing to say)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.help is None:
            return action.help
        return super()._get_help_string(action)


def _progress_flag(p: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--no-progress``, the same in every subcommand: no progress bars.

    By default bars show only when standard error is a terminal, so batch-job logs stay readable.
    """
    p.add_argument(
        "--quiet", "--no-progress", dest="progress", action="store_const", const=False, default=None,
        help="no progress bars (by default they show when output is a terminal)",
    )  # fmt: skip


def parse_storage_option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` as ``(KEY, value)``: JSON values (``true``, ``3``, ``{...}``) parsed, others kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"a storage option looks like KEY=VALUE (e.g. endpoint_url=http://HOST:9000), not {text!r}")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


class _StorageOption(argparse.Action):
    """``--storage-option KEY=VALUE``, repeatable, into one dict (see :func:`parse_storage_option`)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        options = dict(getattr(namespace, self.dest) or {})
        try:
            key, value = parse_storage_option(values)
        except ValueError as exc:
            parser.error(str(exc))
        options[key] = value
        setattr(namespace, self.dest, options)


def _storage_option_flag(p: argparse.ArgumentParser) -> None:
    """``--storage-option KEY=VALUE`` (repeatable): fsspec options for URLs (endpoint, credentials)."""
    p.add_argument(
        "--storage-option", dest="storage_options", action=_StorageOption, default=None, metavar="KEY=VALUE",
        help="fsspec option for a URL, repeatable: endpoint_url=http://HOST:9000, key=..., secret=..., anon=true",
    )  # fmt: skip


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a dataset into a store (resumable)",
        description="Convert an image-text or audio-text dataset into a store, once. Rerun the same command to resume.",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "source",
        help="dataset name, save_to_disk dir, image/audio folder, WebDataset shards, or .parquet/.jsonl/.csv files",
    )
    p.add_argument("out", help="store directory")
    for f in option_fields():
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        if f.name == "progress":
            _progress_flag(p)
        elif f.name == "storage_options":
            _storage_option_flag(p)
        elif isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=meta["help"])
        else:
            kind = meta["parse"] or str
            default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
            p.add_argument(flag, type=kind, default=default, choices=meta["choices"], help=meta["help"])


def _run_convert(args: argparse.Namespace) -> int:
    from .conversion.api import convert
    from .store.info import summary

    options = {f.name: getattr(args, f.name) for f in option_fields()}
    manifest = convert(args.source, args.out, **options)
    where = args.out
    if args.shard and args.engine is None:
        from .conversion.shards import parse_shard, shard_dir

        where = shard_dir(args.out, *parse_shard(args.shard))
    print(summary(where, manifest))
    return EXIT_OK


def _run_commit(args: argparse.Namespace) -> int:
    from .conversion.shards import commit
    from .store.info import summary

    print(summary(args.out, commit(args.out, progress=args.progress, storage_options=args.storage_options)))
    return EXIT_OK


def _run_info(args: argparse.Namespace) -> int:
    from .store.info import format_info, info

    doc = info(args.store, storage_options=args.storage_options)
    print(json.dumps(doc, indent=2) if args.json else format_info(doc))
    return EXIT_OK


def _run_verify(args: argparse.Namespace) -> int:
    from .store.verify import verify

    report = verify(args.store, progress=args.progress, storage_options=args.storage_options)
    print(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def _run_pull(args: argparse.Namespace) -> int:
    from .store.pull import pull
    from .units import format_bytes

    manifest = pull(
        args.url,
        args.dest,
        workers=args.workers,
        progress=args.progress,
        retries=args.retries,
        storage_options=args.storage_options,
    )
    size = sum(entry["size"] for entry in manifest.files.values())
    print(f"store {args.dest}: {len(manifest.files) + 1} files ({format_bytes(size)}) from {args.url}, all verified")
    return EXIT_OK


def _run_push(args: argparse.Namespace) -> int:
    from .store.push import push
    from .units import format_bytes

    manifest = push(
        args.store, args.url, workers=args.workers, progress=args.progress, storage_options=args.storage_options
    )
    size = sum(entry["size"] for entry in manifest.files.values())
    print(f"store {args.store}: {len(manifest.files) + 1} files ({format_bytes(size)}) at {args.url}, manifest last")
    return EXIT_OK


def _run_merge(args: argparse.Namespace) -> int:
    from .conversion.merge import merge
    from .store.info import summary

    manifest = merge(args.out, args.stores, progress=args.progress, storage_options=args.storage_options)
    print(summary(args.out, manifest))
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    run_demo(args.workdir, samples=args.samples, epochs=args.epochs, memory_budget=args.memory_budget)
    return EXIT_OK


def _add_store_commands(sub: Any) -> None:
    p = sub.add_parser("info", help="describe a store", formatter_class=_Formatter)
    p.add_argument("store", help="store directory or URL")
    p.add_argument("--json", action="store_true", help="print JSON for programs")
    _storage_option_flag(p)
    p.set_defaults(run=_run_info)
    p = sub.add_parser(
        "verify",
        help="re-read every file of a store and check it against the manifest (exit 1 on damage)",
        formatter_class=_Formatter,
    )
    p.add_argument("store", help="store directory or URL")
    _progress_flag(p)
    _storage_option_flag(p)
    p.set_defaults(run=_run_verify)
    p = sub.add_parser(
        "pull", help="copy a store from a URL (http, s3, gs, ...), verified and resumable", formatter_class=_Formatter
    )
    p.add_argument("url", help="the store's URL")
    p.add_argument("dest", help="a new or empty directory (or an interrupted pull into it, which is resumed)")
    p.add_argument("--workers", type=int, default=8, help="parallel transfers")
    p.add_argument("--retries", type=int, default=3, help="failed requests tolerated per file before stopping")
    _progress_flag(p)
    _storage_option_flag(p)
    p.set_defaults(run=_run_pull)
    p = sub.add_parser(
        "push",
        help="copy a finished store to a URL (s3, gs, ...): parallel, manifest last, resumable",
        formatter_class=_Formatter,
    )
    p.add_argument("store", help="a finished store directory")
    p.add_argument("url", help="where it goes, e.g. s3://bucket/stores/NAME (rerun to resume)")
    p.add_argument("--workers", type=int, default=8, help="parallel uploads")
    _progress_flag(p)
    _storage_option_flag(p)
    p.set_defaults(run=_run_push)


def _index_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of sample indices") from None


def _run_preview(args: argparse.Namespace) -> int:
    from .store.preview.api import preview

    layout = preview(
        args.store, args.output, samples=args.samples, seed=args.seed, indices=args.indices, html=args.html
    )
    written = [str(p) for p in (layout.png, layout.html) if p is not None]
    print(f"preview of {len(layout.tiles)} samples of {layout.store}: {', '.join(written)}")
    return EXIT_OK


def _add_preview_command(sub: Any) -> None:
    p = sub.add_parser(
        "preview",
        help="draw a sheet of samples (images, or waveforms and spectrograms) with captions and failures",
        description="Draw one PNG (and, with --html, a small static page) showing samples of a store with their "
        "captions, sizes or lengths, and the store's options and failures by reason.",
        formatter_class=_Formatter,
    )
    p.add_argument("store", help="store directory or URL (only the shown samples' chunks are downloaded)")
    p.add_argument("-o", "--output", metavar="PNG", help="the preview sheet to write, e.g. sheet.png")
    p.add_argument("--html", metavar="DIR", help="write DIR/index.html, with each image (and a WAV per clip)")
    p.add_argument("--samples", type=int, default=None, help="how many samples (default: 36 images, 12 clips)")
    p.add_argument("--seed", type=int, default=None, help="show a random pick, the same for the same seed")
    p.add_argument("--indices", type=_index_list, default=None, help="show these samples, e.g. 0,17,256")
    p.set_defaults(run=_run_preview)


def _add_assembly_commands(sub: Any) -> None:
    p = sub.add_parser(
        "merge",
        help="merge stores converted from consecutive parts of one source",
        description="Merge stores converted from consecutive parts of one source, with the same "
        "options, into the store a conversion of the whole would make. Each part's "
        "source rows are offset by the rows read by the parts before it.",
        formatter_class=_Formatter,
    )
    p.add_argument("out", help="the merged store's directory")
    p.add_argument("stores", nargs="+", help="store directories or URLs, in source order")
    _progress_flag(p)
    _storage_option_flag(p)
    p.set_defaults(run=_run_merge)
    p = sub.add_parser(
        "commit",
        help="assemble the shards converted with 'convert --shard K/N' into the store",
        formatter_class=_Formatter,
    )
    p.add_argument("out", help="the store directory or URL given to every 'convert --shard K/N'")
    _progress_flag(p)
    _storage_option_flag(p)
    p.set_defaults(run=_run_commit)
    p = sub.add_parser(
        "demo",
        help="convert a built-in sample dataset, load it, and iterate as training would",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--workdir", default=None, help="where to put the sample data and store (default: ~/.cache/tensorstore_ds/demo)"
    )
    p.add_argument("--samples", type=int, default=1000, help="sample images to make and convert")
    p.add_argument("--epochs", type=int, default=3, help="RAM-mode epochs to iterate")
    p.add_argument("--memory-budget", default="auto", help="the Dataset's memory budget (bytes, '8GiB', 0.5, auto)")
    p.set_defaults(run=_run_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``tensorstore-ds`` parser with every subcommand; each sets ``run`` to its handler."""
    parser = argparse.ArgumentParser(prog="tensorstore-ds", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"tensorstore-ds {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(sub)
    sub.choices["convert"].set_defaults(run=_run_convert)
    _add_store_commands(sub)
    _add_preview_command(sub)
    _add_assembly_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 done, 1 failed, 2 bad usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.run
    try:
        return handler(args)
    except (OptionsError, SourceError, ColumnNotFoundError, StoreNotFoundError) as exc:  # as typed, it cannot work
        print(f"tensorstore-ds {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TensorStoreDSError as exc:
        print(f"tensorstore-ds {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"tensorstore-ds {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
