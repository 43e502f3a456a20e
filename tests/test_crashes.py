"""Crashes and concurrency: SIGKILL at random moments, a full disk, two converters, readers
during a conversion, many readers at once, a DataLoader worker killed mid-epoch.

The kill loop (``kill_loop``) is shared with tools/hardening_report.py. It kills
real ``python -m tensorstore_ds convert`` processes first, then forks of a
"zygote" process that has already imported everything and runs the same
``tensorstore_ds.cli.main``: a CLI process spends about two seconds importing
``datasets`` before it does anything a kill could damage, which would leave room
for only a handful of kills in the time budget.
"""

from __future__ import annotations

import builtins
import errno
import gc
import hashlib
import json
import multiprocessing
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tensorstore_ds import TensorStoreDataset, open_store, verify
from tensorstore_ds.cli import main
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.errors import StoreIncompleteError, StoreLockedError, StoreWriteError
from tensorstore_ds.format.manifest import MANIFEST, WORK_DIR
from tensorstore_ds.serve.ring import WATCH_EVERY
from tensorstore_ds.serve.shm import PREFIX
from tests.httpserver import Response, TestServer
from tests.media import image_bytes, write_image
from tests.stores import store_bytes

ROOT = Path(__file__).resolve().parents[1]


# --- comparing stores ------------------------------------------------------------------------------------------


def differences(a: Path, b: Path) -> list[str]:
    fa, fb = store_bytes(a), store_bytes(b)
    out = [f"only in {a.name}: {n}" for n in sorted(set(fa) - set(fb))]
    out += [f"only in {b.name}: {n}" for n in sorted(set(fb) - set(fa))]
    return out + [f"{n} differs" for n in sorted(set(fa) & set(fb)) if fa[n] != fb[n]]


def every_row_once(out: Path, rows: int) -> list[str]:
    """Each source row is converted or listed as failed, exactly once."""
    store = open_store(out)
    seen = np.asarray(store.array("source_row")).tolist() + [f["row"] for f in store.failures()]
    store.close()
    counts = Counter(seen)
    problems = [f"row {r} is missing" for r in range(rows) if r not in counts]
    return problems + [f"row {r} appears {n} times" for r, n in counts.items() if n != 1 or not 0 <= r < rows]


def image_source(root: Path, n: int, size: int = 8) -> str:
    """``n`` rows of small PNGs; every 23rd file is missing and every 31st caption empty (failures)."""
    names = []
    for i in range(n):
        if i % 23 == 5:
            names.append(f"img/missing-{i}.png")
            continue
        write_image(root / "img" / f"{i}.png", size, size, seed=i)
        names.append(f"img/{i}.png")
    captions = [f"sample {i} é" if i % 31 != 7 else "" for i in range(n)]
    path = root / "src.parquet"
    pq.write_table(pa.table({"image": names, "caption": captions}), path)
    return str(path)


# --- SIGKILL at random moments ------------------------------------------------------------------------------

ZYGOTE = r"""
import json, os, sys
import datasets, pyarrow.parquet, PIL.Image, tqdm  # noqa: F401 - imported once, before any fork
from tensorstore_ds.cli import main
import tensorstore_ds.conversion.api  # noqa: F401
print("ready", flush=True)
for line in sys.stdin:
    args = json.loads(line)
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        code = 1
        try:
            code = main(args)
        finally:
            os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps([os.WIFSIGNALED(status) and os.WTERMSIG(status), os.WIFEXITED(status) and os.WEXITSTATUS(status)]),
          flush=True)
"""


class Zygote:
    """A process that has imported the CLI and forks a converter per request."""

    def __init__(self, env: dict[str, str]) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        if self.readline(120) != "ready":
            self.stderr.seek(0)
            raise AssertionError(f"the zygote did not start: {self.stderr.read().decode()[-2000:]}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("")  # end of output

    def readline(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the zygote did not answer") from None

    def start(self, args: list[str]) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        return int(self.readline(30))

    def wait(self) -> tuple[int, int]:
        """(signal, exit status) of the last child."""
        sig, code = json.loads(self.readline(120))
        return int(sig), int(code)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        self.stderr.close()


def committed(out: Path) -> int:
    try:
        return int(json.loads((out / WORK_DIR / "state.json").read_bytes())["chunks"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def phase(out: Path, committed_before: int | None = None) -> str:
    """Where a conversion is: starting (nothing committed by this run yet), converting, finishing, finished.

    A store whose manifest is written but whose work directory is still there
    was killed while finishing: it is complete and readable, and rerunning the
    command removes the work directory (as the kill loop then does).
    """
    if (out / MANIFEST).exists():
        return "finishing" if (out / WORK_DIR).exists() else "finished"
    if (out / "source_row").exists() or (out / "failures.jsonl").exists() or (out / ".failures.jsonl.tmp").exists():
        return "finishing"
    before = 0 if committed_before is None else committed_before
    return "converting" if committed(out) > before else "starting"


@dataclass
class KillResult:
    """What a kill loop did: kills by phase, the stores it finished, what went wrong."""

    kills: int = 0
    kills_by_phase: Counter[str] = field(default_factory=Counter)
    cli_kills: int = 0
    runs: int = 0
    outs: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def kill_loop(
    src: str,
    out_root: Path,
    args: list[str],
    env: dict[str, str],
    kills: int,
    seed: int,
    cli_kills: int = 2,
    run_seconds: float = 0.6,
) -> KillResult:
    """Convert ``src``, SIGKILLing the converter at random moments until ``kills`` kills, then finish.

    A conversion that finishes despite the kills ends a round; the next round
    converts afresh into another directory (``result.outs`` lists them all).
    """
    rng = random.Random(seed)
    result = KillResult()
    start = time.monotonic()

    def pick_moment(out: Path, alive: Callable[[], bool], how: str | None = None) -> None:
        """Wait for a random moment: a time, a number of commits, or the finishing phase."""
        how = how or rng.choice(["early", "time", "time", "commits", "commits", "finishing"])
        if how in ("early", "time"):
            end = time.monotonic() + rng.uniform(0, 0.05 if how == "early" else run_seconds)
            while alive() and time.monotonic() < end:
                time.sleep(0.001)
            return
        target, deadline = committed(out) + rng.randint(1, 4), time.monotonic() + 30
        while alive() and time.monotonic() < deadline:
            if (committed(out) >= target) if how == "commits" else (phase(out) == "finishing"):
                break
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.01))

    def record(where: str, signalled: bool, failed: str | None, cli: bool = False) -> None:
        result.runs += 1
        if signalled:
            result.kills += 1
            result.cli_kills += cli
            result.kills_by_phase[where] += 1
        elif failed:
            result.problems.append(failed)

    out = out_root / "round-0"
    result.outs.append(out)
    for _ in range(cli_kills):  # real CLI processes, killed once they have started converting
        proc = subprocess.Popen(
            [sys.executable, "-m", "tensorstore_ds", "convert", src, str(out), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        while proc.poll() is None and not (out / WORK_DIR / "state.json").exists():
            time.sleep(0.002)
        before = committed(out)
        pick_moment(out, lambda: proc.poll() is None, "commits")  # surely before the end
        where = phase(out, before)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        record(
            where,
            proc.returncode == -signal.SIGKILL,
            f"the CLI failed: {err.decode()[-500:]}" if proc.returncode not in (0, -signal.SIGKILL) else None,
            True,
        )

    zygote = Zygote(env)
    try:
        while result.kills < kills and result.runs < 4 * kills:
            if phase(out) == "finished":
                out = out_root / f"round-{len(result.outs)}"
                result.outs.append(out)
            before = committed(out)
            pid = zygote.start(["convert", src, str(out), *args])
            pick_moment(out, lambda: _alive(pid))
            where = phase(out, before)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            sig, code = zygote.wait()
            record(where, sig == signal.SIGKILL, f"a converter exited with status {code}" if code else None)
        if phase(out) != "finished":
            zygote.start(["convert", src, str(out), *args])  # the last run, never killed
            sig, code = zygote.wait()
            result.runs += 1
            if sig or code:
                result.problems.append(f"the final run ended with signal {sig}, status {code}")
    finally:
        zygote.close()
    result.seconds = time.monotonic() - start
    return result


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


CLI_ARGS = ["--image-size", "8", "--chunk-mb", "0.0008", "--workers", "0", "--no-progress"]  # 4 rows a chunk
ROWS = 240


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    src = image_source(tmp_path / "src", ROWS)
    assert main(["convert", src, str(tmp_path / "ref"), *CLI_ARGS]) == 0
    result = kill_loop(src, tmp_path / "killed", CLI_ARGS, dict(os.environ), kills=20, seed=20240601)
    assert not result.problems, result.problems
    assert result.kills >= 20 and result.cli_kills == 2, result
    assert set(result.kills_by_phase) >= {"starting", "converting", "finishing"}, result.kills_by_phase
    for out in result.outs:
        assert differences(out, tmp_path / "ref") == []
        assert every_row_once(out, ROWS) == []
        assert verify(out, progress=False).ok
        assert not (out / WORK_DIR).exists()


# --- a full disk -------------------------------------------------------------------------------------------


class Disk:
    """A disk with ``budget`` bytes left: writes through ``open`` beyond it fail with ENOSPC, part-written."""

    def __init__(self, budget: float) -> None:
        self.left = budget
        self.written = 0
        self.full_at: str | None = None

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = builtins.open(file, mode, *args, **kwargs)
        return _Limited(f, self, os.fspath(file)) if any(c in mode for c in "wax+") else f


class _Limited:
    def __init__(self, f: Any, disk: Disk, name: str) -> None:
        self._f, self._disk, self._name = f, disk, name

    def write(self, data: Any) -> int:
        size = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if size > self._disk.left:
            fits = int(max(self._disk.left, 0))
            if fits:
                self._f.write(data[:fits] if isinstance(data, str) else memoryview(data).cast("B")[:fits])
            self._disk.left = 0
            self._disk.full_at = self._disk.full_at or self._name
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)
        self._disk.left -= size
        self._disk.written += size
        return self._f.write(data)

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def on_disk(monkeypatch: pytest.MonkeyPatch, disk: Disk) -> None:
    import tensorstore_ds.conversion.writer
    import tensorstore_ds.format.layout

    for module in (tensorstore_ds.format.layout, tensorstore_ds.conversion.writer):
        monkeypatch.setattr(module, "open", disk.open, raising=False)


FAST: dict[str, Any] = {"image_size": 8, "chunk_mb": 0.0004, "workers": 0, "progress": False}  # 2 rows a chunk


def test_disk_full_is_a_clear_error_and_the_rerun_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = image_source(tmp_path / "src", 40)
    measure = Disk(float("inf"))
    with monkeypatch.context() as mp:
        on_disk(mp, measure)
        convert(src, tmp_path / "ref", **FAST)
    total = measure.written
    assert total > 10_000
    for fraction in (0.0, 0.02, 0.3, 0.7, 0.97, 0.999):
        out = tmp_path / f"out-{fraction}"
        disk = Disk(int(total * fraction))
        with monkeypatch.context() as mp:
            on_disk(mp, disk)
            with pytest.raises(StoreWriteError) as info:
                convert(src, out, **FAST)
        error = info.value
        assert error.errno == errno.ENOSPC and isinstance(error, OSError)
        assert str(out) in str(error) and "No space left on device" in str(error)
        assert "rerun the same convert command" in str(error) and disk.full_at in str(error)
        with pytest.raises(StoreIncompleteError):
            open_store(out)
        convert(src, out, **FAST)  # space freed
        assert differences(out, tmp_path / "ref") == [], fraction
        assert every_row_once(out, 40) == []
    # The command line says it in one line, with exit status 2.
    out = tmp_path / "cli"
    with monkeypatch.context() as mp:
        on_disk(mp, Disk(int(total * 0.5)))
        status = main(
            ["convert", src, str(out), "--image-size", "8", "--chunk-mb", "0.0004", "--workers", "0", "--no-progress"]
        )
    last = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]
    assert status == 1 and last.startswith(f"tensorstore-ds convert: error: writing store {out} failed: No space")
    assert (
        main(["convert", src, str(out), "--image-size", "8", "--chunk-mb", "0.0004", "--workers", "0", "--no-progress"])
        == 0
    )
    assert differences(out, tmp_path / "ref") == []


# --- two converters; readers during a conversion ---------------------------------------------------------


def lock_holder(out: Path) -> int:
    try:
        text = (out / WORK_DIR / "lock").read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def test_second_converter_is_locked_out_and_readers_wait(tmp_path: Path, http_server: TestServer) -> None:
    n = 12
    bodies = {i: image_bytes(10, 12, seed=i) for i in range(n)}
    gate = threading.Event()

    def gated(i: int) -> Callable[[Any], Response]:
        def handler(request: Any) -> Response:
            gate.wait(60)  # the first converter blocks here, holding the store's lock
            return Response(200, bodies[i], {"Content-Type": "image/png"})

        return handler

    for i in range(n):
        http_server.route(f"/{i}.png", gated(i))
    src = tmp_path / "urls.parquet"
    pq.write_table(
        pa.table(
            {"image_url": [http_server.url_for(f"/{i}.png") for i in range(n)], "caption": [f"c{i}" for i in range(n)]}
        ),
        src,
    )
    out = tmp_path / "out"
    args = [
        "convert",
        str(src),
        str(out),
        "--image-size",
        "8",
        "--chunk-mb",
        "0.0004",
        "--workers",
        "0",
        "--fetch-concurrency",
        "2",
        "--retries",
        "0",
        "--no-progress",
    ]
    env = dict(os.environ)
    first = subprocess.Popen(
        [sys.executable, "-m", "tensorstore_ds", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while lock_holder(out) != first.pid or http_server.hits["/0.png"] == 0:
            assert first.poll() is None and time.monotonic() < deadline, "the first converter did not start"
            time.sleep(0.01)
        # Readers are refused while the conversion runs.
        for read in (
            lambda: open_store(out),
            lambda: verify(out, progress=False),
            lambda: TensorStoreDataset(out, mode="paged", progress=False),
            lambda: TensorStoreDataset(out, mode="ram", memory_budget="1GiB", progress=False),
        ):
            with pytest.raises(StoreIncompleteError, match="unfinished"):
                read()
        # A second converter is refused, as a process and in-process, naming the holder.
        second = subprocess.run(
            [sys.executable, "-m", "tensorstore_ds", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1, second.stderr
        assert f"being converted by process {first.pid}" in second.stderr
        with pytest.raises(StoreLockedError, match=f"process {first.pid}"):
            convert(str(src), out, image_size=8, chunk_mb=0.0004, workers=0, progress=False)
    finally:
        first.send_signal(signal.SIGKILL)  # the holder crashes
        first.communicate(timeout=60)
    gate.set()
    with pytest.raises(StoreIncompleteError):
        open_store(out)
    # The crashed holder's lock went with its process: the rerun takes over and finishes.
    done = subprocess.run(
        [sys.executable, "-m", "tensorstore_ds", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    convert(
        str(src),
        tmp_path / "ref",
        image_size=8,
        chunk_mb=0.0004,
        workers=0,
        progress=False,
        fetch_concurrency=2,
        retries=0,
    )
    assert differences(out, tmp_path / "ref") == []
    assert len(open_store(out)) == n and verify(out, progress=False).ok


# --- many readers at once ------------------------------------------------------------------------------------


def read_everything(path: str, mode: str, barrier: Any, results: Any) -> None:
    """A reader process: open the dataset when all readers are ready, digest every sample."""
    try:
        from torch.utils.data import DataLoader

        from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate

        barrier.wait(120)
        ds = TensorStoreDataset(
            path,
            fields=["image", "caption", "source_row"],
            mode=mode,
            memory_budget="1GiB" if mode == "ram" else "4KiB",
            progress=False,
        )
        loader = DataLoader(ds, batch_size=5, sampler=ChunkShuffleSampler(ds, seed=os.getpid()), collate_fn=collate)
        rows: dict[int, tuple[bytes, str]] = {}
        for batch in loader:
            images = batch["image"].permute(0, 2, 3, 1).numpy()
            for k, i in enumerate(batch["index"].tolist()):
                rows[i] = (images[k].tobytes(), batch["caption"][k])
        digest = hashlib.sha256()
        for i in sorted(rows):
            digest.update(rows[i][0] + rows[i][1].encode())
        results.put((mode, os.getpid(), len(rows), digest.hexdigest(), ds.mode))
    except BaseException as exc:
        results.put((mode, os.getpid(), -1, f"{type(exc).__name__}: {exc}", ""))


def test_many_concurrent_readers(tmp_path: Path) -> None:
    src = image_source(tmp_path / "src", 60, size=12)
    convert(src, tmp_path / "store", **{**FAST, "image_size": 12, "chunk_mb": 0.002})
    store = open_store(tmp_path / "store")
    images, captions = np.asarray(store.array("images")), store.captions.take(range(len(store)))
    digest = hashlib.sha256()
    for i in range(len(store)):
        digest.update(images[i].tobytes() + captions[i].encode())
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    modes = ["paged", "ram", "paged", "ram"]
    procs = [
        context.Process(target=read_everything, args=(str(tmp_path / "store"), m, barrier, results)) for m in modes
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(60)
    assert sorted(g[0] for g in got) == sorted(modes)
    for mode, pid, count, hexdigest, chosen in got:
        assert (count, hexdigest, chosen) == (len(store), digest.hexdigest(), mode), (mode, pid, hexdigest)
        assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"{PREFIX}{pid}-")]
    store.close()


# --- a DataLoader worker killed mid-epoch ------------------------------------------------------------------------


def shm_files(pids: set[int]) -> set[str]:
    """Shared-memory files of these processes: ours (tensorstore_ds-PID-...) and torch's (torch_PID_...)."""
    found = set()
    for name in os.listdir("/dev/shm"):
        for pid in pids:
            if name.startswith((f"{PREFIX}{pid}-", f"torch_{pid}_")):
                found.add(name)
    return found


def held_files(pids: set[int]) -> set[str]:
    """Files of these processes' shared memory that this process still holds open (deleted or not)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        name = os.path.basename(target.removesuffix(" (deleted)"))
        if any(name.startswith((f"{PREFIX}{pid}-", f"torch_{pid}_")) for pid in pids):
            held.add(target)
    return held


class DyingDataset(TensorStoreDataset):
    """Worker 0 is SIGKILLed while it gathers its second batch.

    The kill comes from inside the dataset's own code, so the worker never dies
    holding one of the DataLoader's multiprocessing locks (a kill from outside
    can land inside ``Event.is_set()`` and deadlock the main process and the
    other worker), nor after queueing a batch (then the main process fails to
    receive the batch's shared-memory descriptor and torch raises
    ConnectionResetError, for any dataset).
    """

    batches = 0

    def __getitems__(self, indices: Any) -> Any:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        if info is not None and info.id == 0:
            DyingDataset.batches += 1  # per process: each forked worker counts its own
            if DyingDataset.batches == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitems__(indices)


KILLED = r"DataLoader worker \(pid(\(s\))? [\d, ]+\) (exited unexpectedly|is killed by signal)"


@dataclass
class WorkerKill:
    """What killing a DataLoader worker mid-epoch did."""

    error: str = ""  # the exception the loop raised, as "Type: message"
    served: int = 0
    samples: int = 0
    leaked: set[str] = field(default_factory=set)  # shared-memory files of ours or the workers' left behind
    held: set[str] = field(default_factory=set)  # the workers' files this process still holds open, after a while


def kill_a_dataloader_worker(store: Path, mode: str) -> WorkerKill:
    """Iterate a 2-worker DataLoader whose worker 0 is SIGKILLed mid-epoch, clean up, look for leftovers."""
    from torch.utils.data import DataLoader

    from tensorstore_ds import ChunkShuffleSampler, collate

    result = WorkerKill()
    before = set(os.listdir("/dev/shm"))
    ds = DyingDataset(store, mode=mode, memory_budget="1GiB" if mode == "ram" else "8KiB", progress=False)
    result.samples = len(ds)
    loader = DataLoader(
        ds,
        batch_size=4,
        sampler=ChunkShuffleSampler(ds, seed=1),
        collate_fn=collate,
        num_workers=2,
        multiprocessing_context="fork",
        prefetch_factor=1,
    )
    pids = {os.getpid()}
    iterator = iter(loader)
    torch_handler = signal.getsignal(signal.SIGCHLD)  # torch's: it raises when a worker dies
    try:
        try:
            pids.update(w.pid for w in iterator._workers)  # type: ignore[attr-defined]
            for batch in iterator:
                result.served += len(batch["index"])
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        # Torch's SIGCHLD handler would raise again, anywhere, while the other worker is shut down.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        iterator._shutdown_workers()  # type: ignore[attr-defined]
    finally:
        signal.signal(signal.SIGCHLD, torch_handler)
    batch = None  # the last batch served views a worker's ring slot: a user drops it too
    del iterator, loader, ds, batch
    gc.collect()
    result.leaked = shm_files(pids) - before
    workers = pids - {os.getpid()}
    deadline = time.monotonic() + 5 * WATCH_EVERY  # exited workers' ring mappings are dropped within about 1 s
    while (held := held_files(workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    result.held = held
    return result


@pytest.mark.parametrize("mode", ["ram", "paged"])
def test_killed_dataloader_worker_is_an_error_and_leaks_nothing(tmp_path: Path, mode: str) -> None:
    src = image_source(tmp_path / "src", 60, size=12)
    convert(src, tmp_path / "store", **{**FAST, "image_size": 12, "chunk_mb": 0.002})
    result = kill_a_dataloader_worker(tmp_path / "store", mode)
    assert re.match("RuntimeError: " + KILLED, result.error), result.error
    assert 4 <= result.served < result.samples
    assert result.leaked == set() and result.held == set()
