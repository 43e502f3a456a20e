"""Hardening figures: hostile inputs, fuzzing, damaged stores, kills, a full disk, a killed worker.

Runs the same corpora, damages and loops as the hardening tests (tests/hostile.py,
tests/test_damaged_stores.py, tests/test_crashes.py) and counts what happened:

- distinct bad inputs, damaged stores and kill points tried;
- crashes that are not tensorstore_ds errors (goal 0);
- samples lost or silently wrong (goal 0);
- leaked resources: shared memory, temporary and work files left behind (goal 0).

Every figure is measured on this run. Usage::

    .venv/bin/python tools/hardening_report.py [--fuzz 300] [--kills 25] [--seed 7] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Tally:
    """One line of the report."""

    name: str
    tried: int = 0
    unit: str = "inputs"
    foreign: list[str] = field(default_factory=list)  # crashes not of our error types
    lost: int = 0
    wrong: int = 0
    leaked: int = 0
    problems: list[str] = field(default_factory=list)  # other broken promises (wrong reason, unnamed file...)
    accepted: int = 0  # damaged stores opened without an error
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --- hostile corpora ------------------------------------------------------------------------------------


def corpora(work: Path) -> Tally:
    from tests.hostile import run_audio_corpus, run_image_file_corpus, run_image_url_corpus
    from tests.httpserver import TestServer

    tally = Tally("hostile inputs through convert()", unit="distinct bad inputs")
    with TestServer() as server:
        results = [run_image_url_corpus(server, work / "urls")]
    results += [run_image_file_corpus(work / "files"), run_audio_corpus(work / "audio")]
    for r in results:
        tally.tried += r.hostile
        tally.foreign += r.foreign
        tally.lost += r.lost
        tally.wrong += r.wrong
        tally.problems += [p for p in r.problems if "lost" not in p]
        tally.notes.append(
            f"{r.name}: {r.rows} rows ({r.hostile} hostile), {r.converted} converted, "
            f"{r.failed} failed as documented; {r.undetectable} corrupt file(s) of formats "
            "without checksums decoded as documented (pixels unknowable)"
        )
    return tally


# --- fuzzing ----------------------------------------------------------------------------------------------


def fuzz(examples: int, seed: int) -> list[Tally]:
    """The fuzz targets of tests/test_fuzz.py, on the report's own seeded mutations, counting every outcome."""
    from tensorstore_ds.conversion.decode.audio import AudioOptions, decode_audio
    from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image
    from tensorstore_ds.errors import DecodeError, StoreFormatError
    from tensorstore_ds.format.manifest import MANIFEST, Manifest
    from tests.hostile import (
        AUDIO_REASONS,
        IMAGE_REASONS,
        audio_contract,
        audio_seeds,
        bounded_seconds,
        image_contract,
        image_seeds,
        mutate,
        random_edits,
    )
    from tests.test_fuzz import check_manifest, valid_doc

    rng = random.Random(seed)
    image_options, audio_options = ImageOptions(24, max_pixels=2**22), AudioOptions(16000, 0.25)
    images, audios = image_seeds(), audio_seeds()
    manifest_text = json.dumps(valid_doc()).encode()

    def image(data: bytes) -> str | None:
        try:
            return image_contract(decode_image(data, image_options), 24)
        except DecodeError as exc:
            return None if exc.reason in IMAGE_REASONS else f"undocumented reason {exc.reason}"

    def audio(data: bytes) -> str | None:
        clip = rng.choice([None, (None, None), (0.01, 0.05), (5.0, None), (-1.0, 1.0), (0.02, float("nan"))])
        try:
            return audio_contract(decode_audio(data, audio_options, clip), audio_options)
        except DecodeError as exc:
            return None if exc.reason in AUDIO_REASONS else f"undocumented reason {exc.reason}"

    def manifest(data: bytes) -> str | None:
        with tempfile.TemporaryDirectory() as root:
            (Path(root) / MANIFEST).write_bytes(data)
            try:
                check_manifest(Manifest.read(Path(root)))
            except StoreFormatError:
                return None
            except AssertionError as exc:
                return f"accepted a manifest it should refuse: {exc}"
        return None

    targets: list[tuple[str, Callable[[bytes], str | None], Callable[[], bytes]]] = [
        (
            "fuzz: image decoder",
            image,
            lambda: (
                mutate(images[rng.choice(sorted(images))], random_edits(rng))
                if rng.random() < 0.85
                else rng.randbytes(rng.randrange(0, 512))
            ),
        ),
        (
            "fuzz: audio decoder",
            audio,
            lambda: (
                mutate(audios[rng.choice(sorted(audios))], random_edits(rng))
                if rng.random() < 0.85
                else rng.randbytes(rng.randrange(0, 512))
            ),
        ),
        (
            "fuzz: manifest reader",
            manifest,
            lambda: (
                mutate(manifest_text, random_edits(rng)) if rng.random() < 0.9 else rng.randbytes(rng.randrange(0, 256))
            ),
        ),
    ]
    tallies = []
    for name, target, make in targets:
        tally = Tally(name, unit="distinct inputs")
        seen: set[str] = set()
        start = time.monotonic()
        slowest = 0.0
        outcomes: Counter[str] = Counter()
        for _ in range(examples):
            data = make()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            began = time.monotonic()
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    problem = target(data)
            except Exception as exc:
                tally.foreign.append(f"{type(exc).__name__}: {str(exc)[:120]} (input sha256 {digest[:12]})")
                outcomes["foreign"] += 1
                continue
            took = time.monotonic() - began
            slowest = max(slowest, took)
            if took > bounded_seconds():
                tally.problems.append(f"took {took:.1f} s (input sha256 {digest[:12]})")
            if problem:
                tally.wrong += 1
                tally.problems.append(f"{problem} (input sha256 {digest[:12]})")
            outcomes["bad output" if problem else "ok or our error"] += 1
        tally.tried = len(seen)
        tally.seconds = time.monotonic() - start
        tally.notes.append(f"slowest example {slowest * 1000:.0f} ms; {dict(outcomes)}")
        tallies.append(tally)
    return tallies


# --- damaged stores ---------------------------------------------------------------------------------------


def damaged_stores(work: Path) -> Tally:
    from tests.store.test_damaged_stores import DAMAGES, check_damage, make_store

    tally = Tally("damaged stores", unit="kinds of damage")
    pristine = make_store(work / "pristine")
    for k, damage in enumerate(DAMAGES):
        problems, foreign = check_damage(pristine, work / f"damage-{k}", damage)
        tally.tried += 1
        tally.foreign += [f"{damage.name}: {f}" for f in foreign]
        tally.problems += [f"{damage.name}: {p}" for p in problems]
        if any("accepted the damaged store" in p or "succeeded" in p for p in problems):
            tally.accepted += 1  # a damaged store read as if it were fine
        if damage.fix and (problems or foreign):
            tally.notes.append(f"needs a fix outside the hardened files: {damage.name} -> {damage.fix}")
    return tally


# --- kills, a full disk, a killed worker --------------------------------------------------------------------


def kills(work: Path, count: int, seed: int) -> Tally:
    from tensorstore_ds.cli import main
    from tests.test_crashes import CLI_ARGS, ROWS, differences, every_row_once, image_source, kill_loop

    tally = Tally("SIGKILL of convert at random moments", unit="kill points")
    src = image_source(work / "src", ROWS)
    with contextlib.redirect_stdout(io.StringIO()):
        main(["convert", src, str(work / "ref"), *CLI_ARGS])
    result = kill_loop(src, work / "killed", CLI_ARGS, dict(os.environ), kills=count, seed=seed)
    tally.tried = result.kills
    tally.problems += result.problems
    for out in result.outs:
        missing = every_row_once(out, ROWS)
        tally.lost += len(missing)
        diff = differences(out, work / "ref")
        tally.wrong += len(diff)
        tally.problems += diff + missing
        tally.leaked += len([p for p in out.rglob("*") if ".tmp" in p.name or p.name == ".convert"])
    tally.notes.append(
        f"{result.kills} kills ({result.cli_kills} of `python -m tensorstore_ds convert`, the rest "
        f"of forked CLI runs) in {result.runs} runs, {len(result.outs)} conversion(s), "
        f"by phase {dict(result.kills_by_phase)}; each final store byte-identical to an "
        f"uninterrupted run: {tally.wrong == 0}"
    )
    return tally


def disk_full(work: Path) -> Tally:
    import pytest

    from tensorstore_ds.conversion.api import convert
    from tensorstore_ds.errors import StoreWriteError
    from tests.test_crashes import FAST, Disk, differences, every_row_once, image_source, on_disk

    tally = Tally("disk full (ENOSPC) during conversion", unit="failure points")
    src = image_source(work / "src", 40)
    measure = Disk(float("inf"))
    with pytest.MonkeyPatch.context() as mp:
        on_disk(mp, measure)
        convert(src, work / "ref", **FAST)
    for k, fraction in enumerate([0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.97, 0.99, 0.999]):
        out = work / f"out-{k}"
        disk = Disk(int(measure.written * fraction))
        tally.tried += 1
        with pytest.MonkeyPatch.context() as mp:
            on_disk(mp, disk)
            try:
                convert(src, out, **FAST)
                tally.problems.append(f"{fraction:.0%}: no error on a full disk")
            except StoreWriteError as exc:
                if "rerun the same convert command" not in str(exc) or exc.errno != 28:
                    tally.problems.append(f"{fraction:.0%}: unclear error {exc}")
            except Exception as exc:
                tally.foreign.append(f"{fraction:.0%}: {type(exc).__name__}: {exc}")
        convert(src, out, **FAST)
        missing, diff = every_row_once(out, 40), differences(out, work / "ref")
        tally.lost += len(missing)
        tally.wrong += len(diff)
        tally.problems += missing + diff
        tally.leaked += len([p for p in out.rglob("*") if ".tmp" in p.name])
    return tally


def worker_kills(work: Path) -> Tally:
    import re

    from tensorstore_ds.conversion.api import convert
    from tests.test_crashes import FAST, KILLED, image_source, kill_a_dataloader_worker

    tally = Tally("DataLoader worker SIGKILLed mid-epoch", unit="kills")
    src = image_source(work / "src", 60, size=12)
    convert(src, work / "store", **{**FAST, "image_size": 12, "chunk_mb": 0.002})
    for mode in ("ram", "paged"):
        result = kill_a_dataloader_worker(work / "store", mode)
        tally.tried += 1
        tally.leaked += len(result.leaked)
        if not re.match("RuntimeError: " + KILLED, result.error):
            (tally.problems if result.error.startswith("RuntimeError") else tally.foreign).append(
                f"{mode}: {result.error or 'no error'}"
            )
        tally.notes.append(
            f"{mode}: {result.error[:70]}...; {result.served} of {result.samples} samples served "
            f"before; {len(result.leaked)} shared-memory files left"
        )
    return tally


# --- the report ----------------------------------------------------------------------------------------------


def open_fds() -> set[str]:
    """This process's open file descriptors, as ``fd -> target``.

    Not the pipe to multiprocessing's resource tracker: one per interpreter, started by the
    first spawned process pool and kept for the next ones, by design.
    """
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_fd", None)
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        if tracker is not None and int(fd) == tracker:
            continue
        try:
            found.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass  # the descriptor listdir itself used
    return found


def child_processes() -> set[int]:
    """Live (non-zombie) processes whose parent is this one."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == me and fields[0] != "Z" and not _is_resource_tracker(int(entry)):
                found.add(int(entry))
    return found


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"multiprocessing.resource_tracker" in f.read()
    except OSError:
        return False


@contextlib.contextmanager
def quiet() -> Any:
    """Silence stderr, including what C libraries (libmpg123, libsndfile) write to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def run(args: argparse.Namespace) -> list[Tally]:
    tallies: list[Tally] = []
    with tempfile.TemporaryDirectory(prefix="tsds-hardening-") as tmp:
        work = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(work / "hf-cache")
        os.environ["HF_HUB_OFFLINE"] = "1"
        import datasets

        datasets.config.HF_DATASETS_CACHE = work / "hf-cache"
        datasets.disable_progress_bars()
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("corpora", lambda: corpora(work / "corpora")),
            ("fuzz", lambda: fuzz(args.fuzz, args.seed)),
            ("damage", lambda: damaged_stores(work / "damage")),
            ("disk", lambda: disk_full(work / "disk")),
            ("workers", lambda: worker_kills(work / "workers")),
            ("kills", lambda: kills(work / "kills", args.kills, args.seed)),
        ]
        for name, step in steps:
            start = time.monotonic()
            fds, children = open_fds(), child_processes()
            with quiet():
                out = step()
            gc.collect()
            leaked_fds = sorted(open_fds() - fds)
            stray = sorted(child_processes() - children)
            for tally in out if isinstance(out, list) else [out]:
                tally.seconds = tally.seconds or time.monotonic() - start
                tallies.append(tally)
            tally = tallies[-1]
            tally.leaked += len(leaked_fds) + len(stray)
            if leaked_fds or stray:
                tally.notes.append(f"left open: file descriptors {leaked_fds}, child processes {stray}")
            print(f"  ... {name} done in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return tallies


def report(tallies: list[Tally]) -> str:
    lines = ["tensorstore_ds hardening report", ""]
    head = f"{'':44s} {'tried':>7s} {'foreign':>8s} {'lost':>5s} {'wrong':>6s} {'leaked':>7s} {'broken':>7s}"
    lines += [head, "-" * len(head)]
    for t in tallies:
        lines.append(
            f"{t.name:44s} {t.tried:7d} {len(t.foreign):8d} {t.lost:5d} {t.wrong:6d} {t.leaked:7d} "
            f"{len(t.problems):7d}   ({t.unit}, {t.seconds:.1f} s)"
        )
    totals = {
        "distinct bad inputs tried (corpora + fuzz)": sum(
            t.tried for t in tallies if "fuzz" in t.name or t.name.startswith("hostile")
        ),
        "damaged stores tried": sum(t.tried for t in tallies if t.name == "damaged stores"),
        "kill points tried (convert SIGKILL, ENOSPC, worker SIGKILL)": sum(
            t.tried for t in tallies if t.unit in ("kill points", "failure points", "kills")
        ),
        "crashes not of our own error types (goal 0)": sum(len(t.foreign) for t in tallies),
        "samples lost or silently wrong (goal 0)": sum(t.lost + t.wrong for t in tallies),
        "damaged stores opened or read without an error (goal 0)": sum(t.accepted for t in tallies),
        "leaked resources (goal 0)": sum(t.leaked for t in tallies),
        "other broken promises (goal 0)": sum(len(t.problems) for t in tallies),
    }
    lines += [""] + [f"{k:62s} {v:6d}" for k, v in totals.items()] + [""]
    for t in tallies:
        for note in t.notes:
            lines.append(f"- {t.name}: {note}")
        for item in (t.foreign + t.problems)[:8]:
            lines.append(f"  ! {t.name}: {item[:300]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz", type=int, default=2000, help="fuzz examples per target")
    parser.add_argument("--kills", type=int, default=25, help="SIGKILLs of a running conversion")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer fuzz examples and kills")
    args = parser.parse_args()
    if args.quick:
        args.fuzz, args.kills = 60, 8
    tallies = run(args)
    print(report(tallies))
    bad = sum(len(t.foreign) + t.lost + t.wrong + t.leaked + t.accepted for t in tallies)
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
