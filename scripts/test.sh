#!/usr/bin/env bash
# The whole test suite, as CI runs it: provisions what is missing, then formatting, lints and every test
# (unit, integration over loopback, WGSL on the software Vulkan adapter, oracle comparisons in Python).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
CACHE="${RADSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/radstream}"
export RADSTREAM_ORT_LIB="${RADSTREAM_ORT_LIB:-$CACHE/onnxruntime/libonnxruntime.so.1.31.1}"
# Mesa's software Vulkan driver complains on stderr when this is unset (headless machines, CI).
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export RADSTREAM_PYTHON="${RADSTREAM_PYTHON:-$CACHE/venv/bin/python}"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
