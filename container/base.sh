#!/usr/bin/env bash
# Base images from Debian's packages, for a machine that reaches Debian's archive but no
# container registry (no python:3.11-slim, no redis:7 to pull):
#   BASE_TAG   Debian bookworm minbase + python3 (3.11) + python3-venv + ca-certificates,
#              the stand-in for python:3.11-slim (the Dockerfile's ARG BASE)
#   REDIS_TAG  Debian bookworm minbase + redis-server (7.0), /data owned by user redis, run as
#              redis: the stand-in for redis:7 (compose.yaml's REDIS_IMAGE)
# debootstrap into a directory, apt-get upgrade and install in a chroot, `docker import`.
# Cached: both images carry a label with the hash of this script, and nothing is rebuilt
# while both exist with that label (CONTAINER_REBUILD_BASE=1 forces it). Downloaded .debs
# are kept in $CONTAINER_CACHE for the next rebuild. Needs root and debootstrap.
# Usage: container/base.sh BASE_TAG REDIS_TAG
set -euo pipefail
BASE_TAG=${1:?base image tag}
REDIS_TAG=${2:?redis image tag}
DOCKER=${DOCKER:-docker}
SUITE=bookworm
CACHE=${CONTAINER_CACHE:-/var/cache/taskstream-container}
RECIPE=$(sha256sum "$0" | cut -c1-16)
LABEL=taskstream.base-recipe

recipe_of() { "$DOCKER" image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }
if [ "${CONTAINER_REBUILD_BASE:-0}" != 1 ] && [ "$(recipe_of "$BASE_TAG")" = "$RECIPE" ] \
    && [ "$(recipe_of "$REDIS_TAG")" = "$RECIPE" ]; then
    echo "-- base images $BASE_TAG and $REDIS_TAG are up to date (recipe $RECIPE)" >&2
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "FAILED: container/base.sh needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "FAILED: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

ROOT=$CACHE/rootfs
REDIS_ROOT=$CACHE/redis-rootfs
mkdir -p "$CACHE/debs" "$CACHE/apt"
rm -rf "$ROOT" "$REDIS_ROOT"
trap 'rm -rf "$ROOT" "$REDIS_ROOT"' EXIT

# The archive this machine's apt uses (first URIs:/deb line), so that a mirror or a proxy set
# up for apt serves debootstrap too; debootstrap's own default where the host names none.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)

start=$SECONDS
echo "-- debootstrap $SUITE (minbase) into $ROOT" >&2
# shellcheck disable=SC2086
debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$SUITE" "$ROOT" $mirror >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; echo "FAILED: debootstrap (log: $CACHE/debootstrap.log)" >&2; exit 1; }

# The host's Debian sources (with bookworm-updates and -security) when the host is bookworm
# too, so that the upgrade below brings the security fixes; else debootstrap's sources.list.
if grep -qs '^VERSION_CODENAME=bookworm$' /etc/os-release && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$ROOT/etc/apt/sources.list.d/"
    rm -f "$ROOT/etc/apt/sources.list"
fi
# No service starts inside the chroot (redis-server's postinst would start one on the host).
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"

in_root() {  # in_root DIR COMMAND...: run in the chroot, with the .deb cache carried across
    local dir=$1
    shift
    cp -n "$CACHE"/apt/*.deb "$dir/var/cache/apt/archives/" 2>/dev/null || true
    chroot "$dir" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@" >>"$CACHE/chroot.log" 2>&1 \
        || { tail -n 20 "$CACHE/chroot.log" >&2; echo "FAILED: in $dir: $*" >&2; exit 1; }
    cp -n "$dir"/var/cache/apt/archives/*.deb "$CACHE/apt/" 2>/dev/null || true
}
: >"$CACHE/chroot.log"
in_root "$ROOT" apt-get update -q
in_root "$ROOT" apt-get upgrade -y -q
cp -a "$ROOT" "$REDIS_ROOT"
in_root "$ROOT" apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates
in_root "$REDIS_ROOT" apt-get install -y -q --no-install-recommends redis-server
in_root "$REDIS_ROOT" sh -c 'mkdir -p /data && chown redis:redis /data'

slim() {  # what python:3.11-slim leaves out too: docs, man pages, locales, apt's lists
    rm -f "$1/usr/sbin/policy-rc.d"
    chroot "$1" apt-get clean
    rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/* "$1"/tmp/* \
        "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/usr/share/locale/*
}
slim "$ROOT"
slim "$REDIS_ROOT"

import() {  # import DIR TAG --change...: the directory as a one-layer image
    local dir=$1 tag=$2
    shift 2
    tar --numeric-owner -C "$dir" -c . | "$DOCKER" import \
        --change "LABEL $LABEL=$RECIPE" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' "$@" - "$tag" >/dev/null
}
import "$ROOT" "$BASE_TAG" --change 'CMD ["python3"]'
import "$REDIS_ROOT" "$REDIS_TAG" --change 'WORKDIR /data' --change 'VOLUME /data' \
    --change 'USER redis' --change 'EXPOSE 6379' --change 'CMD ["redis-server"]'
echo "-- built $BASE_TAG and $REDIS_TAG in $((SECONDS - start)) s (recipe $RECIPE)" >&2
