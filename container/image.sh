#!/usr/bin/env bash
# `make image`: build the Dockerfile as $TASKSTREAM_IMAGE (taskstream:latest), on
# python:3.11-slim where a registry answers, else on a base image built here from Debian's
# packages (container/base.sh; CONTAINER_BASE=auto|registry|local chooses). Starts an engine
# first where none runs (container/lib.sh). Prints the build time and the images' sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=container/lib.sh
. container/lib.sh
ensure_engine
pick_build
choose_base
build_image
