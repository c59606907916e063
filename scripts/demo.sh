#!/usr/bin/env bash
# The main job on its built-in defaults: provisions what is missing, builds radstream, starts the service
# in-process, pushes the bundled sample study and prints the streamed findings. Extra arguments go to
# `radstream demo` (e.g. --json, --preprocess cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
CACHE="${RADSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/radstream}"
export RADSTREAM_ORT_LIB="${RADSTREAM_ORT_LIB:-$CACHE/onnxruntime/libonnxruntime.so.1.31.1}"
# Mesa's software Vulkan driver complains on stderr when this is unset (headless machines, CI).
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export RADSTREAM_LOG="${RADSTREAM_LOG:-warn,radstream::server=info,radstream::preprocess=info}"
cargo run --release --locked --quiet -- demo "$@"
