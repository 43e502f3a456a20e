#!/usr/bin/env bash
# Check that tensorstore_ds works with the OLDEST versions its pyproject.toml declares.
#
# What it does:
#   1. makes a fresh virtualenv with the oldest Python the package allows (python3.11 by default);
#   2. writes a constraints file pinning every declared dependency (the package's own and the
#      extras named in EXTRAS) to its declared lower bound, `name==minimum`;
#   3. installs the package (a built wheel, not editable) with those constraints, so pip must
#      use exactly the minimum versions or fail to resolve;
#   4. runs tools/min_versions_smoke.py: converts images fetched over HTTP and FLAC/WAV audio,
#      opens the stores, serves batches through a torch DataLoader, reads a store over http://,
#      and decodes an M4A clip when PyAV is installed.
#
# Usage:
#   tools/check_min_versions.sh                 # everything at its declared minimum
#   TORCH=2.13.0 tools/check_min_versions.sh    # torch pinned to another version (see below)
#   EXTRAS=s3,gcs CORE=latest tools/check_min_versions.sh   # the extras' minimums (see CORE)
#   KEEP=1 ...                                  # keep the virtualenv for a look afterwards
#
# Environment:
#   PYTHON  interpreter for the virtualenv (default python3.11, the requires-python floor)
#   TORCH   torch version to pin instead of the declared minimum. torch's PyPI wheels for Linux
#           pull in several GB of CUDA libraries, so a CPU-only machine may prefer a torch that
#           it already has as a local wheel (pip's find-links); torch is then checked at that
#           version only, and every other dependency at its minimum.
#   EXTRAS  extras whose dependencies are pinned and installed as well (default: none).
#   CORE    "latest" leaves the package's own dependencies to the resolver and pins only the
#           EXTRAS' minimums (and TORCH). The extras' floors cannot be checked together with the
#           core's: s3fs/gcsfs pin fsspec to their own release, datasets 2.18 accepts fsspec only
#           up to 2024.2.0, and pip's backtracking then ends in releases that want urllib3 < 2.
#           So check them separately, as
#           EXTRAS=s3,gcs CORE=latest tools/check_min_versions.sh
#   VENV    where to make the virtualenv (default: a new temporary directory).
#
# Takes about 2.5 minutes (142 s) on a shared 2-core machine with a warm pip cache, most of it
# installing; too slow for every CI run, so run it when a dependency bound changes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3.11}"
venv="${VENV:-$(mktemp -d -t tsds-minver-XXXXXX)}"
constraints="$venv/min-constraints.txt"

cleanup() { if [[ -z "${KEEP:-}" ]]; then rm -rf "$venv"; else echo "kept $venv"; fi; }
trap cleanup EXIT

start=$(date +%s)
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip

# Every `name>=X` requirement (package and EXTRAS) becomes `name==X`; TORCH overrides torch's pin.
"$venv/bin/python" - "$root/pyproject.toml" "${EXTRAS:-}" "${TORCH:-}" "${CORE:-}" >"$constraints" <<'EOF'
import re
import sys
import tomllib

pyproject, extras, torch = sys.argv[1], [e for e in sys.argv[2].split(",") if e], sys.argv[3]
core_latest = sys.argv[4] == "latest"
project = tomllib.load(open(pyproject, "rb"))["project"]
requirements = [] if core_latest else list(project["dependencies"])
if core_latest and torch:
    print(f"torch=={torch}")
for extra in extras:
    requirements += project["optional-dependencies"][extra]
for requirement in requirements:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+).*", requirement)
    if not match:
        sys.exit(f"no lower bound to check in {requirement!r}: declare one as name>=X")
    name, minimum = match.group(1), match.group(3)
    print(f"{name}=={torch if name == 'torch' and torch else minimum}")
EOF
echo "constraints (declared minimums):"
sed 's/^/  /' "$constraints"

spec="$root"
if [[ -n "${EXTRAS:-}" ]]; then spec="$root[$EXTRAS]"; fi
# pip's warnings are kept: a declared minimum that PyPI has yanked (withdrawn as broken) fails the check.
"$venv/bin/python" -m pip install --quiet --constraint "$constraints" "$spec" 2>&1 \
    | { grep -v "^WARNING: Location .* is ignored" || true; } | tee "$venv/pip.log"
if grep -q "yanked version" "$venv/pip.log"; then
    echo "check_min_versions: a declared minimum is a yanked release (above); raise that bound" >&2
    exit 1
fi
echo "installed:"
"$venv/bin/python" -m pip list --format=freeze | grep -i -E "^($(cut -d= -f1 "$constraints" | paste -sd'|'))==" | sed 's/^/  /'

# Run from outside the source tree so the installed wheel is what gets imported.
(cd "$venv" && "$venv/bin/python" "$here/min_versions_smoke.py")
echo "check_min_versions: done in $(($(date +%s) - start)) s"
