"""The command line keeps its promises: a version, clean help with choices and defaults, and exit statuses.

Exit statuses: 0 done, 1 the work failed (verify found damage, a write failed), 2 bad usage (an unknown
flag, an invalid value, a source, column or store that is not there).
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import metadata
from pathlib import Path

import pytest

import tensorstore_ds
from tensorstore_ds.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, build_parser, main
from tensorstore_ds.conversion.options import option_fields
from tests.media import write_image


def help_text(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"tensorstore-ds {tensorstore_ds.__version__}"


def test_top_level_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys=capsys)
    assert "``" not in text and ":func:" not in text  # no reStructuredText from a docstring
    for command in ("convert", "info", "preview", "verify", "pull", "push", "merge", "commit", "demo"):
        assert command in text


def test_convert_help_lists_every_option_with_its_choices_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_text("convert", capsys=capsys).split())  # argparse wraps lines
    spelled = {"progress": "--no-progress", "storage_options": "--storage-option KEY=VALUE"}
    for f in option_fields():
        assert spelled.get(f.name, "--" + f.name.replace("_", "-")) in text, f.name
        for choice in f.metadata["choices"] or ():
            assert choice in text, (f.name, choice)
    assert "{squash,center-crop,pad}" in text and "{soxr,resampy}" in text and "{skip,fail}" in text
    assert "(default: 224)" in text and "(default: skip)" in text


def test_quiet_and_no_progress_are_one_flag_everywhere() -> None:
    parser = build_parser()
    for command, args in {
        "convert": ["src", "out"],
        "verify": ["s"],
        "pull": ["u", "d"],
        "merge": ["o", "a"],
        "commit": ["o"],
    }.items():
        for flag in ("--quiet", "--no-progress"):
            assert parser.parse_args([command, *args, flag]).progress is False, (command, flag)
        assert parser.parse_args([command, *args]).progress is None  # auto: bars only on a terminal


def test_exit_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    for i in range(3):
        write_image(folder / f"{i}.png", 16, 16, seed=i)
    (folder / "metadata.jsonl").write_text(
        "".join(f'{{"file_name": "{i}.png", "caption": "c{i}"}}\n' for i in range(3))
    )
    out = tmp_path / "store"
    flags = ["--image-size", "8", "--workers", "0", "--quiet"]
    assert main(["convert", str(folder), str(out), *flags]) == EXIT_OK
    assert main(["verify", str(out), "--quiet"]) == EXIT_OK
    assert main(["convert", str(folder), str(tmp_path / "o2"), "--image-size", "0", "--quiet"]) == EXIT_USAGE
    assert main(["info", str(tmp_path / "nowhere")]) == EXIT_USAGE
    chunk = next(p for p in (out / "images").rglob("*") if p.is_file())
    chunk.write_bytes(bytes(len(chunk.read_bytes())))  # same size, other bytes: damage only a checksum sees
    assert main(["verify", str(out), "--quiet"]) == EXIT_FAILED
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["convert", "--no-such-flag"])
    assert exited.value.code == EXIT_USAGE


def test_the_installed_command_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tensorstore_ds", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == f"tensorstore-ds {tensorstore_ds.__version__}"


def test_packaging_promises() -> None:
    """What pyproject.toml declares: PEP 621 metadata, a license file, type information, the extras."""
    meta = metadata("tensorstore_ds")
    assert meta["Requires-Python"] == ">=3.11"  # zarr 3 needs 3.11
    assert meta["License-Expression"] == "Apache-2.0"
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"dask", "s3", "gcs", "resume", "test"} <= extras
    requires = " ".join(meta.get_all("Requires-Dist") or [])
    assert "urllib3>=2.2" in requires  # fetch uses HTTPResponse.read1, new in urllib3 2.2
    root = Path(tensorstore_ds.__file__).parent
    assert (root / "py.typed").is_file() and (root.parent / "LICENSE").read_text().lstrip().startswith("Apache")
