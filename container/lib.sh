# shellcheck shell=bash
# Shared by container/image.sh and container/compose-test.sh (sourced, not run): find or
# start a container engine, pick a BuildKit-capable build command and a compose command,
# and choose the base images (the registry's, or ones built here from Debian's packages).
# Everything is plain docker CLI; nothing here is needed by the service itself.

# The images the Dockerfile and compose.yaml name by default (a normal machine pulls them).
REGISTRY_BASE=python:3.11-slim
REGISTRY_REDIS=redis:7
# The stand-ins that container/base.sh builds from Debian's packages (bookworm).
LOCAL_BASE=taskstream-base:bookworm
LOCAL_REDIS=taskstream-redis:bookworm
TASKSTREAM_IMAGE=${TASKSTREAM_IMAGE:-taskstream:latest}
DOCKER=${DOCKER:-docker}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/taskstream-dockerd.log}

say() { printf '%s\n' "-- $*" >&2; }
fail() {
    printf '%s\n' "FAILED: $*" >&2
    exit 1
}

# An engine that answers `docker info`, or, as root on a Debian machine without one, Debian's
# docker.io installed with apt-get and dockerd started in the background (it keeps running
# after this script; its log is $DOCKERD_LOG). A machine with Docker set up is left alone.
ensure_engine() {
    if "$DOCKER" info >/dev/null 2>&1; then return; fi
    [ "$(id -u)" = 0 ] || fail "no container engine answers '$DOCKER info'; start one (systemctl start docker) or run as root so that this script can install and start Debian's docker.io"
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || fail "no dockerd and no apt-get to install Debian's docker.io"
        say "installing Debian's docker.io, docker-compose and debootstrap (apt-get)"
        local pkgs="docker.io docker-compose debootstrap iptables"
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs >/dev/null \
            || { apt-get update -q >/dev/null \
                && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs >/dev/null; } \
            || fail "apt-get install $pkgs"
    fi
    "$DOCKER" info >/dev/null 2>&1 && return  # the package's own service may have started it
    say "starting dockerd in the background (log: $DOCKERD_LOG)"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    local deadline=$((SECONDS + 60))
    until "$DOCKER" info >/dev/null 2>&1; do
        kill -0 $! 2>/dev/null || fail "dockerd exited at start; the end of $DOCKERD_LOG: $(tail -n 5 "$DOCKERD_LOG")"
        ((SECONDS < deadline)) || fail "dockerd did not answer within 60 s (log: $DOCKERD_LOG)"
        sleep 0.5
    done
}

# The Dockerfile uses RUN --mount (cache and secret mounts), which needs BuildKit: buildx where
# it is installed (what `docker build` is on Docker 23+), else the BuildKit built into a
# Docker 20.10 client (Debian bookworm's docker.io), which DOCKER_BUILDKIT=1 turns on.
# Sets the array BUILD.
pick_build() {
    local client major
    for client in "$DOCKER" /usr/bin/docker; do
        command -v "$client" >/dev/null || continue
        if "$client" buildx version >/dev/null 2>&1; then
            BUILD=("$client" build)
            return
        fi
        major=$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
        if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then
            BUILD=(env DOCKER_BUILDKIT=1 "$client" build)
            return
        fi
    done
    fail "no BuildKit: install the buildx plugin (docker-buildx), or use a Docker 20.10-22 client"
}

# `docker compose` (v2 plugin) where it is installed, else docker-compose (v1.29 on bookworm).
# Sets the array COMPOSE.
# shellcheck disable=SC2034  # COMPOSE is used by the scripts that source this file
pick_compose() {
    if "$DOCKER" compose version >/dev/null 2>&1; then
        COMPOSE=("$DOCKER" compose)
    elif command -v docker-compose >/dev/null; then
        COMPOSE=(docker-compose)
    else
        fail "neither 'docker compose' nor docker-compose is installed"
    fi
}

# CONTAINER_BASE=registry: python:3.11-slim and redis:7 (pulled when missing); local: the
# images container/base.sh builds from Debian's packages; auto (default): registry when both
# are here or can be pulled, else local. Sets BASE_IMAGE and REDIS_IMAGE.
choose_base() {
    local mode=${CONTAINER_BASE:-auto}
    case $mode in
    registry | local) ;;
    auto)
        mode=local
        if have_or_pull "$REGISTRY_BASE" && have_or_pull "$REGISTRY_REDIS"; then mode=registry; fi
        ;;
    *) fail "CONTAINER_BASE must be auto, registry or local (got '$mode')" ;;
    esac
    if [ "$mode" = registry ]; then
        have_or_pull "$REGISTRY_BASE" || fail "cannot pull $REGISTRY_BASE"
        have_or_pull "$REGISTRY_REDIS" || fail "cannot pull $REGISTRY_REDIS"
        BASE_IMAGE=$REGISTRY_BASE REDIS_IMAGE=$REGISTRY_REDIS
    else
        say "no container registry answers: base images from Debian's packages (container/base.sh)"
        DOCKER=$DOCKER bash "$(dirname "${BASH_SOURCE[0]}")/base.sh" "$LOCAL_BASE" "$LOCAL_REDIS"
        BASE_IMAGE=$LOCAL_BASE REDIS_IMAGE=$LOCAL_REDIS
    fi
    export BASE_IMAGE REDIS_IMAGE TASKSTREAM_IMAGE
}

have_or_pull() {
    "$DOCKER" image inspect "$1" >/dev/null 2>&1 || "$DOCKER" pull -q "$1" >/dev/null 2>&1
}

# The image's size as the engine counts it (uncompressed), in MB.
image_mb() {
    "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'
}

# Build the Dockerfile as $TASKSTREAM_IMAGE on $BASE_IMAGE (after pick_build, choose_base).
build_image() {
    local secret=() start=$SECONDS
    # The host's CA bundle for the build's downloads (a TLS-inspecting proxy's CA is in it
    # where there is one); a BuildKit secret, so it is in no layer of the image.
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        secret=(--secret "id=build-ca,src=/etc/ssl/certs/ca-certificates.crt")
    fi
    say "building $TASKSTREAM_IMAGE on $BASE_IMAGE: ${BUILD[*]}"
    "${BUILD[@]}" --build-arg BASE="$BASE_IMAGE" "${secret[@]}" -t "$TASKSTREAM_IMAGE" . \
        || fail "docker build of $TASKSTREAM_IMAGE on $BASE_IMAGE"
    say "built $TASKSTREAM_IMAGE in $((SECONDS - start)) s"
    say "sizes: $BASE_IMAGE $(image_mb "$BASE_IMAGE"), $TASKSTREAM_IMAGE $(image_mb "$TASKSTREAM_IMAGE"), $REDIS_IMAGE $(image_mb "$REDIS_IMAGE")"
}
