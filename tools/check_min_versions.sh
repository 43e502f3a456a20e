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
#   NUMPY=1.26.4 CORE=latest TORCH=2.13.0+cpu tools/check_min_versions.sh
#                                               # a NumPy 1.x user (see NUMPY)
#   NUMPY=2.0 TORCH=2.13.0+cpu tools/check_min_versions.sh  # the minimums with the first NumPy 2
#   KEEP=1 ...                                  # keep the virtualenv for a look afterwards
#
# Environment:
#   PYTHON  interpreter for the virtualenv (default python3.11, the requires-python floor)
#   TORCH   torch version to pin instead of the declared minimum. torch's PyPI wheels for Linux
#           pull in several GB of CUDA libraries, so a CPU-only machine may prefer a torch that
#           it already has as a local wheel (pip's find-links); torch is then checked at that
#           version only, and every other dependency at its minimum.
#   NUMPY   numpy version to pin instead of the declared minimum (kept under CORE=latest too).
#           The default run already checks a NumPy 1.x (the floor, 1.25); a user whose torch 2.2
#           (built for NumPy 1.x) keeps NumPy 1.x gets everything else at its newest release
#           that the resolver admits, which NUMPY=1.26.4 CORE=latest checks (pyarrow 26 and later
#           refuse NumPy 1.x at import while declaring no numpy requirement: hence pyarrow<26).
#           NUMPY=2.0 checks the other minimums against the first NumPy 2.
#   EXTRAS  extras whose dependencies are pinned and installed as well (default: none).
#   CORE    "latest" leaves the package's own dependencies to the resolver and pins only the
#           EXTRAS' minimums (and TORCH, NUMPY). The extras' floors cannot be checked together with the
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

# Every `name>=X` requirement (package and EXTRAS) becomes `name==X`; TORCH and NUMPY override those
# pins; a requirement that is only a cap (`name<Y`) is kept as it is.
"$venv/bin/python" - "$root/pyproject.toml" "${EXTRAS:-}" "${TORCH:-}" "${CORE:-}" "${NUMPY:-}" >"$constraints" <<'EOF'
import re
import sys
import tomllib

pyproject, extras, torch = sys.argv[1], [e for e in sys.argv[2].split(",") if e], sys.argv[3]
core_latest = sys.argv[4] == "latest"
pins = {name: version for name, version in (("torch", torch), ("numpy", sys.argv[5])) if version}
project = tomllib.load(open(pyproject, "rb"))["project"]
requirements = [] if core_latest else list(project["dependencies"])
if core_latest:
    print("".join(f"{name}=={version}\n" for name, version in pins.items()), end="")
for extra in extras:
    requirements += project["optional-dependencies"][extra]
for requirement in requirements:
    if re.fullmatch(r"\s*[A-Za-z0-9_.-]+\s*<[^>]*", requirement):
        print(requirement.strip())  # only a cap (a transitive dependency's, e.g. pyarrow<26): kept as it is
        continue
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+).*", requirement)
    if not match:
        sys.exit(f"no lower bound to check in {requirement!r}: declare one as name>=X")
    name, minimum = match.group(1), match.group(3)
    print(f"{name}=={pins.get(name, minimum)}")
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
names="$({ sed -E 's/[<>=!~ ;[].*//' "$constraints"
    "$venv/bin/python" -c 'import re, sys, tomllib
for r in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]: print(re.match(r"[\w.-]+", r)[0])' \
        "$root/pyproject.toml"; } | sort -u | paste -sd'|')"
"$venv/bin/python" -m pip list --format=freeze | grep -i -E "^($names)==" | sed 's/^/  /'

# Run from outside the source tree so the installed wheel is what gets imported.
(cd "$venv" && "$venv/bin/python" "$here/min_versions_smoke.py")
echo "check_min_versions: done in $(($(date +%s) - start)) s"
