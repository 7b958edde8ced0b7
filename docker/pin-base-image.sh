#!/usr/bin/env bash
# Pin the Dockerfile's base image, in both stages, to the digest Docker Hub serves now for a
# python:3.11.N-slim-bookworm tag: the digest of its multi-platform index, so one line serves
# linux/amd64 and linux/arm64 (see docs/dependencies.md).
#
#   docker/pin-base-image.sh            # the patch release the Dockerfile uses: a tag that was
#                                       # rebuilt (Debian fixes) has a new digest
#   docker/pin-base-image.sh 3.11.18    # move to another patch release
#
# Needs docker with buildx and Docker Hub. Then review the diff, rebuild and run the tests.
# DOCKERFILE=path rewrites another file (the tests use it).
set -euo pipefail
cd "$(dirname "$0")/.."
dockerfile=${DOCKERFILE:-Dockerfile}

from_line='^FROM python:(3\.11\.[0-9]+)-slim-bookworm@sha256:[0-9a-f]{64} AS ([a-z]+)$'
mapfile -t pinned < <(sed -n -E "s/${from_line}/\\1/p" "$dockerfile" | sort -u)
if [[ ${#pinned[@]} -ne 1 ]] || [[ $(grep -c '^FROM ' "$dockerfile") -ne \
        $(grep -c -E "$from_line" "$dockerfile") ]]; then
    echo "every FROM in $dockerfile must read" \
         "FROM python:3.11.N-slim-bookworm@sha256:DIGEST AS STAGE, one N for all" >&2
    exit 1
fi
version=${1:-${pinned[0]}}
if [[ ! $version =~ ^3\.11\.[0-9]+$ ]]; then
    echo "usage: docker/pin-base-image.sh [3.11.N]" >&2
    exit 2
fi
tag="python:${version}-slim-bookworm"

inspected=$(docker buildx imagetools inspect "$tag")
digest=$(awk '$1 == "Digest:" { print $2; exit }' <<< "$inspected")
if [[ ! $digest =~ ^sha256:[0-9a-f]{64}$ ]]; then
    echo "no digest for $tag in:" >&2
    echo "$inspected" >&2
    exit 1
fi
for platform in linux/amd64 linux/arm64; do
    if ! grep -q -E "Platform:[[:space:]]+${platform}" <<< "$inspected"; then
        echo "$tag@$digest has no $platform image: not a multi-platform index?" >&2
        exit 1
    fi
done

note="# Base digest: read from Docker Hub by docker/pin-base-image.sh on $(date -u +%Y-%m-%d)."
rewritten=$(sed -E "s|${from_line}|FROM ${tag}@${digest} AS \\2|" "$dockerfile" |
    awk -v note="$note" '
        /^# Base digest:/ { print note; skipping = 1; next }
        skipping && /^#/ { next }
        { skipping = 0; print }')
printf '%s\n' "$rewritten" > "$dockerfile"
echo "$dockerfile: FROM ${tag}@${digest}"
