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
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Unit, integration and oracle tests (no doctests: the crate's examples live in tests/).
set +e
cargo test --locked --no-fail-fast --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
