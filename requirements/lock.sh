#!/usr/bin/env bash
# Regenerate the hash-pinned locks from pyproject.toml (see docs/dependencies.md):
#
#   requirements/service.lock.txt   the runtime dependencies: what the Dockerfile installs
#   requirements/dev.lock.txt       those plus the test and bench extras: what .ci/run installs
#   requirements/build.lock.txt     hatchling and editables, from requirements/build.in: what
#                                   the tests build wheels with (tests/wheelhouse.py)
#
#   requirements/lock.sh                              # after editing pyproject.toml: keeps
#                                                     # every pin it can, adds what is new
#   requirements/lock.sh --upgrade                    # move everything to the newest release
#   requirements/lock.sh --upgrade-package boto3      # move one package (and what it needs)
#
# Arguments are passed on to `uv pip compile` for every lock. Both are universal (one file for
# linux/amd64 and linux/arm64, macOS too) for Python 3.11 and later, and list a sha256 for
# every file PyPI has of each pinned release, so `pip install --require-hashes` installs those
# exact files on any platform. Needs uv (python -m pip install uv) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv > /dev/null; then
    echo "requirements/lock.sh needs uv: python -m pip install uv" >&2
    exit 1
fi

# lock SOURCE OUTPUT DESCRIPTION [uv pip compile arguments...]
lock() {
    local source=$1 out=$2 what=$3
    shift 3
    uv pip compile "$source" --quiet --universal --generate-hashes \
        --python-version 3.11 --no-header --output-file "$out" "$@"
    local body
    body=$(cat "$out")
    {
        echo "# $what"
        echo "# Generated from $source by requirements/lock.sh (uv pip compile --universal"
        echo "# --generate-hashes --python-version 3.11): do not edit by hand. After changing the"
        echo "# dependencies in $source, run requirements/lock.sh (docs/dependencies.md)."
        echo "# Install: python -m pip install --require-hashes -r $out"
        echo "$body"
    } > "$out"
}

lock pyproject.toml requirements/dev.lock.txt \
    "CI and development: the runtime dependencies and the test and bench extras (.ci/run)." \
    --extra test --extra bench "$@"
# The service's pins are the dev lock's, so CI tests the versions the image runs (a test tool
# that caps a runtime dependency caps it in the image too).
lock pyproject.toml requirements/service.lock.txt \
    "The service: runtime dependencies only (the Dockerfile's build stage installs this)." \
    --constraint requirements/dev.lock.txt "$@"
# The build backend under the same pins (packaging and pluggy are pytest's too).
lock requirements/build.in requirements/build.lock.txt \
    "The build backend: what the tests build wheels with, offline (tests/wheelhouse.py)." \
    --constraint requirements/dev.lock.txt "$@"
