"""Hostile inputs for the hardening tests and ``tools/hardening_report.py``.

A *case* is one source row together with the outcome the documentation
promises for it: converted (and a check of what the store holds for it), or
recorded in ``failures.jsonl`` with a reason code. The three corpora (image
URLs, image files, audio files) mix every hostile case with good rows and run
through one real :func:`tensorstore_ds.convert` call each; :func:`check_store`
then compares every row with its case and returns each disagreement as text.
The tests assert that there is none; the report counts them.

The module also holds well-formed seed files in many formats and a byte-level
mutator, shared by the fuzz tests and the report's own fuzzing loop.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from PIL import Image

from tensorstore_ds.conversion.decode.audio import AudioOptions, decode_audio
from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image
from tensorstore_ds.errors import DecodeError, TensorStoreDSError
from tests.httpserver import Response, TestServer
from tests.media import image_bytes, pixels, sine

SIZE = 16  # stored image side
RATE, SECONDS = 16000, 0.25  # stored audio
SAMPLES = round(RATE * SECONDS)
WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)
PLANES = "".join(chr(plane * 0x10000 + 0x4E2D) for plane in range(17))  # a code point in every Unicode plane
UNICODE_CAPTION = "é中😀" + PLANES + '\U0010ffff\u200d\ufeff\x00\n\t"\\'
LONG_CAPTION = ("a long caption " * 70_000)[: 2**20]  # 1 MiB
MAX_DOWNLOAD_MB = 0.02  # URL corpus: bodies above 20 KiB are too large


# --- encoding helpers ------------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def encode_audio(signal: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with no real pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"x") + chunk(b"IEND", b"")


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """``(type, data offset, length)`` of every chunk of a PNG."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        out.append((kind, pos + 8, length))
        pos += 12 + length
    return out


def flip_png_idat(data: bytes) -> bytes:
    """Flip bytes in the middle of the first IDAT chunk (its CRC no longer matches)."""
    _kind, start, length = next(c for c in png_chunks(data) if c[0] == b"IDAT")
    out = bytearray(data)
    for i in range(start + length // 2, start + length // 2 + 4):
        out[i] ^= 0x5A
    return bytes(out)


def flip_middle(data: bytes, count: int = 8) -> bytes:
    """Invert ``count`` bytes in the middle of ``data``."""
    out = bytearray(data)
    for i in range(len(out) // 2, len(out) // 2 + count):
        out[i] ^= 0xFF
    return bytes(out)


def cut_png_tail(data: bytes) -> bytes:
    """Drop the IEND chunk and the last IDAT's CRC: every pixel is still there."""
    return data[: -12 - 4]


def oriented(orientation: int) -> bytes:
    """A 40x20 JPEG, red left and blue right, tagged with an EXIF orientation."""
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", exif=exif.tobytes(), quality=95)


def transparent_palette() -> bytes:
    """A palette PNG: top half opaque red, bottom half the transparent entry."""
    im = Image.new("P", (12, 12), 1)
    im.putpalette([0, 0, 0, 10, 200, 30, 255, 0, 0] + [0, 0, 0] * 253)
    im.paste(2, (0, 0, 12, 6))
    return encode(im, "PNG", transparency=1)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), color) for color in (RED, BLUE, (0, 255, 0))]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **extra)


def gradient(fmt: str, height: int = 48, width: int = 64, seed: int = 3) -> bytes:
    im = Image.fromarray(pixels(height, width, seed))
    return encode(im.convert("P") if fmt == "GIF" else im, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def wav_with_rate(rate: int, frames: int = 400) -> bytes:
    """A PCM WAV whose header claims ``rate`` Hz."""
    data = bytearray(encode_audio(np.full(frames, 0.1, np.float32), 16000))
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", min(rate * 2, 2**32 - 1))  # byte rate
    return bytes(data)


# --- cases -------------------------------------------------------------------------------------------------

Check = Callable[[dict[str, Any]], "str | None"]


@dataclass
class Case:
    """One source row and its documented outcome.

    Parameters
    ----------
    name
        What is hostile about it.
    expect
        ``"ok"`` (converted) or the failure reason codes any of which is documented.
    check
        For converted rows: given the stored values (``images``/``image_size`` or
        ``audio``/``audio_length``, and ``caption``), a problem description or None.
    caption
        The row's caption as written to the source.
    hostile
        False for the good rows mixed in.
    """

    name: str
    expect: str | frozenset[str]
    check: Check | None = None
    caption: Any = None
    hostile: bool = True
    media: Any = None  # the URL, path, or bytes of the row
    clip: tuple[float | None, float | None] = (None, None)

    @property
    def reasons(self) -> frozenset[str]:
        return frozenset({self.expect}) if isinstance(self.expect, str) else self.expect


def same_as_decoded(data: bytes | str | Path, options: ImageOptions | None = None) -> Check:
    """The stored row equals what the decoder makes of ``data`` (and its size)."""
    options = ImageOptions(SIZE) if options is None else options
    want, size = decode_image(data, options)

    def check(row: dict[str, Any]) -> str | None:
        if list(row["image_size"]) != list(size):
            return f"image_size {list(row['image_size'])}, expected {list(size)}"
        if not np.array_equal(row["images"], want):
            return f"pixels differ from the decoded image by {np.abs(row['images'].astype(int) - want).max()}"
        return None

    return check


def colour(
    expected: tuple[int, int, int], size: tuple[int, int], tolerance: int = 3, rows: slice = slice(None)
) -> Check:
    """Every stored pixel (of ``rows``) is ``expected``; the original size is ``size``."""

    def check(row: dict[str, Any]) -> str | None:
        if tuple(row["image_size"]) != size:
            return f"image_size {tuple(row['image_size'])}, expected {size}"
        error = np.abs(row["images"][rows].astype(int) - expected).max()
        return None if error <= tolerance else f"pixels are {row['images'][rows][0, 0]}, expected {expected}"

    return check


def shape_only(row: dict[str, Any]) -> str | None:
    """For inputs whose pixels cannot be known (corrupt data in a format without checksums)."""
    return None if row["images"].shape == (SIZE, SIZE, 3) and len(row["image_size"]) == 2 else "bad shape"


def both(*checks: Check) -> Check:
    def check(row: dict[str, Any]) -> str | None:
        return next((p for c in checks if (p := c(row)) is not None), None)

    return check


def good_image(i: int) -> bytes:
    return image_bytes(20 + i % 7, 18 + i % 5, seed=i)


def noisy_image(i: int) -> bytes:
    """A PNG of noise, about 5 KB: large enough to be cut part-way."""
    return encode(Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), np.uint8)), "PNG")


def image_cases() -> list[tuple[str, bytes, str | frozenset[str], Check | None]]:
    """``(name, bytes, expected outcome, check)`` of every hostile image file content."""
    top, bottom = slice(0, SIZE // 4), slice(SIZE - SIZE // 4, SIZE)  # clear of the resize filter's reach
    html = b"<!DOCTYPE html><html><head><title>404</title></head><body>Not Found</body></html>\n"
    jpeg, png = gradient("JPEG"), gradient("PNG")
    cases: list[tuple[str, bytes, str | frozenset[str], Check | None]] = []
    for fmt in ("JPEG", "PNG", "WEBP", "GIF"):
        data = gradient(fmt)
        cases.append((f"truncated {fmt} (half)", data[: len(data) // 2], "undecodable-image", None))
        cases.append((f"truncated {fmt} (first bytes)", data[:12], "undecodable-image", None))
    cases += [
        ("PNG without IEND and last CRC", cut_png_tail(png), "ok", same_as_decoded(png)),
        ("PNG with flipped IDAT bytes (bad CRC)", flip_png_idat(png), "undecodable-image", None),
        # GIF has no checksum: corrupt LZW data may decode to wrong pixels (documented).
        (
            "corrupt GIF data",
            gradient("GIF")[:40] + b"\xff" * 64 + gradient("GIF")[104:],
            frozenset({"ok", "undecodable-image"}),
            shape_only,
        ),
        ("JPEG with a broken signature", b"\xff\x00" + jpeg[2:], "undecodable-image", None),
        # JPEG and lossy WebP have no checksum: corrupt entropy-coded data decodes to wrong pixels (documented).
        ("corrupt JPEG scan data", flip_middle(jpeg), frozenset({"ok", "undecodable-image"}), shape_only),
        ("corrupt WebP data", flip_middle(gradient("WEBP")), frozenset({"ok", "undecodable-image"}), shape_only),
        ("zero bytes", b"", "empty-file", None),
        ("HTML saved as an image", html, "undecodable-image", None),
        ("plain text saved as an image", b"hello, this is not a picture\n" * 3, "undecodable-image", None),
        ("EPS (would run Ghostscript)", encode(Image.new("RGB", (8, 8)), "EPS"), "undecodable-image", None),
        ("decompression bomb header 20000x20000", png_header(20000, 20000), "decompression-bomb", None),
        ("decompression bomb header 65535x65535 JPEG-size", png_header(65535, 65535), "decompression-bomb", None),
        ("1x1", encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), "ok", colour((10, 200, 30), (1, 1), 0)),
        (
            "10000x10",
            encode(Image.new("RGB", (10000, 10), (40, 80, 120)), "PNG"),
            "ok",
            colour((40, 80, 120), (10, 10000), 0),
        ),
        (
            "10x10000",
            encode(Image.new("RGB", (10, 10000), (120, 80, 40)), "PNG"),
            "ok",
            colour((120, 80, 40), (10000, 10), 0),
        ),
        (
            "CMYK JPEG",
            encode(Image.new("CMYK", (20, 12), (0, 255, 255, 0)), "JPEG", quality=95),
            "ok",
            colour(RED, (12, 20)),
        ),
        (
            "16-bit PNG",
            encode(Image.fromarray(np.full((6, 9), 32896, np.uint16)), "PNG"),
            "ok",
            colour((128, 128, 128), (6, 9), 0),
        ),
        (
            "palette PNG with transparency",
            transparent_palette(),
            "ok",
            both(colour(RED, (12, 12), 0, top), colour(WHITE, (12, 12), 0, bottom)),
        ),
        ("animated GIF", animated("GIF"), "ok", colour(RED, (16, 16), 10)),
        ("animated WebP", animated("WEBP"), "ok", colour(RED, (16, 16), 10)),
        (
            "EXIF orientation 6",
            oriented(6),
            "ok",
            both(colour(RED, (40, 20), 40, top), colour(BLUE, (40, 20), 40, bottom)),
        ),
        (
            "EXIF orientation 8",
            oriented(8),
            "ok",
            both(colour(BLUE, (40, 20), 40, top), colour(RED, (40, 20), 40, bottom)),
        ),
        ("PNG bytes under a .jpg name", good_image(99), "ok", same_as_decoded(good_image(99))),
    ]
    return cases


# --- running a corpus ----------------------------------------------------------------------------------------


@dataclass
class CorpusResult:
    """What one corpus run found.

    Attributes
    ----------
    rows, hostile
        Source rows, and how many of them are distinct hostile inputs.
    problems
        Every disagreement with the documented outcomes: a row lost or
        duplicated, a wrong outcome or reason, wrong content, a store that does
        not verify.
    foreign
        Exceptions that are not tensorstore_ds errors (a crash of the run).
    """

    name: str
    rows: int = 0
    hostile: int = 0
    converted: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    lost: int = 0
    wrong: int = 0
    undetectable: int = 0  # corrupt rows converted as documented (no checksum in the format to tell)


def write_parquet(path: Path, columns: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return str(path)


def run_corpus(name: str, cases: list[Case], source: Any, out: Path, **options: Any) -> CorpusResult:
    """Convert ``source`` (whose rows are ``cases``) into ``out`` and check every row."""
    from tensorstore_ds.conversion.api import convert

    result = CorpusResult(name, rows=len(cases), hostile=sum(c.hostile for c in cases))
    try:
        convert(source, out, progress=False, **options)
    except TensorStoreDSError as exc:
        result.problems.append(f"convert raised {type(exc).__name__}: {exc}")
        return result
    except Exception as exc:
        result.foreign.append(f"convert raised {type(exc).__name__}: {exc}")
        return result
    check_store(out, cases, result)
    return result


def check_store(out: Path, cases: list[Case], result: CorpusResult) -> None:
    """Compare the store at ``out`` with every case, recording each disagreement in ``result``."""
    from tensorstore_ds import open_store, verify

    try:
        store = open_store(out)
        report = verify(out, progress=False)
    except Exception as exc:
        (result.problems if isinstance(exc, TensorStoreDSError) else result.foreign).append(
            f"the store does not open: {type(exc).__name__}: {exc}"
        )
        return
    if not report.ok:
        result.problems.append(f"verify: {report}")
    media = "images" if "images" in store.manifest.arrays else "audio"
    small = "image_size" if media == "images" else "audio_length"
    rows = np.asarray(store.array("source_row")).tolist()
    failures = store.failures()
    by_row = {row: k for k, row in enumerate(rows)}
    failed = {f["row"]: f for f in failures}
    result.converted, result.failed = len(rows), len(failures)
    if len(by_row) != len(rows) or len(failed) != len(failures):
        result.problems.append("a source row is stored or listed as failed more than once")
    if set(by_row) & set(failed):
        result.problems.append(f"rows both converted and failed: {sorted(set(by_row) & set(failed))}")
    expected_reasons: Counter[str] = Counter()
    for row, case in enumerate(cases):
        where = f"row {row} ({case.name})"
        if row not in by_row and row not in failed:
            result.problems.append(f"{where}: lost, neither converted nor failed")
            result.lost += 1
            continue
        if row in by_row:
            if "ok" not in case.reasons:
                result.problems.append(f"{where}: converted, expected a failure with {sorted(case.reasons)}")
                result.wrong += 1
                continue
            k = by_row[row]
            result.undetectable += case.check is shape_only
            values = {media: store.array(media)[k], small: store.array(small)[k], "caption": store.captions[k]}
            problem = case.check(values) if case.check else None
            if problem is None and case.caption is not None and values["caption"] != _text(case.caption):
                problem = f"caption {values['caption'][:40]!r}, expected {_text(case.caption)[:40]!r}"
            if problem:
                result.problems.append(f"{where}: {problem}")
                result.wrong += 1
            continue
        f = failed[row]
        if case.reasons == {"ok"}:
            result.problems.append(f"{where}: failed with {f['reason']} ({f['detail'][:200]}), expected converted")
            result.lost += 1
        elif f["reason"] not in case.reasons:
            result.problems.append(
                f"{where}: failed with {f['reason']} ({f['detail'][:200]}), expected {sorted(case.reasons)}"
            )
        elif not f["detail"] or f["key"] is None:
            result.problems.append(f"{where}: failure record {f} lacks a key or detail")
        if len(case.reasons) == 1:
            expected_reasons.update(case.reasons)
    extra = (set(by_row) | set(failed)) - set(range(len(cases)))
    if extra:
        result.problems.append(f"rows that are not in the source: {sorted(extra)}")
    counts = store.manifest.counts
    if counts["converted"] != len(rows) or counts["failed"] != len(failures) or counts["rows_read"] != len(cases):
        result.problems.append(f"manifest counts {counts} disagree with the store")
    expected_by_reason = dict(sorted(expected_reasons.items()))
    if all(len(c.reasons) == 1 for c in cases) and counts["failed_by_reason"] != expected_by_reason:
        result.problems.append(f"failed_by_reason {counts['failed_by_reason']}, expected {expected_by_reason}")
    store.close()


def _text(caption: Any) -> str:
    return caption.decode("utf-8") if isinstance(caption, bytes) else caption


def interleave(hostile: list[Case], good: Callable[[int], Case]) -> list[Case]:
    """Hostile cases with a good row before and after each of them."""
    cases = [good(0)]
    for i, case in enumerate(hostile):
        cases += [case, good(i + 1)]
    return cases


# --- image URLs --------------------------------------------------------------------------------------------


def dead_url() -> str:
    """A loopback URL on a port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.png"


def url_corpus(server: TestServer, root: Path) -> list[Case]:
    """Image URL rows answered by ``server`` in every way a web server misbehaves."""
    png = {"Content-Type": "image/png"}
    routes: list[tuple[str, Any, str | frozenset[str], Check | None]] = []

    def route(name: str, script: Any, expect: str | frozenset[str], check: Check | None = None) -> None:
        path = f"/case/{len(routes)}.png"
        server.route(path, script)
        routes.append((name, server.url_for(path), expect, check))

    def good_body(i: int) -> bytes:
        return good_image(100 + i)

    for name, data, expect, check in image_cases():
        if data:
            route(f"{name} (served as image/png)", Response(200, data, png), expect, check)
    route("HTML page as text/html", Response(200, b"<html>moved</html>", {"Content-Type": "text/html"}), "not-media")
    route(
        "image as text/plain", Response(200, good_body(1), {"Content-Type": "text/plain; charset=utf-8"}), "not-media"
    )
    route(
        "HTML as image/jpeg", Response(200, b"<html>moved</html>", {"Content-Type": "image/jpeg"}), "undecodable-image"
    )
    route("image as application/octet-stream", good_body(2), "ok", same_as_decoded(good_body(2)))
    route(
        "PNG as image/jpeg",
        Response(200, good_body(3), {"Content-Type": "image/jpeg"}),
        "ok",
        same_as_decoded(good_body(3)),
    )
    route("404", Response(404, b"not found", {"Content-Type": "text/plain"}), "http-404")
    route("403", 403, "http-403")
    route("410", 410, "http-410")
    route("500 then success", [500, Response(200, good_body(4), png)], "ok", same_as_decoded(good_body(4)))
    route("500 forever", 500, "http-500")
    route(
        "429 with Retry-After then success",
        [Response(429, b"", {"Retry-After": "1"}), Response(200, good_body(5), png)],
        "ok",
        same_as_decoded(good_body(5)),
    )
    route(
        "503 with a Retry-After date in the past, forever",
        Response(503, b"", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        "http-503",
    )
    route("never answers", Response.never(), "timeout")
    route("stalls mid-body", Response(200, noisy_image(6), png, stall_after=1000, stall=3600.0), "timeout")
    route("drops the connection mid-body", Response(200, noisy_image(7), png, drop_after=1000), "connection-error")
    route(
        "closes after fewer bytes than Content-Length",
        Response(200, noisy_image(8)[:1000], png, content_length=len(noisy_image(8))),
        "connection-error",
    )
    route(
        "chunked body cut short", Response(200, noisy_image(9), png, chunked=True, drop_after=1000), "connection-error"
    )
    route("redirect to an image", Response.redirect("/good/redirected.png"), "ok", same_as_decoded(good_body(9)))
    server.route("/good/redirected.png", Response(200, good_body(9), png))
    server.route("/loop/a", Response.redirect("/loop/b"))
    server.route("/loop/b", Response.redirect("/loop/a"))
    route("redirect loop", Response.redirect("/loop/a"), "too-many-redirects")
    route("redirect to file://", Response.redirect(f"file://{root}/good-0.png"), "scheme-refused")
    big = np.random.default_rng(0).integers(0, 256, int(MAX_DOWNLOAD_MB * 2**20) + 10_000, np.uint8).tobytes()
    route("body above the limit (Content-Length)", Response(200, big, png), "too-large")
    route("body above the limit (chunked)", Response(200, big, png, chunked=True), "too-large")
    route("body above the limit (no length)", Response(200, big, png, content_length=None), "too-large")
    route("empty body", Response(200, b"", png), "empty-body")
    write_good = root / "good-0.png"
    write_good.parent.mkdir(parents=True, exist_ok=True)
    write_good.write_bytes(good_body(0))
    plain = [
        ("file:// URL (not allowed)", f"file://{write_good}", "scheme-refused"),
        ("ftp:// URL", "ftp://127.0.0.1/x.png", "scheme-refused"),
        ("gopher:// URL", "gopher://127.0.0.1/x.png", "scheme-refused"),
        ("nothing listens", dead_url(), "connection-error"),
        ("space in the host", "http://exa mple/x.png", "bad-url"),
        ("port out of range", "http://127.0.0.1:99999/x.png", "bad-url"),
        ("no host", "http:///x.png", "bad-url"),
        ("data: URL (a path, no such file)", "data:image/png;base64,iVBORw0KGgo=", "undecodable-image"),
    ]
    hostile = [
        Case(name, expect, check, caption=f"caption of {name}", media=url) for name, url, expect, check in routes
    ]
    hostile += [Case(name, expect, None, caption=f"caption of {name}", media=url) for name, url, expect in plain]
    good_url = server.url_for("/good/caption.png")
    server.route("/good/caption.png", Response(200, good_body(10), png))
    hostile += [
        Case("caption None (never fetched)", "missing-caption", caption=None, media=good_url),
        Case("caption empty", "missing-caption", caption="", media=good_url),
        Case("caption whitespace", "missing-caption", caption=" \t\n", media=good_url),
        Case("caption 1 MiB", "ok", same_as_decoded(good_body(10)), caption=LONG_CAPTION, media=good_url),
        Case(
            "caption in every Unicode plane",
            "ok",
            same_as_decoded(good_body(10)),
            caption=UNICODE_CAPTION,
            media=good_url,
        ),
        Case("image column None", "missing-media", caption="no image", media=None),
        Case("image column empty", "missing-media", caption="no image", media="  "),
    ]

    def good(i: int) -> Case:
        path = f"/good/{i}.png"
        body = good_image(i)
        server.route(path, Response(200, body, png))
        return Case(
            f"good {i}",
            "ok",
            same_as_decoded(body),
            caption=f"good caption {i}",
            hostile=False,
            media=server.url_for(path),
        )

    return interleave(hostile, good)


def run_image_url_corpus(server: TestServer, root: Path) -> CorpusResult:
    """Every URL case in one conversion, fetched from ``server``."""
    cases = url_corpus(server, root / "files")
    src = write_parquet(
        root / "urls.parquet",
        {
            "image_url": [c.media for c in cases],
            "caption": [c.caption for c in cases],
            "note": [json.dumps({"case": c.name}) for c in cases],
        },
    )
    return run_corpus(
        "image URLs",
        cases,
        src,
        root / "store",
        image_column="image_url",
        keep_columns=("note",),
        image_size=SIZE,
        chunk_mb=0.004,
        workers=0,
        timeout=1.0,
        retries=1,
        max_download_mb=MAX_DOWNLOAD_MB,
        fetch_concurrency=32,
    )


# --- image files -------------------------------------------------------------------------------------------


def file_corpus(root: Path) -> list[Case]:
    """Image file rows (relative paths) of every hostile kind; captions are bytes."""
    root.mkdir(parents=True, exist_ok=True)
    hostile = []
    for i, (name, data, expect, check) in enumerate(image_cases()):
        path = root / "img" / f"hostile-{i}.{'jpg' if i % 2 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        hostile.append(Case(name, expect, check, caption=f"caption of {name}".encode(), media=f"img/{path.name}"))
    (root / "img" / "a-directory.png").mkdir(exist_ok=True)
    (root / "img" / "link.png").unlink(missing_ok=True)
    (root / "img" / "link.png").symlink_to(root / "img" / "good-0.png")
    (root / "img" / "good-0.png").write_bytes(good_image(0))
    (root / "img" / "dangling.png").unlink(missing_ok=True)
    (root / "img" / "dangling.png").symlink_to(root / "img" / "nowhere.png")
    (root / "img" / "fifo.png").unlink(missing_ok=True)
    os.mkfifo(root / "img" / "fifo.png")  # reading it would block forever
    good0 = same_as_decoded(good_image(0))
    hostile += [
        Case("missing file", "undecodable-image", caption=b"missing", media="img/missing.png"),
        Case("a directory", "undecodable-image", caption=b"dir", media="img/a-directory.png"),
        Case("dangling symlink", "undecodable-image", caption=b"dangling", media="img/dangling.png"),
        Case("a FIFO named .png", "undecodable-image", caption=b"fifo", media="img/fifo.png"),
        Case("symlink to a good image", "ok", good0, caption=b"link", media="img/link.png"),
        Case("caption None", "missing-caption", caption=None, media="img/good-0.png"),
        Case("caption empty bytes", "missing-caption", caption=b"", media="img/good-0.png"),
        Case("caption not UTF-8", "bad-caption", caption=b"caf\xe9 \xff\xfe", media="img/good-0.png"),
        Case("caption 1 MiB", "ok", good0, caption=LONG_CAPTION.encode(), media="img/good-0.png"),
        Case("caption in every Unicode plane", "ok", good0, caption=UNICODE_CAPTION.encode(), media="img/good-0.png"),
        Case("image column None", "missing-media", caption=b"no image", media=None),
    ]

    def good(i: int) -> Case:
        path = root / "img" / f"good-{i}.png"
        path.write_bytes(good_image(i))
        return Case(
            f"good {i}",
            "ok",
            same_as_decoded(good_image(i)),
            caption=f"good {i}".encode(),
            hostile=False,
            media=f"img/{path.name}",
        )

    return interleave(hostile, good)


def run_image_file_corpus(root: Path) -> CorpusResult:
    cases = file_corpus(root / "files")
    src = write_parquet(
        root / "files" / "images.parquet",
        {"image": [c.media for c in cases], "caption": pa.array([c.caption for c in cases], pa.binary())},
    )
    return run_corpus(
        "image files", cases, src, root / "store", image_column="image", image_size=SIZE, chunk_mb=0.004, workers=1
    )


# --- audio files ---------------------------------------------------------------------------------------------


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def tone(freq: float, amplitude: float, length: int = SAMPLES) -> Check:
    """A full-length sine of ``freq`` Hz and about ``amplitude`` peak."""

    def check(row: dict[str, Any]) -> str | None:
        audio, n = row["audio"].astype(np.float32), int(row["audio_length"])
        if n != length:
            return f"audio_length {n}, expected {length}"
        if abs(peak_hz(audio[:n], RATE) - freq) > 8:
            return f"dominant frequency {peak_hz(audio[:n], RATE):.0f} Hz, expected {freq}"
        peak = float(np.abs(audio[n // 4 : n - n // 4]).max())
        if abs(peak - amplitude) > 0.02:
            return f"amplitude {peak:.3f}, expected {amplitude}"
        return None if not audio[n:].any() else "padding is not zero"

    return check


def audio_prefix(signal: np.ndarray, length: int) -> Check:
    """The first ``length`` stored samples are ``signal``'s (no resampling), the rest zeros."""

    def check(row: dict[str, Any]) -> str | None:
        n = int(row["audio_length"])
        if n != length:
            return f"audio_length {n}, expected {length}"
        if not np.array_equal(row["audio"][:n], signal[:n].astype(np.float16)) or row["audio"][n:].any():
            return "samples differ from the recording"
        return None

    return check


def same_audio(data: bytes, clip: tuple[Any, Any] | None = None) -> Check:
    """The stored row equals what the decoder makes of ``data`` (truncated lossy files)."""
    want, length = decode_audio(data, AudioOptions(RATE, SECONDS), clip)

    def check(row: dict[str, Any]) -> str | None:
        ok = int(row["audio_length"]) == length and np.array_equal(row["audio"], want)
        return None if ok else "samples differ from the decoded recording"

    return check


def audio_corpus(root: Path) -> list[Case]:
    root.mkdir(parents=True, exist_ok=True)
    at16 = sine(RATE, 0.5, 440.0)
    wav = encode_audio(at16, RATE)
    pcm = sf.read(io.BytesIO(wav), dtype="float32")[0]  # what the 16-bit file holds
    files: list[tuple[str, bytes, str | frozenset[str], Check | None, tuple[Any, Any]]] = []
    for rate in (8000, 11025, 16000, 22050, 44100, 48000, 96000):
        files.append((f"{rate} Hz", encode_audio(sine(rate, 0.4, 500.0), rate), "ok", tone(500.0, 0.5), (None, None)))
    for channels in (2, 3, 6, 8):
        amplitudes = np.linspace(0.2, 0.8, channels)
        signal = sine(44100, 0.4, 300.0)[:, None] * (amplitudes / 0.5)
        files.append(
            (
                f"{channels} channels",
                encode_audio(signal.astype(np.float32), 44100, "WAV", "FLOAT"),
                "ok",
                tone(300.0, float(amplitudes.mean())),
                (None, None),
            )
        )
    truncated = {fmt: encode_audio(at16, RATE, fmt) for fmt in ("FLAC", "OGG", "MP3")}
    partial = frozenset({"ok", "undecodable-audio", "empty-audio"})  # libsndfile decides; documented either way
    for fmt, data in truncated.items():
        cut = data[: len(data) // 2]
        try:
            check = same_audio(cut)
        except DecodeError:
            check = None
        files.append((f"truncated {fmt}", cut, partial, check, (None, None)))
    files += [
        ("truncated WAV", wav[: 44 + 2 * 1500], "ok", audio_prefix(pcm, 1500), (None, None)),
        ("zero-length WAV", encode_audio(np.zeros(0, np.float32), RATE), "empty-audio", None, (None, None)),
        ("zero bytes", b"", "empty-file", None, (None, None)),
        ("text named .wav", b"<html><body>Not Found</body></html>\n" * 10, "undecodable-audio", None, (None, None)),
        (
            "NaN in a float WAV",
            encode_audio(np.where(np.arange(8000) == 99, np.nan, at16).astype(np.float32), RATE, "WAV", "FLOAT"),
            "non-finite-audio",
            None,
            (None, None),
        ),
        (
            "inf in a float WAV",
            encode_audio(np.where(np.arange(8000) == 7, -np.inf, at16).astype(np.float32), RATE, "WAV", "FLOAT"),
            "non-finite-audio",
            None,
            (None, None),
        ),
        (
            "beyond float16",
            encode_audio(np.where(np.arange(8000) == 7, 1e6, at16).astype(np.float32), RATE, "WAV", "FLOAT"),
            "audio-out-of-range",
            None,
            (None, None),
        ),
        (
            "all silent",
            encode_audio(np.zeros(RATE, np.float32), RATE),
            "ok",
            audio_prefix(np.zeros(SAMPLES), SAMPLES),
            (None, None),
        ),
        (
            "3 samples at 44.1 kHz",
            encode_audio(sine(44100, 3 / 44100, 440.0), 44100),
            "ok",
            lambda row: None if int(row["audio_length"]) == 1 and not row["audio"][1:].any() else "wrong length",
            (None, None),
        ),
        (
            "1 sample at 8 kHz",
            encode_audio(np.full(1, 0.25, np.float32), 8000),
            "ok",
            lambda row: None if int(row["audio_length"]) == 2 and not row["audio"][2:].any() else "wrong length",
            (None, None),
        ),
        ("clip inside", wav, "ok", audio_prefix(pcm[1600:], 1600), (0.1, 0.2)),
        ("clip end past the end", wav, "ok", audio_prefix(pcm[6400:], 1600), (0.4, 5.0)),
        ("clip starting past the end", wav, "clip-out-of-range", None, (5.0, 6.0)),
        ("clip starting exactly at the end", wav, "clip-out-of-range", None, (0.5, None)),
        ("negative clip", wav, "clip-out-of-range", None, (-1.0, 0.1)),
        ("empty clip", wav, "clip-out-of-range", None, (0.2, 0.2)),
        ("reversed clip", wav, "clip-out-of-range", None, (0.3, 0.1)),
        ("header claims 2**31-1 Hz", wav_with_rate(2**31 - 1), "undecodable-audio", None, (None, None)),
        ("header claims 0 Hz", wav_with_rate(0), "undecodable-audio", None, (None, None)),
    ]
    hostile = []
    for i, (name, data, expect, check, clip) in enumerate(files):
        path = root / "audio" / f"hostile-{i}.{'flac' if 'FLAC' in name else 'wav'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        hostile.append(Case(name, expect, check, caption=f"caption of {name}", media=f"audio/{path.name}", clip=clip))
    hostile.append(Case("missing file", "undecodable-audio", caption="gone", media="audio/missing.wav"))
    (root / "audio" / "fifo.wav").unlink(missing_ok=True)
    os.mkfifo(root / "audio" / "fifo.wav")  # reading it would block forever
    hostile.append(Case("a FIFO named .wav", "undecodable-audio", caption="fifo", media="audio/fifo.wav"))
    (root / "audio" / "dir.wav").mkdir(exist_ok=True)
    hostile.append(Case("a directory named .wav", "undecodable-audio", caption="dir", media="audio/dir.wav"))

    def good(i: int) -> Case:
        path = root / "audio" / f"good-{i}.wav"
        path.write_bytes(encode_audio(sine(RATE, 0.3, 200.0 + 20 * i), RATE))
        return Case(
            f"good {i}", "ok", tone(200.0 + 20 * i, 0.5), caption=f"good {i}", hostile=False, media=f"audio/{path.name}"
        )

    return interleave(hostile, good)


def audio_bytes_cases() -> tuple[list[bytes], list[str]]:
    """In-memory recordings, three of which libsndfile refuses (with a message naming the in-memory file)."""
    ogg = encode_audio(sine(8000, 0.3), 8000, "OGG")
    blobs = [
        encode_audio(sine(8000, 0.2), 8000),
        b"<html>not audio</html>" * 5,
        ogg[: len(ogg) // 2],
        encode_audio(sine(8000, 0.2), 8000, "FLAC")[:60],
        encode_audio(sine(8000, 0.2, 300.0), 8000),
    ]
    return blobs, ["ok", "undecodable-audio", "undecodable-audio", "undecodable-audio", "ok"]


def run_audio_corpus(root: Path) -> CorpusResult:
    cases = audio_corpus(root / "files")
    src = write_parquet(
        root / "files" / "audio.parquet",
        {
            "audio": [c.media for c in cases],
            "caption": [c.caption for c in cases],
            "start": pa.array([c.clip[0] for c in cases], pa.float64()),
            "end": pa.array([c.clip[1] for c in cases], pa.float64()),
        },
    )
    return run_corpus(
        "audio files",
        cases,
        src,
        root / "store",
        audio_column="audio",
        clip_start_column="start",
        clip_end_column="end",
        sample_rate=RATE,
        audio_seconds=SECONDS,
        chunk_mb=0.03,
        workers=0,
    )


# --- seeds and mutations for fuzzing ------------------------------------------------------------------------


def image_seeds() -> dict[str, bytes]:
    """Small, valid images in every format and mode family the decoder meets."""
    rgb = Image.fromarray(pixels(12, 10, 1))
    seeds = {
        fmt: encode(rgb, fmt)
        for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "TGA", "PPM", "QOI", "PCX", "SGI", "DDS", "ICO")
    }
    seeds["GIF"] = encode(rgb.convert("P"), "GIF")
    seeds["JPEG progressive"] = encode(rgb, "JPEG", progressive=True)
    seeds["JPEG CMYK"] = encode(rgb.convert("CMYK"), "JPEG")
    seeds["JPEG EXIF 6"] = oriented(6)
    seeds["PNG 16-bit"] = encode(Image.fromarray(np.full((5, 7), 40000, np.uint16)), "PNG")
    seeds["PNG RGBA"] = encode(rgb.convert("RGBA"), "PNG")
    seeds["PNG palette transparency"] = transparent_palette()
    seeds["PNG LA"] = encode(rgb.convert("LA"), "PNG")
    seeds["GIF animated"] = animated("GIF")
    seeds["WEBP animated"] = animated("WEBP")
    seeds["APNG"] = animated("PNG")
    seeds["TIFF float"] = encode(Image.fromarray(np.full((4, 6), 77.5, np.float32)), "TIFF")
    seeds["TIFF I32"] = encode(Image.fromarray(np.full((4, 6), 70000, np.int32)), "TIFF")
    seeds["bomb header"] = png_header(30000, 30000)
    return seeds


def audio_seeds() -> dict[str, bytes]:
    """Small, valid recordings in the formats and sample types libsndfile reads."""
    mono = sine(8000, 0.1, 440.0)
    stereo = np.stack([mono, mono[::-1]], axis=1)
    seeds = {
        "WAV PCM_16": encode_audio(mono, 8000, "WAV", "PCM_16"),
        "WAV PCM_U8": encode_audio(mono, 8000, "WAV", "PCM_U8"),
        "WAV PCM_24 stereo": encode_audio(stereo, 8000, "WAV", "PCM_24"),
        "WAV FLOAT": encode_audio(mono, 8000, "WAV", "FLOAT"),
        "WAV DOUBLE": encode_audio(mono, 8000, "WAV", "DOUBLE"),
        "WAV ULAW": encode_audio(mono, 8000, "WAV", "ULAW"),
        "FLAC": encode_audio(stereo, 8000, "FLAC"),
        "OGG": encode_audio(mono, 8000, "OGG"),
        "MP3": encode_audio(mono, 8000, "MP3"),
        "AIFF": encode_audio(mono, 8000, "AIFF"),
        "AU": encode_audio(mono, 8000, "AU"),
    }
    return seeds


EDITS = ("flip", "byte", "int16", "int32", "cut", "drop", "insert")
INTERESTING = (0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """Apply byte edits ``(kind, position, value)``; positions wrap around the data."""
    buf = bytearray(data)
    for kind, pos, value in edits:
        n = len(buf)
        at = pos % (n + 1)
        if kind in ("flip", "byte") and n:
            buf[at % n] = buf[at % n] ^ (1 << value % 8) if kind == "flip" else value & 0xFF
        elif kind in ("int16", "int32") and n:
            width = 2 if kind == "int16" else 4
            order = "big" if value & 1 else "little"
            buf[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, order)
        elif kind == "cut":
            del buf[at:]
        elif kind == "drop":
            del buf[at : at + 1 + value % 64]
        elif kind == "insert":
            buf[at:at] = bytes([value & 0xFF]) * (1 + (value >> 8) % 64)
    return bytes(buf)


def random_edits(rng: random.Random) -> list[tuple[str, int, int]]:
    """A few random edits (the report's fuzzing loop)."""
    return [
        (
            rng.choice(EDITS),
            rng.randrange(2**16),
            rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(2**32),
        )
        for _ in range(rng.randint(1, 4))
    ]


# --- output contracts -------------------------------------------------------------------------------------

IMAGE_REASONS = frozenset({"empty-file", "decompression-bomb", "undecodable-image", "bad-array"})
AUDIO_REASONS = frozenset(
    {"empty-file", "undecodable-audio", "empty-audio", "clip-out-of-range", "non-finite-audio", "audio-out-of-range"}
)


def image_contract(result: tuple[np.ndarray, tuple[int, int]], size: int) -> str | None:
    """None when a decode_image result has the documented shape and types."""
    out, orig = result
    if not (
        isinstance(out, np.ndarray)
        and out.dtype == np.uint8
        and out.shape == (size, size, 3)
        and out.flags.c_contiguous
    ):
        return f"pixels {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}"
    if not (isinstance(orig, tuple) and len(orig) == 2 and all(type(v) is int and v >= 1 for v in orig)):
        return f"orig_size {orig!r}"
    return None


def audio_contract(result: tuple[np.ndarray, int], options: AudioOptions) -> str | None:
    """None when a decode_audio result has the documented shape, type and padding."""
    out, length = result
    if not (
        isinstance(out, np.ndarray)
        and out.dtype == np.float16
        and out.shape == (options.num_samples,)
        and out.flags.c_contiguous
    ):
        return f"samples {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}"
    if type(length) is not int or not 0 <= length <= options.num_samples:
        return f"true_length {length!r}"
    if not np.isfinite(out).all() or out[length:].any():
        return "non-finite samples or non-zero padding"
    return None


def bounded_seconds() -> float:
    """Longest one fuzzed decode may take (generous: two shared cores)."""
    return 10.0
