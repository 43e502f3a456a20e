"""``ConvertOptions``: every option of a conversion, described once.

Each field carries its own description in ``metadata``: whether it decides the
store's content (a resumed or cached conversion must use the same value, and
the manifest records it), its help text, its choices, and how a command line
value is read. The CLI flags, their help, and the set of content options are
all derived from these fields (:func:`option_fields`, :meth:`ConvertOptions.content`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionsError
from .decode.audio import RESAMPLERS, AudioOptions
from .decode.image import RESIZE_MODES, ImageOptions
from .fetch import FetchOptions
from .hosts import Hosts

ENGINES = ("dask",)
ON_ERROR = ("skip", "fail")


def _option(
    default: Any,
    help: str,
    *,
    content: bool = False,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field described for the CLI and the manifest."""
    meta = {"help": help, "content": content, "choices": tuple(choices) if choices else None, "parse": parse}
    return field(default=default, metadata=meta)


def comma_list(text: str) -> tuple[str, ...]:
    """``"a,b,,c"`` as ``("a", "b", "c")``: how list options are typed on a command line."""
    return tuple(part for part in text.split(",") if part)


@dataclass(frozen=True)
class ConvertOptions:
    """Every option of :func:`~tensorstore_ds.convert`; the CLI flags are these names with dashes.

    Options marked ``content`` decide what the store holds; a resumed
    conversion must use the same values. The rest only decide how fast and how
    loudly it runs.
    """

    image_column: str | None = _option(
        None, "column with images: HF Image feature, http(s) URL, local path, or array", content=True
    )
    audio_column: str | None = _option(
        None, "column with audio: HF Audio feature, path, URL, or {array, sampling_rate}", content=True
    )
    caption_column: str = _option(
        "caption", "column with the caption: a string, a list of strings (all kept), or a dict with 'raw'", content=True
    )
    keep_columns: tuple[str, ...] = _option(
        (), "comma-separated columns carried into the caption index (e.g. ytid,aspect_list)", content=True,
        parse=comma_list,
    )  # fmt: skip
    audio_dir: str | None = _option(
        None, "directory of audio files, for sources without an audio column (MusicCaps)", content=True
    )
    audio_template: str | None = _option(
        None, "file name built from any columns, e.g. '{ytid}.wav' (with --audio-dir)", content=True
    )
    clip_start_column: str | None = _option(None, "column with the clip start in seconds", content=True)
    clip_end_column: str | None = _option(None, "column with the clip end in seconds", content=True)
    limit: int | None = _option(None, "convert only the first N rows", content=True, parse=int)
    image_size: int = _option(224, "output images are SIZE x SIZE x 3 uint8", content=True, parse=int)
    resize: str = _option(
        "squash", "squash stretches, center-crop crops, pad letterboxes", content=True, choices=RESIZE_MODES
    )
    max_pixels: int = _option(89_478_485, "reject larger images as decompression bombs", content=True, parse=int)
    jpeg_draft: bool = _option(True, "decode large JPEGs at reduced scale (DCT scaling) before resizing", content=True)
    sample_rate: int = _option(16000, "output sample rate of audio, Hz", content=True, parse=int)
    audio_seconds: float = _option(10.0, "audio is cut or zero-padded to this many seconds", content=True, parse=float)
    resampler: str = _option("soxr", "soxr is fast; resampy is the seed's", content=True, choices=RESAMPLERS)
    chunk_mb: float = _option(16.0, "target size of one chunk file, MiB", content=True, parse=float)
    workers: int | None = _option(
        None, "decode processes (default: the cores this process may use; 0 decodes in the main process)", parse=int
    )
    split: str = _option("train", "split to load from a dataset name, folder, or data files")
    fetch_concurrency: int = _option(64, "concurrent URL downloads", parse=int)
    timeout: float = _option(10.0, "seconds without data before a download attempt fails", parse=float)
    retries: int = _option(2, "retries for 5xx, 429, timeouts and connection errors", parse=int)
    deadline: float = _option(20.0, "seconds one URL may take in all: attempts, redirects, waits", parse=float)
    per_host_concurrency: int | None = _option(
        None, "concurrent downloads from one host at most (default: no cap beyond --fetch-concurrency)", parse=int
    )
    host_breaker: int = _option(
        20, "timeouts or connection errors in a row that make a host's other URLs fail fast (0: never)", parse=int
    )
    lookahead: int = _option(
        16384, "rows fetched and decoded ahead of the oldest unfinished one (staged on disk)", parse=int
    )
    retry_failed: bool = _option(False, "fetch again only the rows of a finished store that failed transiently")
    max_download_mb: float = _option(64.0, "largest accepted download, MiB", parse=float)
    allow_schemes: tuple[str, ...] = _option(
        ("http", "https"), "comma-separated URL schemes allowed (add file to read file:// URLs)", parse=comma_list
    )
    on_error: str = _option(
        "skip", "skip records failed samples and goes on; fail stops at the first one", choices=ON_ERROR
    )
    overwrite: bool = _option(False, "delete an existing store at OUT and start over")
    progress: bool | None = _option(True, "show progress bars (off by default when output is not a terminal)")
    engine: str | None = _option(
        None, "run the conversion as shards on a Dask cluster (default: this machine's process pool)", choices=ENGINES
    )
    scheduler: str | None = _option(None, "with --engine dask: the scheduler's address, e.g. tcp://HOST:8786")
    shards: int | None = _option(None, "with --engine dask: number of shards (default: 4 per worker thread)", parse=int)
    shard: str | None = _option(
        None, "convert only shard K/N of the source into OUT/.shards/ (job arrays); then run 'commit OUT'"
    )
    storage_options: dict[str, Any] | None = _option(  # noqa: RUF009  (frozen: never mutated)
        None,
        "when OUT is a URL (s3://, gs://...): fsspec options such as endpoint_url, key, secret (repeatable KEY=VALUE)",
    )
    scratch_dir: str | None = _option(
        None, "when OUT is a URL: local directory for chunks awaiting upload and resume state (default: the cache)"
    )

    def __post_init__(self) -> None:
        for f in option_fields():
            value, choices = getattr(self, f.name), f.metadata["choices"]
            if choices and value not in choices and not (value is None and f.default is None):
                raise OptionsError(f"{f.name} must be one of {', '.join(choices)}, not {value!r}")
        if self.shards is not None and self.shards < 1:
            raise OptionsError(f"shards must be >= 1, not {self.shards}")
        if self.shard is not None:
            from .shards import parse_shard

            parse_shard(self.shard)
        if self.limit is not None and self.limit < 0:
            raise OptionsError(f"limit must be >= 0, not {self.limit}")
        if self.workers is not None and self.workers < 0:
            raise OptionsError(f"workers must be >= 0, not {self.workers}")
        if self.chunk_mb <= 0 or self.fetch_concurrency < 1:
            raise OptionsError("chunk_mb must be > 0 and fetch_concurrency >= 1")
        if self.lookahead < 1:
            raise OptionsError(f"lookahead must be >= 1, not {self.lookahead}")
        if self.retry_failed and self.overwrite:
            raise OptionsError("retry_failed keeps a store's converted rows; it cannot be combined with overwrite")
        self.hosts()
        # the decoders and the fetcher check the rest: fail here, before a store is started
        self.image_options()
        self.audio_options()
        self.fetch_options()

    def image_options(self) -> ImageOptions:
        """How images are decoded and resized."""
        return ImageOptions(self.image_size, self.resize, self.max_pixels, self.jpeg_draft)

    def audio_options(self) -> AudioOptions:
        """How audio is decoded, resampled and cut."""
        return AudioOptions(self.sample_rate, self.audio_seconds, self.resampler)

    def fetch_options(self) -> FetchOptions:
        """How URLs are downloaded."""
        return FetchOptions(
            connect_timeout=min(10.0, self.timeout),
            read_timeout=self.timeout,
            retries=self.retries,
            deadline=self.deadline,
            max_bytes=int(self.max_download_mb * 2**20),
            allowed_schemes=tuple(self.allow_schemes),
        )

    def hosts(self) -> Hosts:
        """Per-host cap and circuit breaker for one conversion."""
        return Hosts(self.per_host_concurrency, self.host_breaker)

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> ConvertOptions:
        """Build options from keyword arguments, naming any unknown one."""
        known = {f.name for f in option_fields()}
        unknown = sorted(set(options) - known)
        if unknown:
            raise OptionsError(f"unknown convert option(s) {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = dict(options)
        for f in option_fields():
            if f.metadata["parse"] is comma_list and isinstance(values.get(f.name), str):
                values[f.name] = comma_list(values[f.name])
        typed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**typed)

    def content(self) -> dict[str, Any]:
        """The options that decide the store's content, JSON-ready (tuples as lists)."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
            for f in option_fields()
            if f.metadata["content"]
        }


def option_fields() -> tuple[dataclasses.Field[Any], ...]:
    """The fields of :class:`ConvertOptions`, in order, each with its ``metadata``."""
    return dataclasses.fields(ConvertOptions)
